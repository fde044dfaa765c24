"""The command line prints torchshrink's own warnings as one line each, and every other warning as Python does."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings

import pytest
import torch

from torchshrink.checkpoint import save_checkpoint
from torchshrink.cli import _own_warnings_in_one_line, main
from torchshrink.errors import TorchshrinkWarning
from torchshrink.models import build_model


@pytest.fixture(scope="module")
def zero_checkpoint(tmp_path_factory) -> str:
    """A ``cnn_tiny`` checkpoint whose every weight is zero: legal, and worth one line of warning."""
    model = build_model("cnn_tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.zero_()
    folder = tmp_path_factory.mktemp("zero") / "ckpt"
    save_checkpoint(folder, model, "cnn_tiny", model.arguments())
    return str(folder)


def _note(checkpoint: str) -> str:
    return (f"torchshrink: warning: {checkpoint}/model.safetensors: 8 weight tensors are all zeros "
            "(classifier.fc1.weight, classifier.fc2.weight, features.bn1.weight and 5 more); the model will ignore "
            "those layers' inputs")  # fmt: skip


def test_loading_all_zero_weights_prints_one_line(data_dir, zero_checkpoint):
    """In a fresh process, as a user sees it: Python's own format took two lines per tensor."""
    r = subprocess.run([sys.executable, "-m", "torchshrink.cli", "eval", zero_checkpoint, "--data-dir", data_dir,
                        "--device", "cpu"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and r.stderr.splitlines() == [_note(zero_checkpoint)], r.stderr


def test_quantize_of_all_zero_weights_prints_one_line(tmp_path, data_dir, zero_checkpoint):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["quantize", zero_checkpoint, "--bits", "8", "--data-dir", data_dir, "--device", "cpu", "--out",
                     str(tmp_path / "q")])  # fmt: skip
    assert code == 0 and err.getvalue().splitlines() == [_note(zero_checkpoint)]


def test_other_warnings_keep_pythons_format_and_filters():
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        with _own_warnings_in_one_line():
            warnings.warn("a note\nof two lines", TorchshrinkWarning, stacklevel=1)
            warnings.warn("from elsewhere", UserWarning, stacklevel=1)
    assert err.getvalue() == "torchshrink: warning: a note of two lines\n"
    assert [str(w.message) for w in caught] == ["from elsewhere"]  # handed on to whoever shows warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _own_warnings_in_one_line(), contextlib.redirect_stderr(err):
            warnings.warn("filtered out", TorchshrinkWarning, stacklevel=1)
    assert "filtered out" not in err.getvalue()
