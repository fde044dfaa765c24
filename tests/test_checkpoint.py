from __future__ import annotations

import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch

from torchshrink.checkpoint import (
    MAX_META_BYTES,
    META,
    REWIND,
    WEIGHTS,
    load_checkpoint,
    load_rewind,
    save_checkpoint,
)
from torchshrink.errors import CheckpointError, TorchshrinkWarning
from torchshrink.models import MODELS, build_model


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


def _edit_meta(folder, **changes):
    meta = json.loads((folder / META).read_text())
    meta.update(changes)
    (folder / META).write_text(json.dumps(meta))


def _header(folder):
    data = (folder / WEIGHTS).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _write_header(folder, header, body, length=None):
    text = json.dumps(header).encode()
    (folder / WEIGHTS).write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + body)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "x": ' + "[" * 5000 + "]" * 5000 + "}",
            "nested too deeply",
        ),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "x": 1' + "0" * 5000 + "}",
            "integer of 5001 digits",
        ),
        ('{"format": "torchshrink-checkpoint", "model": ["cnn"]}', r"model \['cnn'\] is not a registered model"),
        ('{"format": "torchshrink-checkpoint", "model": "' + "x" * 5000 + '"}', r"model 'xxx.*\.\.\. is not"),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": [1]}',
            "model_args must be an object",
        ),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": {"hidden": NaN}}',
            "model_args.hidden = nan is not a finite number",
        ),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": {"hidden": 1e400}}',
            "model_args.hidden = inf is not a finite number",
        ),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": {"hidden": 4294967296}}',
            "model_args.hidden = 4294967296 is out of range",
        ),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": {"hidden": -5}}',
            r"model_args \{'hidden': -5\} do not build model 'cnn_tiny' \(RuntimeError",
        ),
        (
            '{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": {"channels": "abc"}}',
            "do not build model 'cnn_tiny' \\(TypeError",
        ),
        ('{"format": "torchshrink-checkpoint", "model": "cnn_tiny", "model_args": {"bogus": 1}}', "do not build"),
        (
            '{"format": "torchshrink-checkpoint", "format": "torchshrink-checkpoint", "model": "cnn_tiny"}',
            "a key appears twice",
        ),
        ("\udcff{}", "unreadable JSON"),
    ],
)
def test_malformed_model_json_is_one_clear_error(saved, text, message):
    _, folder = saved
    (folder / META).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=f"model.json: .*{message}") as info:
        load_checkpoint(folder)
    assert "\n" not in str(info.value) and len(str(info.value)) < 600


def test_huge_model_is_refused_on_the_meta_device_before_any_allocation(saved, monkeypatch):
    """The architecture is built on the meta device first: 46 GB of layers cost nothing to refuse."""
    _, folder = saved
    devices = []
    original = MODELS["cnn_tiny"]

    def recording(**kwargs):
        devices.append(torch.empty(0).device.type)
        return original(**kwargs)

    monkeypatch.setitem(MODELS, "cnn_tiny", recording)
    _edit_meta(folder, model_args={"hidden": 2**31 - 1, "channels": [4, 8, 2**20]})
    with pytest.raises(CheckpointError, match=r"model.json: model 'cnn_tiny' .* has [\d,]+ elements, over the"):
        load_checkpoint(folder)
    assert devices == ["meta"]  # never built for real


