"""One tensor record of a ``.tshrink`` file turned into numbers, checking every value the payload holds.

:func:`decode_codes` reads a record's streams, scales and codebook (allocating in proportion to its bytes);
:func:`decode_tensor` then builds the float tensor the model computes with, which takes ``prod(shape)``
elements: :mod:`.decode` calls it only after the shapes were checked against the model the file fills.
:func:`zero_fraction` answers ``inspect`` without building the tensor at all.

The record must come from a header that passed :func:`torchshrink.pack.schema.check_header` (fields present
and typed, section lengths consistent); what is checked here is what only the payload can tell: scales
positive and finite, codebook indices within the codebook, uniform codes within the range ``code_offset``
names, no zero code in sparse storage, positions inside the tensor and as many as ``nonzeros``, streams
exactly as long as their symbols, Huffman tables complete codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from torchshrink.errors import ConfigError
from torchshrink.pack.format import FormatError, TensorRecord, float_values
from torchshrink.pack.sparse import decode_positions
from torchshrink.pack.streams import decode_stream

__all__ = ["Codes", "decode_codes", "decode_tensor", "uniform_codes", "zero_fraction"]


@dataclass(frozen=True)
class Codes:
    """A record's numbers before they are laid out: ``values`` for a float tensor, else the stored codes."""

    numel: int
    values: np.ndarray  # float32 values (float), or stored codes v = q - code_offset / indices k, as int16
    positions: np.ndarray | None  # (nonzeros,) flat indices of the stored codes when sparse
    table: np.ndarray | None  # float32 scales (uniform) or the codebook with 0.0 in front (codebook)


def _fail(rec: TensorRecord, what: str) -> FormatError:
    return FormatError(f"tensor {rec.name!r}: {what}")


def decode_codes(rec: TensorRecord) -> Codes:
    """Read and check a record's payload sections; nothing of ``prod(shape)`` size is allocated for codes.

    Raises:
        FormatError: the sections hold values that the header's fields rule out.
    """
    meta, sections = rec.meta, rec.sections
    numel = math.prod(meta["shape"])
    if meta["encoding"] == "float":
        return Codes(numel, float_values(sections["values"], meta["dtype"], numel), None, None)
    positions, count = None, numel
    if meta["storage"] == "sparse":
        count = meta["nonzeros"]
        try:
            positions = decode_positions(meta["positions"], sections["positions"], numel, meta.get("gap_bits", 0),
                                         meta.get("gap_count", 0), meta.get("positions_coding", "packed"),
                                         sections.get("positions_table", b""))  # fmt: skip
        except ValueError as exc:
            raise _fail(rec, f"section positions ({meta['positions']}): {exc}") from None
        if positions.size != count:
            raise _fail(rec, f"the positions mark {positions.size} elements, but nonzeros is {count}")
    coding = meta.get("codes_coding", "packed")
    try:
        stored = decode_stream(coding, sections["codes"], sections.get("codes_table", b""), meta["bits"], count)
    except ValueError as exc:
        raise _fail(rec, f"section codes ({coding}): {exc}") from None
    stored = stored.astype(np.int16)
    _check_codes(rec, stored, positions is not None)
    if meta["encoding"] == "uniform":
        scales = float_values(sections["scales"], meta.get("scale_dtype", "float32"), meta["scale_count"])
        bad = np.flatnonzero(~(np.isfinite(scales) & (scales > 0)))
        if bad.size:
            raise _fail(rec, f"scale {int(bad[0])} is {float(scales[bad[0]])}, expected a positive finite number")
        return Codes(numel, stored, positions, scales)
    book = float_values(sections["codebook"], meta.get("codebook_dtype", "float32"), meta["codebook_size"])
    bad = np.flatnonzero(~np.isfinite(book))
    if bad.size:
        raise _fail(rec, f"codebook entry {int(bad[0])} is {float(book[bad[0]])}, expected a finite number")
    return Codes(numel, stored, positions, np.concatenate([np.zeros(1, np.float32), book]))


