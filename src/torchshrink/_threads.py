"""OpenMP's wait policy for the ``torchshrink`` command: passive, set before torch loads its OpenMP runtime.

By default OpenMP threads spin while they wait for work. On a machine shared with another busy process the
spinning threads fight it for the cores: the study's training step then runs at 39-41% of its idle speed on 2
cores. With ``OMP_WAIT_POLICY=PASSIVE`` waiting threads sleep: 57-65% beside the same process (1.3-1.6x the
spinning default's images/s there), and the same idle speed within this machine's noise (0.89-1.06x in two
runs of ``benchmarks/threads.py``). One thread would keep 99% under load but lose a third of the idle speed.

Only the command sets it (when nobody has: ``OMP_WAIT_POLICY=ACTIVE`` keeps spinning). A program that imports
torchshrink keeps its environment: the policy is process-wide, passive slows torch at batch 1 on 2 threads, and
forcing either policy slows onnxruntime in the same process. The setting cannot wait for ``cli.main``: the
console script and ``python -m torchshrink`` import this package, and with it torch, before any command code
runs, and libgomp reads the variable once, when torch loads it (measured: set after ``import torch``, even
before any parallel work, it changes nothing). So the package's first import asks how the process was started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import PurePath

__all__ = ["started_as_command", "set_command_wait_policy"]

SCRIPTS = ("torchshrink", "torchshrink.exe", "torchshrink-script.py")  # the console script, as installers name it
MODULES = ("torchshrink", "torchshrink.__main__", "torchshrink.cli", "torchshrink.cli.__main__")  # python -m ...


def started_as_command(argv: Sequence[str], orig_argv: Sequence[str]) -> bool:
    """Whether the process runs the ``torchshrink`` command: its console script or ``python -m torchshrink``.

    While ``-m`` imports the package, ``argv[0]`` is ``"-m"`` and ``argv[1:]`` are the command's arguments;
    the module name is the entry of the interpreter's own arguments (``orig_argv``) just before them.

    >>> started_as_command(["/venv/bin/torchshrink", "train"], ["/venv/bin/python", "/venv/bin/torchshrink", "train"])
    True
    >>> started_as_command(["-m", "train"], ["python", "-u", "-m", "torchshrink", "train"])
    True
    >>> started_as_command(["-m"], ["python", "-mtorchshrink.cli"])
    True
    >>> started_as_command(["-m", "tests"], ["python", "-m", "pytest", "tests"])
    False
    >>> started_as_command(["-c"], ["python", "-c", "import torchshrink"])
    False
    """
    if not argv:  # an embedding application may leave argv empty
        return False
    if argv[0] != "-m":
        return PurePath(argv[0]).name in SCRIPTS
    at = len(orig_argv) - len(argv)
    if at < 1:
        return False
    token = orig_argv[at]
    module = token.split("m", 1)[1] if token.startswith("-") else token  # "-mtorchshrink" is one token
    return module in MODULES


def set_command_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` when the process is the command, nobody chose a policy, and torch is not
    loaded yet (later it would change nothing, and the environment would say otherwise)."""
    if "torch" in sys.modules or not started_as_command(getattr(sys, "argv", []), getattr(sys, "orig_argv", [])):
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


set_command_wait_policy()
