"""Command-line smoke tests, run as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchshrink.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


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
