"""A stream of small unsigned integers (weight codes, position gaps) stored either bit-packed at a fixed
width or Huffman-coded, whichever takes fewer bytes.

A Huffman stream carries its table: one 4-bit code length per symbol of the ``2**bits`` alphabet, packed
like any other codes. Decoding needs the coding, the data, the table, the width and the count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from torchshrink.pack.bitpack import pack_bits, packed_size, unpack_bits
from torchshrink.pack.huffman import check_complete, huffman_decode, huffman_encode

__all__ = ["Stream", "encode_stream", "decode_stream", "check_padding", "CODINGS"]

CODINGS = ("packed", "huffman")


@dataclass(frozen=True)
class Stream:
    """An encoded stream: ``coding`` is ``packed`` or ``huffman``; ``table`` is empty when packed."""

    coding: str
    data: bytes
    table: bytes = b""

    @property
    def size(self) -> int:
        return len(self.data) + len(self.table)


def encode_stream(values: np.ndarray, bits: int, entropy: bool = True) -> Stream:
    """Encode ``values`` (integers in ``[0, 2**bits)``) packed, or Huffman-coded when ``entropy`` and smaller."""
    values = np.asarray(values).reshape(-1)
    packed = Stream("packed", pack_bits(values.astype(np.uint8), bits))
    if not entropy or values.size == 0:
        return packed
    lengths, data = huffman_encode(values, 1 << bits)
    coded = Stream("huffman", data, pack_bits(lengths.astype(np.uint8), 4))
    return coded if coded.size < packed.size else packed


def check_padding(data: bytes, used_bits: int) -> None:
    """``ValueError`` unless ``data`` is exactly ``used_bits`` bits, zero-padded to a whole byte."""
    if len(data) != packed_size(used_bits, 1):
        raise ValueError(f"{len(data)} bytes, expected {packed_size(used_bits, 1)} for {used_bits} bits")
    if used_bits % 8 and data[-1] >> (used_bits % 8):
        raise ValueError("padding bits after the last value are not zero")


def decode_stream(coding: str, data: bytes, table: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`encode_stream`: ``count`` symbols as uint8 (packed) or int64 (Huffman).

    Strict: the stream must be exactly what :func:`encode_stream` writes for ``count`` symbols, padding
    included, and a Huffman table a complete code (or one symbol of length 1). Raises ``ValueError`` on
    anything else.
    """
    if coding == "packed":
        check_padding(data, count * bits)
        return unpack_bits(data, bits, count)
    if coding == "huffman":
        check_padding(table, 4 << bits)
        lengths = unpack_bits(table, 4, 1 << bits).astype(np.int64)
        check_complete(lengths)  # as encode_stream's tables are: the format allows no other
        return huffman_decode(lengths, data, count)
    raise ValueError(f"unknown stream coding {coding!r}")
