"""``torchshrink compress``: what it refuses before any work."""

from __future__ import annotations

import contextlib
import io

import pytest

from torchshrink.checkpoint import save_checkpoint
from torchshrink.cli import main
from torchshrink.models import build_model
from torchshrink.quant import QuantConfig
from torchshrink.recipes.compress import CompressConfig, smallest_file_bytes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    model = build_model("cnn_tiny")
    folder = tmp_path_factory.mktemp("budget") / "ckpt"
    save_checkpoint(folder, model, "cnn_tiny", model.arguments())
    return str(folder)


class DataLoaded(Exception):
    """Raised in place of loading the data: the command got past its checks."""


@pytest.mark.parametrize("codebook", [False, True])
@pytest.mark.parametrize("compression", ["auto", "none"])
def test_a_budget_below_the_smallest_file_is_a_usage_error_before_any_work(tmp_path, checkpoint, monkeypatch,
                                                                            codebook, compression):  # fmt: skip
    import torchshrink.data

    def no_data(*_args, **_kwargs):
        raise DataLoaded

    monkeypatch.setattr(torchshrink.data, "load_fashion_mnist", no_data)
    model = build_model("cnn_tiny")
    floor = smallest_file_bytes(model, CompressConfig(quant=QuantConfig(bits=4), codebook=codebook), "cnn_tiny",
                                model.arguments(), compression)  # fmt: skip
    args = ["compress", checkpoint, "--sparsity", "0.9", "--bits", "4", "--compression", compression,
            "--out", str(tmp_path / "m.tshrink"), *(["--codebook"] if codebook else [])]  # fmt: skip
    for budget in (1, floor - 1):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([*args, "--budget", str(budget)])
        assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
        assert f"--budget {budget:,}: " in err.getvalue() and f"at least {floor:,} bytes" in err.getvalue()
    with pytest.raises(DataLoaded):  # a budget at the bound passes on to the work
        main([*args, "--budget", str(floor)])
    assert list(tmp_path.iterdir()) == []
