"""Helpers shared by the benchmark scripts: machine description and atomic JSON results."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

import torch

from torchshrink._io import atomic_write_json
from torchshrink.checkpoint import versions

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(
        path, {"benchmark": name, "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "versions": versions(), **payload}
    )  # fmt: skip
    print(f"wrote {path}")
    return path
