"""Command-line tests: in-process through ``main`` (as the console script calls it), in a subprocess where
that is the point (the module entry, a user's own modules on PYTHONPATH)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from torchshrink.cli import main


def run(*args: str, cwd=None, pythonpath=None) -> subprocess.CompletedProcess[str]:
    """The command's exit code, stdout and stderr; ``pythonpath``: a folder of the user's own modules."""
    if cwd is not None:
        return run_process(*args, cwd=cwd, pythonpath=pythonpath)
    if pythonpath is None:
        return _in_process(args)
    folder = str(Path(pythonpath).resolve())
    sys.path.insert(0, folder)
    try:
        return _in_process(args)
    finally:
        sys.path.remove(folder)
        for name, module in list(sys.modules.items()):  # the user's modules: each test imports its own afresh
            if str(getattr(module, "__file__", None) or "").startswith(folder):
                del sys.modules[name]


def _in_process(args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: usage errors and --help
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_process(*args: str, cwd=None, pythonpath=None) -> subprocess.CompletedProcess[str]:
    env = None
    if pythonpath is not None:  # the user's own modules, for --model-factory
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "torchshrink.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_the_module_entry_runs_in_a_fresh_process(tmp_path):
    r = run_process("frobnicate", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "compress" in r.stderr
    assert not (tmp_path / "x").exists()


def test_help_explains_every_option():
    out = run("train", "--help").stdout
    for option in ("--epochs", "--lr", "--batch-size", "--seed", "--data-dir", "--device", "--out"):
        assert option in out


def test_train_then_eval_on_a_real_subset(tmp_path, data_dir):
    out = tmp_path / "ckpt"
    r = run(
        "train",
        "--model",
        "cnn_tiny",
        "--epochs",
        "1",
        "--train-subset",
        "1000",
        "--data-dir",
        data_dir,
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and (out / "model.json").is_file()
    assert "test accuracy" in r.stdout
    r = run("eval", str(out), "--data-dir", data_dir)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "fp32" in r.stdout


@pytest.mark.parametrize(
    "args", [("train", "--epochs", "0"), ("train", "--lr", "abc"), ("train", "--device", "tpu"), ("frobnicate",)]
)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args):
    r = run(*args, "--out", str(tmp_path / "x")) if args[0] == "train" else run(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists()


def test_bad_inputs_give_one_line_and_exit_1(tmp_path):
    r = run("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x"))
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "missing" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
    r = run("eval", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no such checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, data_dir):
    """A cnn_tiny checkpoint trained through the CLI, shared by the commands that read one."""
    base = tmp_path_factory.mktemp("cli") / "base"
    r = run("train", "--model", "cnn_tiny", "--epochs", "1", "--train-subset", "1000", "--data-dir", data_dir,
            "--out", str(base))  # fmt: skip
    assert r.returncode == 0, r.stderr
    return base


def test_prune_and_quantize_commands(tmp_path, data_dir, tiny_checkpoint):
    base = tiny_checkpoint
    pruned = tmp_path / "pruned"
    r = run(
        "prune", str(base), "--method", "oneshot", "--sparsity", "0.5", "--data-dir", data_dir, "--out", str(pruned)
    )
    assert r.returncode == 0, r.stderr
    import json

    record = json.loads((pruned / "pruning.json").read_text())
    assert abs(record["sparsity_achieved"] - 0.5) < 1e-3 and "test_accuracy" in record
    r = run("quantize", str(pruned), "--bits", "4", "--data-dir", data_dir, "--out", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr
    q = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert all(layer["bits"] == 4 for layer in q["layers"])
    assert (tmp_path / "q" / "codes.safetensors").is_file()


def test_quantize_writes_an_onnx_model_that_onnxruntime_agrees_with(tmp_path, data_dir, tiny_checkpoint):
    import json

    import onnx

    out = tmp_path / "q8"
    r = run("quantize", str(tiny_checkpoint), "--bits", "8", "--onnx", "--data-dir", data_dir, "--out", str(out))
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "quantization.json").read_text())["onnx"]
    assert record["images"] == 10_000 and record["top1_agreement"] >= 0.999  # the whole test set
    assert abs(record["test_accuracy"] - json.loads((out / "quantization.json").read_text())["test_accuracy"]) < 2e-3
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert "onnxruntime agrees" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("prune", "X", "--sparsity", "1.0"),
        ("prune", "X", "--sparsity", "0.5", "--steps", "0"),
        ("quantize", "X", "--bits", "9"),
        ("quantize", "X", "--bits", "4", "--calibration", "magic"),
        ("prune", "X", "--sparsity", "0.5", "--temperature", "0"),
        ("compress", "X", "--sparsity", "0.5", "--bits", "4", "--temperature", "-1"),
    ],
)
def test_bad_pruning_and_quantization_arguments(args):
    r = run(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_prune_missing_checkpoint_is_one_line(tmp_path):
    r = run("prune", str(tmp_path / "nope"), "--sparsity", "0.5", "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "no such checkpoint" in r.stderr and not (tmp_path / "out").exists()


def test_compress_inspect_and_eval_a_file(tmp_path, data_dir, tiny_checkpoint):
    base = tiny_checkpoint
    out = tmp_path / "m.tshrink"
    r = run("compress", str(base), "--sparsity", "0.7", "--bits", "4", "--steps", "1", "--qat-epochs", "0",
            "--train-subset", "1000", "--data-dir", data_dir, "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "loaded back from the file" in r.stdout and out.is_file()
    import json

    summary = json.loads(out.with_name(out.name + ".json").read_text())
    assert summary["file_bytes"] == out.stat().st_size and summary["sparsity"] >= 0.7 - 1e-3
    import hashlib

    assert summary["file_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()  # the record names its file
    r = run("inspect", str(out))
    assert r.returncode == 0 and "features.conv2.weight" in r.stdout and "sparse" in r.stdout
    assert "describes another file" not in r.stderr
    r = run("eval", str(out), "--data-dir", data_dir)
    assert r.returncode == 0 and f"{100 * summary['test_accuracy']:.2f}%" in r.stdout
    (tmp_path / "junk.tshrink").write_bytes(b"not a model")
    r = run("eval", str(tmp_path / "junk.tshrink"), "--data-dir", data_dir)
    assert r.returncode == 1 and "junk.tshrink" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compress_gradual_distilled_mixed_precision_under_a_budget(tmp_path, data_dir, tiny_checkpoint):
    import json

    out = tmp_path / "mixed.tshrink"
    r = run("compress", str(tiny_checkpoint), "--sparsity", "0.6", "--bits", "4", "--codebook", "--budget", "3200",
            "--prune-method", "gradual", "--prune-epochs", "1", "--distill", "0.5", "--qat-epochs", "1",
            "--train-subset", "1000", "--data-dir", data_dir, "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.with_name(out.name + ".json").read_text())
    plan = summary["mixed_precision"]
    assert plan["estimated_bytes"] <= 3200 and set(plan["bits"].values()) <= {2, 3, 4}
    assert summary["file_bytes"] <= 3200  # widths fitted to the real file, which fine-tuning leaves in budget
    assert summary["config"]["prune"]["method"] == "gradual" and summary["sparsity"] >= 0.6 - 1e-3
    assert summary["bits"] == sorted(set(plan["bits"].values()))  # the file holds the planned widths


@pytest.mark.parametrize(
    "args, message, code",
    [
        (("compress", "X", "--sparsity", "0.5", "--bits", "4", "--act-budget", "1000", "--codebook"), "--codebook", 2),
        (("compress", "X", "--sparsity", "0.5", "--bits", "4", "--budget", "1000", "--keep-first-last-8bit"),
         "--keep-first-last-8bit", 2),
        (("prune", "X", "--sparsity", "0.5", "--method", "structured", "--distill", "0.5", "--finetune-epochs", "0"),
         "--distill", 2),
        (("prune", "X", "--sparsity", "0.5", "--multiple-of", "8"), "--multiple-of", 2),
        (("prune", "X", "--sparsity", "0.5", "--layer-sparsity", "features.conv1=0.5"), "--layer-sparsity", 2),
        (("prune", "X", "--sparsity", "0.5", "--method", "oneshot", "--rewind"), "--rewind", 2),
        (("prune", "nowhere", "--sparsity", "0.5", "--method", "oneshot", "--rewind"), "--rewind", 2),  # before I/O
        (("sensitivity", "X", "--sparsities", ""), "--sparsities", 2),
        (("train", "--model", "resnet"), "invalid choice: 'resnet'", 2),
        # a name the model does not have is about the input, not the options: exit 1
        (("prune", "X", "--sparsity", "0.5", "--method", "structured", "--layer-sparsity", "features.nope=0.5"),
         "its groups are features.conv1", 1),
    ],
)
def test_options_that_do_not_combine_are_one_line_errors(tmp_path, data_dir, tiny_checkpoint, args, message, code):
    """Options that do not go together are usage errors (exit 2, as argparse's own), found before any work."""
    args = tuple(str(tiny_checkpoint) if a == "X" else a for a in args)
    r = run(*args, "--data-dir", data_dir, "--out", str(tmp_path / "out"))
    assert r.returncode == code and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_structured_prune_with_an_amount_per_layer(tmp_path, data_dir, tiny_checkpoint):
    import json

    out = tmp_path / "pruned"
    r = run("prune", str(tiny_checkpoint), "--method", "structured", "--sparsity", "0.5", "--finetune-epochs", "0",
            "--layer-sparsity", "features.conv1=0.75, features.conv3=0.25", "--data-dir", data_dir, "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "pruning.json").read_text())
    assert record["layer_sparsity"] == {"features.conv1": 0.75, "features.conv3": 0.25}
    assert {k: v[1] for k, v in record["channels"].items()} == {"features.conv1": 1, "features.conv2": 4,
                                                                "features.conv3": 12}  # fmt: skip
    bad = run("prune", str(tiny_checkpoint), "--method", "structured", "--sparsity", "0.5",
              "--layer-sparsity", "features.conv1", "--data-dir", data_dir, "--out", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 2 and "NAME=FRACTION" in bad.stderr and not (tmp_path / "bad").exists()


# A user's own model, not in the registry: written as a module of theirs, imported only by --model-factory.
TINYNET = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 13 * 13, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)  # (N, 1, 28, 28) -> (N, 4, 13, 13)
        return self.fc(x.flatten(1))


class Flat(TinyNet):
    def forward(self, x):  # the same tensors, but it expects flat features, not images
        return self.fc(x)


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(784, 10)


def build():
    return TinyNet()


def needs_width(width):
    return TinyNet()


def not_a_model():
    return "a string"


CONSTANT = 3
"""


@pytest.fixture(scope="module")
def tinynet_file(tmp_path_factory):
    """A folder holding the user's module ``tinynet`` and ``tiny.tshrink`` saved from its ``TinyNet`` (8-bit
    weights), and that model as loaded in this process."""
    import importlib.util

    import torch

    from torchshrink.pack import save_compressed
    from torchshrink.quant import QuantConfig
    from torchshrink.recipes import ptq

    folder = tmp_path_factory.mktemp("user")
    (folder / "tinynet.py").write_text(TINYNET)
    spec = importlib.util.spec_from_file_location("tinynet", folder / "tinynet.py")
    tinynet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tinynet)  # not on sys.path: the class records its module as "tinynet"
    torch.manual_seed(0)
    q = ptq(tinynet.TinyNet().eval(), None, QuantConfig(bits=8, quantize_inputs=False)).model
    save_compressed(q, folder / "tiny.tshrink")
    return folder, folder / "tiny.tshrink", q


def test_inspect_shows_the_class_of_an_unregistered_model(tinynet_file):
    _, path, _ = tinynet_file
    r = run("inspect", str(path))
    assert r.returncode == 0, r.stderr
    assert "model class tinynet.TinyNet" in r.stdout and "model None" not in r.stdout
    assert "conv.weight" in r.stdout and "tied to" not in r.stdout


def test_inspect_lists_tied_tensors(tmp_path):
    from torch import nn

    from torchshrink.pack import save_compressed
    from torchshrink.quant import QuantConfig
    from torchshrink.recipes import ptq

    shared = nn.Linear(6, 6)
    q = ptq(nn.Sequential(shared, nn.ReLU(), shared), None, QuantConfig(bits=8, quantize_inputs=False)).model
    save_compressed(q, tmp_path / "tied.tshrink")
    r = run("inspect", str(tmp_path / "tied.tshrink"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^2\.weight +tied to 0\.weight", r.stdout, re.M), r.stdout
    assert re.search(r"^2\.bias +tied to 0\.bias", r.stdout, re.M), r.stdout


def test_inspect_lists_the_joins_of_a_version_4_file(tmp_path):
    import torch
    from torch import nn

    from torchshrink.pack import save_compressed
    from torchshrink.quant import QuantConfig
    from torchshrink.recipes import ptq

    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x) + x)

    q = ptq(Skip().eval(), [torch.randn(16, 6)], QuantConfig(bits=8, quantize_joins=True)).model
    save_compressed(q, tmp_path / "skip.tshrink")
    r = run("inspect", str(tmp_path / "skip.tshrink"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^join \(model\): add: operands quantized at 8/8 bits$", r.stdout, re.M), r.stdout


def test_eval_of_an_unregistered_file_asks_for_a_model_factory(tinynet_file, data_dir):
    folder, path, _ = tinynet_file
    r = run("eval", str(path), "--data-dir", data_dir, pythonpath=folder)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--model-factory" in r.stderr and "tinynet.TinyNet" in r.stderr and not r.stdout


@pytest.mark.parametrize("factory", ["tinynet:TinyNet", "tinynet:build"])
def test_eval_of_an_unregistered_file_with_a_model_factory(tinynet_file, data_dir, fmnist, factory):
    from torchshrink.recipes.train import evaluate

    folder, path, q = tinynet_file
    r = run("eval", str(path), "--model-factory", factory, "--data-dir", data_dir, "--device", "cpu", pythonpath=folder)
    assert r.returncode == 0, r.stderr
    acc, _ = evaluate(q, fmnist.test_batches())
    assert f"test accuracy {100 * acc:.2f}%" in r.stdout  # the file's model, loaded into what the factory built


@pytest.mark.parametrize(
    "factory, code, message",
    [
        ("nosuchmodule:Net", 1, "no module named 'nosuchmodule'"),
        ("tinynet:Missing", 1, "has no attribute 'Missing'"),
        ("tinynet:CONSTANT", 1, "not callable"),
        ("tinynet:needs_width", 1, "without arguments"),
        ("tinynet:not_a_model", 1, "not a torch.nn.Module"),
        ("tinynet:Other", 1, "does not fit this model"),
        ("tinynet:Flat", 1, "fails on Fashion-MNIST test images"),
        ("tinynet", 2, "MODULE:CALLABLE"),
        ("tinynet:", 2, "MODULE:CALLABLE"),
        ("tiny-net:TinyNet", 2, "MODULE:CALLABLE"),
    ],
)
def test_bad_model_factories_are_one_line_errors(tinynet_file, data_dir, factory, code, message):
    folder, path, _ = tinynet_file
    r = run("eval", str(path), "--model-factory", factory, "--data-dir", data_dir, "--device", "cpu", pythonpath=folder)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and not r.stdout


def test_model_factory_is_refused_for_a_checkpoint_folder(tmp_path, tinynet_file):
    folder, _, _ = tinynet_file
    r = run("eval", str(tmp_path), "--model-factory", "tinynet:TinyNet", pythonpath=folder)
    assert r.returncode == 1 and "applies to a .tshrink file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- inputs and outputs are checked before any work; a result is whole or absent --------------------------


def _one_line_error(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def test_the_same_seed_gives_the_same_weights(tmp_path, data_dir):
    """The seed reaches the weight initialisation: same seed and threads -> the same bytes."""
    weights = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        r = run("train", "--model", "cnn_tiny", "--seed", seed, "--train-subset", "500", "--epochs", "1",
                "--data-dir", data_dir, "--device", "cpu", "--out", str(tmp_path / name))  # fmt: skip
        assert r.returncode == 0, r.stderr
        weights[name] = (tmp_path / name / "model.safetensors").read_bytes()
    assert weights["a"] == weights["b"]
    assert weights["a"] != weights["c"]
    mask = os.umask(0)
    os.umask(mask)
    for file in (tmp_path / "a").iterdir():  # written through temporary files, yet with the user's umask
        assert file.stat().st_mode & 0o777 == 0o666 & ~mask, file
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o777 & ~mask


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--seed", "18446744073709551616"),
        ("train", "--seed", "-1"),
        ("train", "--lr", "inf"),
        ("train", "--lr", "nan"),
        ("train", "--ema", "1"),
        ("train", "--erase", "1.5"),
        ("train", "--crop-padding", "-1"),
        ("prune", "X", "--sparsity", "0.5", "--temperature", "inf"),
        ("prune", "X", "--sparsity", "nan"),
        ("compress", "X", "--sparsity", "0.5", "--bits", "4", "--temperature", "nan"),
        ("quantize", "X", "--bits", "4", "--lr", "inf"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(tmp_path, args):
    r = run(*args, "--out", str(tmp_path / "out"))
    _one_line_error(r, code=2)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    file = tmp_path_factory.mktemp("outputs") / "file.txt"
    file.write_text("not a folder")
    return file


@pytest.mark.parametrize(
    "args, out, message",
    [
        (("train", "--epochs", "1"), "FILE/sub", "is a file, not a folder"),
        (("train", "--epochs", "1"), "FILE", "exists and is not a folder"),
        (("prune", "CKPT", "--sparsity", "0.5"), "FILE/sub", "is a file, not a folder"),
        (("prune", "CKPT", "--sparsity", "0.5"), "FILE", "exists and is not a folder"),
        (("prune", "CKPT", "--sparsity", "0.5"), "CKPT", "is the input"),
        (("quantize", "CKPT", "--bits", "4"), "FILE/sub", "is a file, not a folder"),
        (("quantize", "CKPT", "--bits", "4"), "CKPT", "is the input"),
        (("compress", "CKPT", "--sparsity", "0.5", "--bits", "4"), "FILE/m.tshrink", "is a file, not a folder"),
        (("compress", "CKPT", "--sparsity", "0.5", "--bits", "4"), "FILE", "not a compressed file; pass --force"),
        (("compress", "CKPT", "--sparsity", "0.5", "--bits", "4"), "CKPT/model.safetensors", "inside the checkpoint"),
        (
            ("compress", "CKPT", "--sparsity", "0.5", "--bits", "4", "--force"),
            "CKPT/m.tshrink",
            "inside the checkpoint",
        ),
        (("sensitivity", "CKPT"), "FILE", "is a file, not a folder"),
        (("study", "--quick"), "FILE/sub", "is a file, not a folder"),
        (("study", "--quick"), "FILE", "exists and is not a folder"),
    ],
)
def test_bad_output_paths_are_one_line_errors_before_any_work(data_dir, tiny_checkpoint, a_file, args, out, message):
    """No traceback, and the file in the way (or the checkpoint) is left exactly as it was."""
    ckpt = str(tiny_checkpoint)
    weights = (tiny_checkpoint / "model.safetensors").read_bytes()
    args = tuple(ckpt if a == "CKPT" else a for a in args)
    out = out.replace("FILE", str(a_file)).replace("CKPT", ckpt)
    stderr = _one_line_error(run(*args, "--data-dir", data_dir, "--out", out))
    assert message in stderr and out in stderr
    assert a_file.read_text() == "not a folder"
    assert (tiny_checkpoint / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == ["model.json", "model.safetensors",
                                                                 "rewind.safetensors"]  # fmt: skip


def test_prune_over_a_checkpoint_replaces_it_whole_and_refuses_a_users_folder(tmp_path, data_dir, tiny_checkpoint):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoint, out)  # an earlier checkpoint, with a rewind point prune does not write
    r = run("prune", str(tiny_checkpoint), "--method", "oneshot", "--sparsity", "0.5", "--data-dir", data_dir,
            "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors", "pruning.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left beside it
    (out / "notes.txt").write_text("mine")
    stderr = _one_line_error(run("prune", str(tiny_checkpoint), "--method", "oneshot", "--sparsity", "0.5",
                                 "--data-dir", data_dir, "--out", str(out), "--force"))  # fmt: skip
    assert "notes.txt" in stderr and (out / "notes.txt").read_text() == "mine"


def test_a_failure_while_saving_leaves_the_previous_checkpoint(tmp_path, data_dir, tiny_checkpoint, monkeypatch):
    """In-process: the save is interrupted after the weights, before the JSON (as a kill would)."""
    import shutil

    import torchshrink.checkpoint
    from torchshrink.cli import main

    out = tmp_path / "out"
    shutil.copytree(tiny_checkpoint, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(folder, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half of the new weights")
        raise KeyboardInterrupt

    monkeypatch.setattr(torchshrink.checkpoint, "save_checkpoint", interrupted)
    code = main(["prune", str(tiny_checkpoint), "--method", "oneshot", "--sparsity", "0.5", "--data-dir", data_dir,
                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_compress_leaves_nothing(tmp_path, data_dir, tiny_checkpoint, monkeypatch):
    """In-process: the file is written, then fails its own check (as NaN weights did): no file, no record."""
    import torchshrink.recipes.compress as recipe
    from torchshrink.cli import main
    from torchshrink.errors import TorchshrinkError

    def no_work(model, *args, **kwargs):
        return recipe.CompressResult(model, {})

    def fails_its_check(model, base, batches, path, *args, **kwargs):
        path.write_bytes(b"x" * 774)
        raise TorchshrinkError(f"{path}: does not load back")

    monkeypatch.setattr(recipe, "compress_model", no_work)
    monkeypatch.setattr(recipe, "write_and_verify", fails_its_check)
    out = tmp_path / "new" / "m.tshrink"
    code = main(["compress", str(tiny_checkpoint), "--sparsity", "0.5", "--bits", "4", "--train-subset", "200",
                 "--data-dir", data_dir, "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert code == 1
    assert list(tmp_path.iterdir()) == []  # not even the folder made for it


@pytest.fixture(scope="module")
def misfit_checkpoints(tmp_path_factory):
    """Checkpoints whose JSON describes models that do not take Fashion-MNIST: 3 channels in, 5 classes out."""
    from torchshrink.checkpoint import save_checkpoint
    from torchshrink.models import build_model

    folder = tmp_path_factory.mktemp("misfit")
    for name, kwargs in (("rgb", {"in_channels": 3}), ("five", {"num_classes": 5})):
        model = build_model("cnn_tiny", **kwargs)
        save_checkpoint(folder / name, model, "cnn_tiny", model.arguments())
    return folder


@pytest.mark.parametrize(
    "args, which, found",
    [
        (("eval", "CKPT"), "rgb", "3 channels"),
        (("prune", "CKPT", "--sparsity", "0.5"), "five", "(2, 5)"),
        (("quantize", "CKPT", "--bits", "4"), "rgb", "3 channels"),
        (("compress", "CKPT", "--sparsity", "0.5", "--bits", "4"), "five", "(2, 5)"),
    ],
)
def test_a_model_that_does_not_fit_the_data_is_a_one_line_error(tmp_path, data_dir, misfit_checkpoints, args, which,
                                                                 found):  # fmt: skip
    ckpt = misfit_checkpoints / which
    args = tuple(str(ckpt) if a == "CKPT" else a for a in args)
    extra = () if args[0] == "eval" else ("--out", str(tmp_path / "out.tshrink"))
    stderr = _one_line_error(run(*args, "--data-dir", data_dir, *extra))
    assert str(ckpt) in stderr and found in stderr and "Fashion-MNIST" in stderr
    assert list(tmp_path.iterdir()) == []


def test_train_records_its_augmentation_and_weight_average(tmp_path, data_dir):
    import json

    out = tmp_path / "m"
    r = run("train", "--model", "cnn_tiny", "--epochs", "1", "--train-subset", "300", "--ema", "0.5", "--erase",
            "0.25", "--crop-padding", "2", "--data-dir", data_dir, "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "model.json").read_text())["train_config"]
    assert (config["ema"], config["erase"], config["crop_padding"]) == (0.5, 0.25, 2)


def test_eval_escapes_what_a_file_says_its_class_is(tmp_path, data_dir):
    """A file's ``model.class`` is the file's word: a newline or a terminal escape in it is shown escaped."""
    from torch import nn

    from torchshrink.pack import save_compressed
    from torchshrink.quant import QuantConfig
    from torchshrink.recipes import ptq

    evil = type("Net\n\x1b[31mred", (nn.Sequential,), {})
    model = ptq(evil(nn.Flatten(), nn.Linear(784, 10)), None, QuantConfig(bits=8, quantize_inputs=False)).model
    save_compressed(model, tmp_path / "evil.tshrink")
    r = run("eval", str(tmp_path / "evil.tshrink"), "--data-dir", data_dir)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "\x1b" not in r.stderr and "\\x1b[31mred" in r.stderr


# Graphs the conv-chain exporter does not translate: a residual add, ConvTranspose and torch.cat; an LSTM.
GRAPHS = """
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.b(torch.relu(self.a(x)))) + x
        return self.fc(torch.cat([y.mean(dim=(2, 3)), self.up(y).amax(dim=(2, 3))], 1))


