"""The core runs without the extras; what needs one says which to install, before any work."""

from __future__ import annotations

import importlib
import sys

import pytest

from torchshrink.errors import ConfigError


def _without(monkeypatch, module: str, *reimported: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    for name in [m for m in sys.modules if m.startswith(reimported)]:
        monkeypatch.delitem(sys.modules, name)


def test_without_onnx_the_command_line_works_and_export_names_the_extra(monkeypatch, capsys):
    _without(monkeypatch, "onnx", "torchshrink.export", "torchshrink.cli")
    with pytest.raises(ConfigError, match=r"needs the onnx package, which is not installed: pip install 'torchshrink\[onnx\]'"):
        importlib.import_module("torchshrink.export")
    cli = importlib.import_module("torchshrink.cli")
    assert cli.main(["--version"]) == 0
    assert cli.main(["export", "model.tshrink", "--out", "x.onnx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchshrink[onnx]" in err[0]


def test_without_matplotlib_the_study_refuses_before_any_work(monkeypatch, tmp_path):
    from torchshrink.study import StudyConfig, run_study

    _without(monkeypatch, "matplotlib")
    with pytest.raises(ConfigError, match=r"torchshrink\[plots\]"):
        run_study(StudyConfig(), tmp_path / "study")
    assert not (tmp_path / "study").exists()
