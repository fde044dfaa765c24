"""Positions of the non-zero entries of a flattened tensor: a bitmask or gaps, whichever is smaller.

* ``bitmask``: one bit per entry (1 = non-zero), packed LSB first: ``ceil(n / 8)`` bytes.
* ``delta``: for each non-zero entry in order, the count of zeros since the previous non-zero (or since the
  start), as a stream of ``gap_bits``-wide gap codes (bit-packed or Huffman-coded, see :mod:`streams`). A gap
  longer than ``2**gap_bits - 1`` is split by *filler* entries: a gap code of all ones means "that many
  zeros, and no non-zero entry yet", so the reader keeps counting. Every width 1..8 is tried.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchshrink.pack.streams import Stream, check_padding, decode_stream, encode_stream

__all__ = ["Positions", "encode_positions", "decode_positions", "gap_codes"]


@dataclass(frozen=True)
class Positions:
    """Encoded positions: the method, its stream, the gap width (delta only) and the entry count."""

    method: str
    stream: Stream
    gap_bits: int
    entries: int  # number of gap codes (delta), or n (bitmask)

    @property
    def size(self) -> int:
        return self.stream.size


def gap_codes(positions: np.ndarray, width: int) -> np.ndarray:
    """The gap codes of increasing ``positions`` at ``width`` bits, fillers included."""
    limit = (1 << width) - 1
    previous = np.concatenate([[-1], positions[:-1]])
    gaps = positions - previous - 1
    per_gap = gaps // limit + 1  # fillers, then the remainder
    codes = np.full(int(per_gap.sum()), limit, dtype=np.uint8)
    codes[np.cumsum(per_gap) - 1] = gaps % limit
    return codes


def encode_positions(nonzero: np.ndarray, entropy: bool = True) -> Positions:
    """Encode a boolean vector of non-zero flags in the smallest of the methods and widths."""
    nonzero = np.asarray(nonzero, dtype=bool).reshape(-1)
    n = nonzero.size
    bitmask = Stream("packed", np.packbits(nonzero.astype(np.uint8), bitorder="little").tobytes())
    best = Positions("bitmask", bitmask, 0, n)
    positions = np.flatnonzero(nonzero)
    if positions.size == 0:
        return Positions("delta", Stream("packed", b""), 1, 0)
    for width in range(1, 9):
        if not entropy and positions.size * width / 8 >= best.size:
            break  # packed: wider gaps only cost more from here
        codes = gap_codes(positions, width)
        stream = encode_stream(codes, width, entropy)
        if stream.size < best.size:
            best = Positions("delta", stream, width, codes.size)
    return best


def decode_positions(method: str, data: bytes, n: int, gap_bits: int = 0, entries: int = 0,
                     coding: str = "packed", table: bytes = b"") -> np.ndarray:  # fmt: skip
    """Indices of the non-zero entries of an ``n``-vector, in increasing order.

    Allocates in proportion to ``data`` (a bitmask holds 8 flags a byte, a gap code at least one bit), never
    to ``n`` alone. Raises ``ValueError`` on data that cannot be valid: a bitmask of another length or with
    non-zero padding, gaps that run past ``n``.
    """
    if method == "bitmask":
        check_padding(data, n)
        flags = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:n]
        return np.flatnonzero(flags)
    if method == "delta":
        if not (isinstance(gap_bits, int) and 1 <= gap_bits <= 8):
            raise ValueError(f"gap_bits {gap_bits!r} must be 1..8")
        codes = decode_stream(coding, data, table, gap_bits, entries).astype(np.int64)
        limit = (1 << gap_bits) - 1
        filler = codes == limit
        # each code advances by (code) zeros, and by one more for the non-zero entry unless it is a filler
        steps = codes + (~filler)
        ends = np.cumsum(steps)
        if ends.size and ends[-1] > n:  # every step is >= 1, so this bounds every position (fillers too)
            raise ValueError(f"delta gaps run {int(ends[-1])} elements into a tensor of {n}")
        return ends[~filler] - 1
    raise ValueError(f"unknown position encoding {method!r}")
