"""Bit packing: unsigned integers of any width 1..8 laid end to end, least significant bit first.

Value ``i`` occupies bits ``[i * width, (i + 1) * width)`` of the stream, where bit ``k`` of the stream is bit
``k % 8`` (least significant first) of byte ``k // 8``. The last byte is zero-padded.
"""

from __future__ import annotations

import numpy as np

__all__ = ["packed_size", "pack_bits", "unpack_bits", "bits_for"]


def packed_size(count: int, width: int) -> int:
    """Bytes that ``count`` values of ``width`` bits occupy.

    >>> packed_size(10, 3)
    4
    """
    return (count * width + 7) // 8


def bits_for(max_value: int) -> int:
    """Smallest width 1..8 that holds ``max_value`` (``ValueError`` above 255).

    >>> bits_for(0), bits_for(1), bits_for(5), bits_for(255)
    (1, 1, 3, 8)
    """
    if not 0 <= max_value <= 255:
        raise ValueError(f"{max_value} does not fit in 8 bits")
    return max(1, int(max_value).bit_length())


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned integers (each ``< 2**width``) at exactly ``width`` bits each.

    >>> pack_bits(np.array([1, 2, 3]), 2).hex()
    '39'
    """
    if not 1 <= width <= 8:
        raise ValueError(f"width {width}: must be 1..8")
    v = np.asarray(values, dtype=np.uint8).reshape(-1)
    if v.size and int(v.max()) >= 1 << width:
        raise ValueError(f"value {int(v.max())} does not fit in {width} bits")
    bits = np.unpackbits(v[:, None], axis=1, bitorder="little")[:, :width]  # (n, width), LSB first
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values of ``width`` bits as uint8.

    Raises ``ValueError`` if ``data`` is shorter than ``packed_size(count, width)``.
    """
    if not 1 <= width <= 8:
        raise ValueError(f"width {width}: must be 1..8")
    need = packed_size(count, width)
    if len(data) < need:
        raise ValueError(f"{len(data)} bytes hold fewer than {count} values of {width} bits")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=need), bitorder="little")[: count * width]
    bits = bits.reshape(count, width)
    weights = (1 << np.arange(width, dtype=np.uint16)).astype(np.uint16)
    return (bits.astype(np.uint16) @ weights).astype(np.uint8)
