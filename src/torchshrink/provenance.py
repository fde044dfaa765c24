"""Where a result came from: library versions and the machine, recorded with every result."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch

from torchshrink._version import __version__

__all__ = ["versions", "machine"]


def versions() -> dict[str, str]:
    """Library and interpreter versions."""
    return {"torchshrink": __version__, "torch": torch.__version__, "python": platform.python_version()}


def machine() -> dict[str, Any]:
    """CPU model, its vector instructions as torch uses them, core count, torch threads, GPU (if any), platform.

    The vector width matters beyond speed: AVX2 and AVX-512 kernels round differently, so the same seeded
    training lands a tenth of a point or so apart on the two.
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }
