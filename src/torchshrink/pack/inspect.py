"""What a ``.tshrink`` file holds, tensor by tensor, for ``torchshrink inspect``: read, never loaded into a model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torchshrink.pack.decode import decode_tensor, read_compressed
from torchshrink.pack.format import FormatError

__all__ = ["TensorSummary", "inspect_compressed"]


def _coding(meta: dict[str, Any]) -> str:
    if meta.get("encoding") == "float":
        return str(meta.get("dtype"))
    codes = meta.get("codes_coding", "packed")
    return f"{codes}/{meta.get('positions_coding', 'packed')}" if meta.get("storage") == "sparse" else codes


@dataclass(frozen=True)
class TensorSummary:
    """One tensor of a file, for ``torchshrink inspect``."""

    name: str
    shape: list[int]
    encoding: str
    storage: str
    bits: int
    sparsity: float
    bytes: int  # its sections, before the whole-payload compression
    coding: str = "-"  # how the codes (and gaps) are stored: packed or huffman; float dtype for floats


def inspect_compressed(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[TensorSummary]]:
    """Header and per-tensor summary of a file.

    The header is the file's own: ``header["model"]`` names the architecture (``name`` and ``args``, or
    ``name`` None and the informational ``class``; as written, since only loading checks it), and
    ``header.get("aliases", {})`` maps each tied name to the stored tensor it shares (checked by
    :func:`read_compressed`). Summaries cover the stored tensors only, so an alias takes no row.

    Raises:
        FormatError: the file is invalid or a tensor cannot be decoded.

    Example::

        header, rows = inspect_compressed("net.tshrink")
        print(header["model"], header.get("aliases", {}), [r.name for r in rows])
    """
    header, records = read_compressed(path)
    rows = []
    for rec in records:
        try:
            tensor = decode_tensor(rec)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: tensor {rec.name!r} cannot be decoded ({exc})") from exc
        numel = max(tensor.numel(), 1)
        rows.append(TensorSummary(
            rec.name, rec.meta["shape"], rec.meta.get("encoding", "?"), rec.meta.get("storage", "-"),
            rec.meta.get("bits", 32 if rec.meta.get("dtype") == "float32" else 16),
            float((tensor == 0).sum()) / numel, sum(len(b) for b in rec.sections.values()), _coding(rec.meta),
        ))  # fmt: skip
    return header, rows
