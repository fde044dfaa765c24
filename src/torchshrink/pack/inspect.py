"""What a ``.tshrink`` file holds, tensor by tensor, for ``torchshrink inspect``: read, never loaded into a model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torchshrink.pack.decode import about, architecture_shapes, check_fits, read_compressed
from torchshrink.pack.records import zero_fraction

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


def _fits_architecture(header: dict[str, Any]) -> None:
    # a registered name bounds the file by its architecture, as loading does; an unknown or null name leaves
    # the reader's global limits (MAX_ELEMENTS, MAX_PAYLOAD) and the summaries never build a whole tensor
    shapes = architecture_shapes(header["model"])
    if shapes is not None:
        check_fits(header, shapes, f"the registered {header['model']['name']!r}")


def inspect_compressed(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[TensorSummary]]:
    """Header and per-tensor summary of a file, every tensor's payload checked as loading checks it.

    The header is the file's own, checked against the schema: ``header["model"]`` names the architecture
    (``name`` and ``args``, or ``name`` None and the informational ``class``), and
    ``header.get("aliases", {})`` maps each tied name to the stored tensor it shares. A registered
    architecture must fit the file as for loading. Summaries cover the stored tensors only, so an alias takes
    no row. Memory stays in proportion to the payload: sparsity comes from the codes, not from the tensors.

    Raises:
        FormatError: the file is invalid or a tensor cannot be decoded.

    Example::

        header, rows = inspect_compressed("net.tshrink")
        print(header["model"], header.get("aliases", {}), [r.name for r in rows])
    """
    header, records = read_compressed(path, _fits_architecture)
    with about(path):
        rows = []
        for rec in records:
            meta = rec.meta
            float_bits = 32 if meta.get("dtype") == "float32" else 16
            rows.append(TensorSummary(
                rec.name, meta["shape"], meta["encoding"], meta.get("storage", "-"), meta.get("bits", float_bits),
                zero_fraction(rec), sum(len(b) for b in rec.sections.values()), _coding(meta),
            ))  # fmt: skip
    return header, rows
