"""The checks every command makes on its input model before any work (``torchshrink.cli.inputs``)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from torchshrink.checkpoint import save_checkpoint
from torchshrink.cli import main
from torchshrink.cli.inputs import check_quantizable
from torchshrink.errors import CheckpointError
from torchshrink.models import build_model


def _run(*args: str) -> tuple[int, str]:
    """The command's exit code and stderr, run in-process as the console script runs it."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


@pytest.fixture(scope="module")
def huge_checkpoint(tmp_path_factory) -> str:
    """A ``cnn_tiny`` checkpoint whose every weight is 1e38: finite, so it loads, but every output overflows."""
    model = build_model("cnn_tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.fill_(1e38)
    folder = tmp_path_factory.mktemp("huge") / "ckpt"
    save_checkpoint(folder, model, "cnn_tiny", model.arguments())
    return str(folder)


@pytest.mark.parametrize(
    "args",
    [
        ("quantize", "CKPT", "--bits", "4"),
        ("quantize", "CKPT", "--bits", "4", "--mode", "qat"),
        ("compress", "CKPT", "--sparsity", "0.5", "--bits", "4"),
        ("compress", "CKPT", "--sparsity", "0.5", "--bits", "4", "--codebook"),
    ],
)
def test_overflowing_weights_are_a_one_line_error_before_any_work(tmp_path, data_dir, huge_checkpoint, monkeypatch,
                                                                   args):  # fmt: skip
    import torchshrink.recipes.compress as compress_recipe
    import torchshrink.recipes.quantize as quantize_recipe

    def no_work(*_args, **_kwargs):
        raise AssertionError("the work started: the model should have been refused before it")

    for module, name in ((compress_recipe, "compress_model"), (quantize_recipe, "ptq"), (quantize_recipe, "qat")):
        monkeypatch.setattr(module, name, no_work)
    args = tuple(huge_checkpoint if a == "CKPT" else a for a in args)
    code, stderr = _run(*args, "--data-dir", data_dir, "--device", "cpu", "--out", str(tmp_path / "out"))
    assert code == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert huge_checkpoint in stderr and "features.conv1" in stderr and "1e+38" in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_quantized_input_range_too_wide_for_a_scale_is_named():
    """Both ends finite, ``hi - lo`` not: the layer whose input it is gets named."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2), nn.Linear(2, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]).expand(2, 784) * 3e38 / 784)
        model[1].bias.zero_()
    images = torch.ones(2, 1, 28, 28)
    with pytest.raises(CheckpointError, match=r"^m: .*the input of 2 spans \[-3e\+38, 3e\+38\]"):
        check_quantizable(model, "m", images)


def test_a_model_that_computes_in_float32_passes_unchanged(small):
    torch.manual_seed(0)
    model = build_model("cnn_tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_quantizable(model, "tiny", small.calibration_batches(64)[0])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
