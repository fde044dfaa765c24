"""OpenMP's wait policy: passive unless the user chose, set only while torch is not loaded yet."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SHOW = "import os; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", f"{code}; {SHOW}"], env={**clean, **env}, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


@pytest.mark.parametrize(
    "code, env, expected",
    [
        ("import torchshrink", {}, "PASSIVE"),  # nothing set: waiting threads sleep
        ("import torchshrink", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's choice stays
        ("import torch, torchshrink", {}, "None"),  # too late to matter: left alone
        ("import torchshrink.cli", {}, "PASSIVE"),  # the command line goes through the package
    ],
)
def test_wait_policy(code: str, env: dict[str, str], expected: str) -> None:
    assert _policy(code, **env) == expected
