# `make run` sets everything up and runs the main job; `make test` sets everything up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := /usr/share/datasets/fashion-mnist

.PHONY: setup run test lint data clean

setup: $(STAMP) data

# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build on CPU machines.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The Debian/Ubuntu package holds the official files; elsewhere torchshrink downloads them on first use.
data:
	@if [ ! -f $(DATA)/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist || \
		echo "note: could not install dataset-fashion-mnist; torchshrink will look elsewhere or download"; \
	fi

run: setup
	$(BIN)/torchshrink study --out runs/study

test: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/pytest -q --durations=10

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
