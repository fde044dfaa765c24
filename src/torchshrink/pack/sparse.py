"""Positions of the non-zero entries of a flattened tensor: a bitmask or packed gaps, whichever is smaller.

* ``bitmask``: one bit per entry (1 = non-zero), packed LSB first: ``ceil(n / 8)`` bytes.
* ``delta``: for each non-zero entry in order, the count of zeros since the previous non-zero (or since the
  start), packed at a fixed ``gap_bits`` width 1..8. A gap longer than ``2**gap_bits - 1`` is split by
  *filler* entries: a gap code of all ones means "that many zeros, and no non-zero entry yet", so the
  reader keeps counting. Fillers are rare at the widths chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchshrink.pack.bitpack import pack_bits, packed_size, unpack_bits

__all__ = ["Positions", "encode_positions", "decode_positions"]


@dataclass(frozen=True)
class Positions:
    """Encoded positions: the method, its packed bytes, the gap width (delta only) and the entry count."""

    method: str
    data: bytes
    gap_bits: int
    entries: int  # number of packed gap codes (delta), or n (bitmask)


def _gaps(positions: np.ndarray, width: int) -> np.ndarray:
    limit = (1 << width) - 1
    previous = np.concatenate([[-1], positions[:-1]])
    gaps = positions - previous - 1
    codes = []
    for g in gaps.tolist():
        while g >= limit:
            codes.append(limit)  # filler: `limit` zeros, keep counting
            g -= limit
        codes.append(g)
    return np.asarray(codes, dtype=np.uint8)


def encode_positions(nonzero: np.ndarray) -> Positions:
    """Encode a boolean vector of non-zero flags in the smaller of the two methods."""
    nonzero = np.asarray(nonzero, dtype=bool).reshape(-1)
    n = nonzero.size
    best = Positions("bitmask", np.packbits(nonzero.astype(np.uint8), bitorder="little").tobytes(), 0, n)
    positions = np.flatnonzero(nonzero)
    if positions.size == 0:
        return Positions("delta", b"", 1, 0)
    for width in range(1, 9):
        if positions.size * width / 8 >= len(best.data):
            break  # wider gaps only cost more from here
        codes = _gaps(positions, width)
        if packed_size(codes.size, width) < len(best.data):
            best = Positions("delta", pack_bits(codes, width), width, codes.size)
    return best


def decode_positions(method: str, data: bytes, n: int, gap_bits: int = 0, entries: int = 0) -> np.ndarray:
    """Indices of the non-zero entries of an ``n``-vector, in increasing order.

    Raises ``ValueError`` on data that cannot be valid (too short, positions past ``n``).
    """
    if method == "bitmask":
        if len(data) < packed_size(n, 1):
            raise ValueError("bitmask shorter than the tensor")
        flags = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=packed_size(n, 1)), bitorder="little")[:n]
        return np.flatnonzero(flags)
    if method == "delta":
        codes = unpack_bits(data, gap_bits, entries).astype(np.int64)
        limit = (1 << gap_bits) - 1
        filler = codes == limit
        # each code advances by (code) zeros, and by one more for the non-zero entry unless it is a filler
        steps = codes + (~filler)
        ends = np.cumsum(steps)
        positions = ends[~filler] - 1
        if positions.size and (positions[-1] >= n):
            raise ValueError("delta positions run past the end of the tensor")
        return positions
    raise ValueError(f"unknown position encoding {method!r}")
