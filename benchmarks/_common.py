"""Helpers shared by the benchmark scripts: machine description and atomic JSON results."""

from __future__ import annotations

import argparse
import datetime as dt
import json
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


def add_recipe_options(parser: argparse.ArgumentParser, name: bool = True) -> None:
    """--resume and --only for a recipes benchmark (and --name, its results file, when it has several)."""
    parser.add_argument("--resume", action="store_true", help="keep the recipes already in the results, run the rest")
    parser.add_argument("--only", help="run only the recipes whose label starts with one of these ('|' between)")
    if name:
        parser.add_argument("--name", help="results file name (one per baseline)")


def finished_rows(args: argparse.Namespace, name: str) -> dict[str, dict[str, Any]]:
    """With --resume, the rows already in results file ``name`` by label; else none."""
    path = RESULTS / f"{name}.json"
    if not (args.resume and path.is_file()):
        return {}
    return {row["label"]: row for row in json.loads(path.read_text())["rows"]}


def wanted(args: argparse.Namespace, label: str) -> bool:
    """Whether --only lets the recipe ``label`` run."""
    return not args.only or label.startswith(tuple(args.only.split("|")))