def _check_codes(rec: TensorRecord, stored: np.ndarray, sparse: bool) -> None:
    """Every stored value names a code of the record's range, and sparse storage holds no zero code."""
    meta, offset = rec.meta, rec.meta["code_offset"]
    high = int(stored.max()) if stored.size else 0
    if meta["encoding"] == "codebook" and high > meta["codebook_size"]:
        raise _fail(rec, f"codebook index {high} is past the {meta['codebook_size']} entries of the codebook")
    # a narrow range ends at 2**(b-1) - 1 like the full one but starts one higher: its top b-bit value
    # (q = 2**(b-1)) is no code of it
    largest = (1 << (meta["bits"] - 1)) - 1
    if meta["encoding"] == "uniform" and high + offset > largest:
        raise _fail(rec, f"stored value {high} is the code {high + offset}, past {largest}, the largest code of the "
                    f"range code_offset {offset} names")  # fmt: skip
    zeros = np.flatnonzero(stored == -offset) if sparse else np.zeros(0, np.int64)  # q == 0, or k == 0
    if zeros.size:
        # a zero is told by its absence: storing it too would give one tensor two encodings
        raise _fail(rec, f"sparse code {int(zeros[0])} is the zero code (stored value {-offset}), expected only "
                    "the elements that are not zero")  # fmt: skip


def decode_tensor(rec: TensorRecord) -> torch.Tensor:
    """The float32 tensor a record stands for: codes times their scales, codebook entries, or the float values.

    Allocates ``prod(shape)`` elements: call it once the shape is known to be wanted (the model's).

    Raises:
        FormatError: the record's sections hold values its header rules out.

    Example::

        header, records = read_compressed("net.tshrink")
        weight = decode_tensor(records[0])  # float32, shape records[0].meta["shape"]
    """
    meta, shape = rec.meta, rec.meta["shape"]
    codes = decode_codes(rec)
    if meta["encoding"] == "float":
        return torch.from_numpy(codes.values.copy()).reshape(shape)
    q = _laid_out(rec, codes)
    if meta["encoding"] == "codebook":
        return torch.from_numpy(codes.table[q]).reshape(shape)
    scales = torch.from_numpy(codes.table)
    view = scales.reshape(-1, *[1] * (len(shape) - 1)) if scales.numel() > 1 else scales[0]
    return torch.from_numpy(q).reshape(shape).float() * view  # the same product the fake quant computes


def _laid_out(rec: TensorRecord, codes: Codes) -> np.ndarray:
    """The flat codes ``q`` (uniform) or codebook indices ``k`` of every element, as int16."""
    offset = rec.meta["code_offset"]
    if codes.positions is None:
        return codes.values + np.int16(offset)  # int16: codes are 0..255 and offsets -128..0
    q = np.zeros(codes.numel, dtype=np.int16)  # an omitted element is q == 0 (uniform) / k == 0 (codebook)
    q[codes.positions] = codes.values + np.int16(offset)
    return q


def uniform_codes(rec: TensorRecord) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A uniform record's integer codes ``q`` (int8, the tensor's shape; zero point 0) and its scales (one per
    output channel, or one): ``decode_tensor(rec) == q * scales`` along axis 0. ``None`` for other encodings,
    and for codes beyond int8 (unsigned 8-bit codes).

    Allocates ``prod(shape)`` elements, like :func:`decode_tensor`."""
    if rec.meta["encoding"] != "uniform":
        return None
    codes = decode_codes(rec)
    q = _laid_out(rec, codes)
    if q.size and (int(q.min()) < -128 or int(q.max()) > 127):
        return None
    return torch.from_numpy(q.astype(np.int8)).reshape(rec.meta["shape"]), torch.from_numpy(codes.table.copy())


def codebook_codes(rec: TensorRecord) -> tuple[torch.Tensor, torch.Tensor]:
    """A codebook record's indices (int64, the tensor's shape; 0 = zero, ``k`` = entry ``k - 1``) and its
    entries: ``decode_tensor(rec) == cat([0], entries)[indices]``. Allocates ``prod(shape)`` elements."""
    if rec.meta["encoding"] != "codebook":
        raise ConfigError(f"{rec.name}: a {rec.meta['encoding']} record, not a codebook")
    codes = decode_codes(rec)
    k = _laid_out(rec, codes)
    # the decoded table is [0, entries...] (index 0 is the zero); its entries alone are the centroids
    return torch.from_numpy(k.astype(np.int64)).reshape(rec.meta["shape"]), torch.from_numpy(codes.table[1:].copy())


def zero_fraction(rec: TensorRecord) -> float:
    """Fraction of the record's elements that are exactly zero, from its codes (no full tensor is built)."""
    codes = decode_codes(rec)
    if codes.numel == 0:
        return 0.0
    if rec.meta["encoding"] == "float":
        zeros = int(np.count_nonzero(codes.values == 0))
    elif rec.meta["encoding"] == "uniform":
        zeros = int(np.count_nonzero(codes.values == -rec.meta["code_offset"]))  # q == 0; scales are > 0
    else:
        zeros = int(np.count_nonzero(codes.table[codes.values] == 0))  # index 0, or a centroid that is 0
    if codes.positions is not None:
        zeros += codes.numel - codes.positions.size
    return zeros / codes.numel