def test_header_mismatch_is_found_before_tensors_are_read(saved, monkeypatch):
    _, folder = saved
    _edit_meta(folder, model="cnn")  # same layer names, other shapes

    def never(*args, **kwargs):
        raise AssertionError("tensors read before the header was compared with the model")

    monkeypatch.setattr(safetensors.torch, "load_file", never)
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: tensor \S+ has shape \[[\d, ]+\], model .cnn. expects"
    ):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, b: (h, b, 2**63), "header length 9223372036854775808 does not fit"),
        (lambda h, b: (h, b, 3), "unreadable header"),
        (lambda h, b: ([1, 2], b, None), "header is a list"),
        (
            lambda h, b: ({**h, "features.conv1.weight": {**h["features.conv1.weight"], "dtype": "F8_E4M3"}}, b, None),
            "dtype 'F8_E4M3' is not one of",
        ),
        (
            lambda h, b: (
                {**h, "features.conv1.weight": {**h["features.conv1.weight"], "shape": [-4, 1, 3, 3]}},
                b,
                None,
            ),
            r"shape \[-4, 1, 3, 3\] is not a list",
        ),
        (
            lambda h, b: (
                {**h, "features.conv1.weight": {**h["features.conv1.weight"], "data_offsets": [0, 2**40]}},
                b,
                None,
            ),
            "do not hold F32",
        ),
        (lambda h, b: ({**h, "features.conv1.weight": {"dtype": "F32"}}, b, None), "needs exactly dtype"),
        (lambda h, b: ({**h, "__metadata__": {"format": 3}}, b, None), "__metadata__ must map names to strings"),
        (lambda h, b: (h, b + b"\0" * 4, None), "4 bytes after the last tensor"),
        (
            lambda h, b: ({**h, "features.conv1.weight": {**h["features.conv1.weight"], "dtype": "I32"}}, b, None),
            "is I32, model 'cnn_tiny' expects a floating-point tensor",
        ),
    ],
)
def test_malformed_safetensors_header_is_a_checkpoint_error(saved, mutate, message):
    """Checked here before safetensors sees the file: its own errors (or panics) never reach the caller."""
    _, folder = saved
    header, body = _header(folder)
    header, body, length = mutate(header, body)
    _write_header(folder, header, body, length)
    with pytest.raises(CheckpointError, match=f"model.safetensors: .*{message}"):
        load_checkpoint(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_by_tensor_name(tmp_path, value):
    model = build_model("cnn_tiny")
    with torch.no_grad():
        model.classifier.fc1.weight[3, 7] = value
    folder = save_checkpoint(tmp_path / "ckpt", model, "cnn_tiny")
    with pytest.raises(CheckpointError, match=r"tensor classifier.fc1.weight holds 1 NaN or infinite values"):
        load_checkpoint(folder)


def test_all_zero_weight_loads_with_a_warning(tmp_path):
    model = build_model("cnn_tiny")
    with torch.no_grad():
        model.classifier.fc2.weight.zero_()
    folder = save_checkpoint(tmp_path / "ckpt", model, "cnn_tiny")
    with pytest.warns(UserWarning, match="weight tensor classifier.fc2.weight is all zeros"):
        loaded = load_checkpoint(folder)
    assert torch.equal(loaded.model.classifier.fc2.weight, model.classifier.fc2.weight)


def test_all_zero_weights_are_one_warning_of_one_line(tmp_path):
    model = build_model("cnn_tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.zero_()
    folder = save_checkpoint(tmp_path / "ckpt", model, "cnn_tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(folder)
    assert [w.category for w in caught] == [TorchshrinkWarning]
    text = str(caught[0].message)
    assert len(text.splitlines()) == 1 and text.startswith(f"{folder / WEIGHTS}: 8 weight tensors are all zeros (")
    assert "and 5 more" in text


def test_unreadable_files_are_checkpoint_errors(saved, monkeypatch):
    _, folder = saved
    real_open = Path.open

    def deny(self, *args, **kwargs):
        if self.name == META:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", deny)
    with pytest.raises(CheckpointError, match="model.json: cannot read \\(Permission denied\\); check its permissions"):
        load_checkpoint(folder)


def test_oversized_model_json_is_refused_unread(saved):
    _, folder = saved
    (folder / META).write_bytes(b" " * (MAX_META_BYTES + 1))
    with pytest.raises(CheckpointError, match="model.json: over 1,048,576 bytes"):
        load_checkpoint(folder)


def test_rewind_file_is_validated_too(saved):
    model, folder = saved
    save_checkpoint(folder, model, "cnn_tiny", rewind=model.state_dict())
    assert set(load_rewind(folder)) == set(model.state_dict())
    data = (folder / REWIND).read_bytes()
    (folder / REWIND).write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(CheckpointError, match="rewind.safetensors: not a valid safetensors file"):
        load_rewind(folder)


def _replace_with(path: Path, what: str) -> None:
    """Put something other than a regular file where a checkpoint's file was."""
    path.unlink()
    if what == "folder":
        path.mkdir()
    elif what == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif what == "named pipe":
        os.mkfifo(path)
    else:  # a link whose target is gone
        path.symlink_to(path.with_name("gone"))


_NOT_A_FILE = {  # what stands where a checkpoint's file belongs -> what the message says it is
    "folder": "is a folder, where the checkpoint's {name} file is expected",
    "link to /dev/zero": "is a character device \\(through a link to /dev/zero\\), where the checkpoint's {name}",
    "named pipe": "is a named pipe, where the checkpoint's {name} file is expected",
    "dangling link": "a link to .*gone, which does not exist; missing",
}


@pytest.mark.skipif(not Path("/dev/zero").exists() or not hasattr(os, "mkfifo"), reason="needs /dev/zero and FIFOs")
@pytest.mark.parametrize("name", [WEIGHTS, META])
@pytest.mark.parametrize("what", list(_NOT_A_FILE))
def test_a_file_that_is_not_a_regular_file_is_named_as_what_it_is(saved, name, what):
    _, folder = saved
    _replace_with(folder / name, what)
    pattern = f"^{folder / name}: {_NOT_A_FILE[what].format(name=name)}"
    with pytest.raises(CheckpointError, match=pattern) as caught:
        load_checkpoint(folder)
    assert len(str(caught.value).splitlines()) == 1
    if what == "folder":  # named by the folder's own path too
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint(folder / name)


def test_a_rewind_point_that_is_a_folder_is_not_missing(saved):
    model, folder = saved
    save_checkpoint(folder, model, "cnn_tiny", rewind=model.state_dict())
    _replace_with(folder / REWIND, "folder")
    with pytest.raises(CheckpointError, match="rewind.safetensors: is a folder, where"):
        load_rewind(folder)
