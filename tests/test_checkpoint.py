from __future__ import annotations

import json

import pytest
import torch

from torchshrink.checkpoint import META, WEIGHTS, load_checkpoint, save_checkpoint
from torchshrink.errors import CheckpointError
from torchshrink.models import build_model


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn_tiny").eval()
    # non-trivial BatchNorm statistics so the buffers matter
    model.features.bn1.running_mean.uniform_(-1, 1)
    folder = save_checkpoint(tmp_path / "ckpt", model, "cnn_tiny", metrics={"test_accuracy": 0.5})
    return model, folder


def test_save_load_gives_identical_predictions(saved, small):
    model, folder = saved
    loaded = load_checkpoint(folder)
    x = small.test_x[:64].float() / 255
    assert torch.equal(model(x), loaded.model(x))
    assert loaded.meta["metrics"]["test_accuracy"] == 0.5
    assert loaded.meta["versions"]["torch"] == torch.__version__
    assert not list(folder.glob(".*tmp"))  # no temp files left behind


def test_truncated_weights_are_rejected(saved):
    _, folder = saved
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(folder)


def test_missing_and_mismatched_checkpoints_are_rejected(saved, tmp_path):
    _, folder = saved
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    meta = json.loads((folder / META).read_text())
    meta["model"] = "cnn"  # same layer names, different shapes
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(folder)
    meta["model"] = "mlp"
    (folder / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(folder)
    (folder / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable JSON"):
        load_checkpoint(folder)
    (folder / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(folder)
