"""A stage cache: each result is stored under a key derived from its inputs, written atomically.

A stage's folder is built under a temporary name and renamed into place only once its ``result.json`` is
written, so an interrupted stage (Ctrl-C, kill -9) leaves nothing that looks finished; the next run
recomputes it, and removes the temporary folder. The cache assumes one writer: ``run_study`` holds the output
folder's lock while it uses one. Changing a stage's settings changes its key, and the keys of everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchshrink._io import TMP_SUFFIX, atomic_folder, atomic_write_json

__all__ = ["StageCache", "stage_key"]

CACHE_VERSION = 2  # bump when stage code changes what a stage computes


def stage_key(name: str, config: Any, upstream: list[str]) -> str:
    """A short, stable hash of a stage's name, settings and upstream keys."""
    blob = json.dumps({"v": CACHE_VERSION, "name": name, "config": config, "upstream": upstream},
                      sort_keys=True, default=str)  # fmt: skip
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


class StageCache:
    """Stage results under ``root/<key>/result.json`` with the stage's files beside it."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # left by an interrupted stage (".tmp-*": by earlier versions); safe only because there is one writer
        for stale in [*self.root.glob(".tmp-*"), *self.root.glob(f".*{TMP_SUFFIX}")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        self.hits: list[str] = []
        self.misses: list[str] = []

    def folder(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.folder(key) / "result.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def run(
        self, name: str, config: Any, upstream: list[str], compute: Callable[[Path], dict[str, Any]]
    ) -> tuple[str, dict[str, Any]]:
        """Return ``(key, result)``: from the cache, or by calling ``compute(folder)`` and storing its result."""
        key = stage_key(name, config, upstream)
        cached = self.get(key)
        if cached is not None:
            self.hits.append(key)
            return key, cached
        start = time.perf_counter()
        # a folder without result.json (from a version that wrote it last in place) is replaced whole
        with atomic_folder(self.folder(key)) as tmp:
            result = compute(tmp)
            result["stage_seconds"] = time.perf_counter() - start
            atomic_write_json(tmp / "result.json", result)
        self.misses.append(key)
        return key, result