class Rows(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(28, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.rnn(x.reshape(x.shape[0], 28, 28))[0][:, -1])
"""


@pytest.mark.parametrize("name", ["Residual", "Rows"])
def test_export_of_a_users_residual_or_recurrent_file_through_the_traced_graph(tmp_path, data_dir, name):
    import importlib.util
    import json

    import torch

    from torchshrink.pack import save_compressed
    from torchshrink.quant import QuantConfig
    from torchshrink.recipes import ptq

    (tmp_path / "graphs.py").write_text(GRAPHS)
    spec = importlib.util.spec_from_file_location("graphs", tmp_path / "graphs.py")
    graphs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graphs)
    torch.manual_seed(0)
    q = ptq(getattr(graphs, name)().eval(), [torch.randn(32, 1, 28, 28)], QuantConfig(bits=8)).model
    save_compressed(q, tmp_path / "m.tshrink")
    r = run("export", str(tmp_path / "m.tshrink"), "--model-factory", f"graphs:{name}", "--data-dir", data_dir,
            "--out", str(tmp_path / "m.onnx"), pythonpath=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "m.onnx.json").read_text())
    assert record["graph"] == "QDQ" and record["agreement"]["top1_agreement"] >= 0.999


def test_an_export_onnxruntime_does_not_reproduce_is_refused(tmp_path):
    from torchshrink.cli.export import _refuse_disagreement
    from torchshrink.errors import ConfigError

    _refuse_disagreement(tmp_path / "m.onnx", {"top1_agreement": 0.995, "max_logit_difference": 0.01})
    for share, gap in ((0.98, 0.1), (1.0, float("inf"))):  # another model, or outputs that overflow
        with pytest.raises(ConfigError, match=r"m.onnx: onnxruntime's graph agrees .* not written"):
            _refuse_disagreement(tmp_path / "m.onnx", {"top1_agreement": share, "max_logit_difference": gap})
