"""Helpers shared by the benchmark scripts: machine description and atomic JSON results."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from torchshrink._io import atomic_write_json
from torchshrink.provenance import machine, versions

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(
        path, {"benchmark": name, "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "versions": versions(), **payload}
    )  # fmt: skip
    print(f"wrote {path}")
    return path
