"""Canonical Huffman coding of small-alphabet symbol streams (weight codes, position gaps), as in Deep
Compression's last stage.

A stream is described by one code length per symbol of the alphabet (0 = symbol absent); the codes are the
canonical ones for those lengths (shorter codes first, then by symbol value, counting up), so the lengths
alone define the code. In the bit stream, codes follow one another LSB first like :mod:`bitpack`: the first
(most significant) bit of a code is the lowest stream bit. Code lengths are limited to ``MAX_LENGTH`` bits
so a decoder can use one lookup table.

Only symbol counts matter for the lengths; the encoder is vectorised with numpy, the decoder is a table
walk (about a microsecond per symbol).
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = [
    "MAX_LENGTH",
    "code_lengths",
    "canonical_codes",
    "check_complete",
    "huffman_encode",
    "huffman_decode",
    "encoded_bits",
]

MAX_LENGTH = 15


def _lengths_unlimited(counts: np.ndarray) -> np.ndarray:
    symbols = [int(s) for s in np.flatnonzero(counts)]
    lengths = np.zeros(counts.size, dtype=np.int64)
    if len(symbols) == 1:
        lengths[symbols[0]] = 1  # a lone symbol still needs one bit per occurrence
        return lengths
    # heap of (weight, tie-breaker, symbols in the subtree): merging deepens every symbol of both subtrees
    heap = [(int(counts[s]), s, [s]) for s in symbols]
    heapq.heapify(heap)
    tie = counts.size
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (w1 + w2, tie, s1 + s2))
        tie += 1
    return lengths


def code_lengths(counts: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Huffman code length per symbol (0 for absent symbols), no code longer than ``max_length``.

    Over-long codes (only for very skewed counts) are avoided by flattening the counts and rebuilding: a
    slightly suboptimal code, but a bounded decoding table.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative integers")
    if counts.size > 1 << max_length:
        raise ValueError(f"{counts.size} symbols cannot all have codes of at most {max_length} bits")
    work = counts.copy()
    while True:
        lengths = _lengths_unlimited(work)
        if lengths.max(initial=0) <= max_length:
            return lengths
        work = np.where(work > 0, (work + 1) // 2, 0)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (its bits, most significant first) for the given lengths.

    Raises ``ValueError`` if the lengths cannot form a prefix code (Kraft sum over 1).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 0).any() or (lengths > MAX_LENGTH).any():
        raise ValueError(f"code lengths must be in [0, {MAX_LENGTH}]")
    used = lengths > 0
    if float(np.sum(2.0 ** -lengths[used])) > 1.0:
        raise ValueError("code lengths violate the Kraft inequality")
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(used).tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def check_complete(lengths: np.ndarray) -> None:
    """``ValueError`` unless the code lengths (each 0..``MAX_LENGTH``) form a complete prefix code, Kraft sum
    exactly 1, or are one symbol of length 1: what Huffman's construction gives (a lone symbol still takes one
    bit). Every other table leaves bit patterns that start no code, or codes that are prefixes of others."""
    used = np.asarray(lengths, dtype=np.int64)
    used = used[used > 0]
    if used.size == 1 and int(used[0]) == 1:
        return
    kraft = int(np.sum(np.left_shift(1, MAX_LENGTH - used)))  # in units of 2**-MAX_LENGTH: exact
    if kraft != 1 << MAX_LENGTH:
        raise ValueError(f"code lengths have a Kraft sum of {kraft}/{1 << MAX_LENGTH}, expected exactly 1 (a "
                         "complete prefix code) or a lone symbol of length 1")  # fmt: skip


def _reverse(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Bit-reverse each code within its length, so its first bit lands on the lowest stream position."""
    out = np.zeros_like(codes)
    for i in range(int(lengths.max(initial=0))):
        bit = (codes >> np.maximum(lengths - 1 - i, 0)) & 1
        out |= np.where(i < lengths, bit << i, 0)
    return out


def encoded_bits(symbols: np.ndarray, lengths: np.ndarray) -> int:
    """Length in bits of ``symbols`` coded with ``lengths``."""
    return int(np.asarray(lengths, dtype=np.int64)[np.asarray(symbols, dtype=np.int64)].sum())


def huffman_encode(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, bytes]:
    """Code ``symbols`` (integers in ``[0, alphabet)``): returns the code lengths (``alphabet`` values) and
    the packed bit stream (last byte zero-padded)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols outside [0, {alphabet})")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    if symbols.size == 0:
        return lengths, b""
    reversed_codes = _reverse(canonical_codes(lengths), lengths)
    sym_len = lengths[symbols]
    sym_code = reversed_codes[symbols]
    starts = np.concatenate([[0], np.cumsum(sym_len)[:-1]])
    total = int(sym_len.sum())
    bits = np.zeros(total, dtype=np.uint8)
    for i in range(int(sym_len.max())):
        has = sym_len > i
        bits[starts[has] + i] = (sym_code[has] >> i) & 1
    return lengths, np.packbits(bits, bitorder="little").tobytes()


def huffman_decode(lengths: np.ndarray, data: bytes, count: int) -> np.ndarray:
    """Decode ``count`` symbols from ``data`` coded with the canonical code of ``lengths``.

    Raises ``ValueError`` on invalid lengths, a bit pattern that is no code, a stream that ends early, or
    bytes (or non-zero padding bits) after the last code.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if count == 0:
        if data:
            raise ValueError(f"{len(data)} bytes for no symbol, expected none")
        return np.zeros(0, dtype=np.int64)
    if count > 8 * len(data):
        raise ValueError(f"{len(data)} bytes cannot hold {count} codes")  # every code takes at least one bit
    width = int(lengths.max(initial=0))
    if width == 0:
        raise ValueError("no symbol has a code")
    codes = _reverse(canonical_codes(lengths), lengths)
    # table[w] for every width-bit window w whose low bits start with a code: (symbol, length)
    table_symbol = np.full(1 << width, -1, dtype=np.int64)
    table_length = np.zeros(1 << width, dtype=np.int64)
    for symbol in np.flatnonzero(lengths > 0).tolist():
        n = int(lengths[symbol])
        fill = (np.arange(1 << (width - n), dtype=np.int64) << n) | int(codes[symbol])
        table_symbol[fill] = symbol
        table_length[fill] = n
    sym_list, len_list = table_symbol.tolist(), table_length.tolist()
    mask = (1 << width) - 1
    total_bits = 8 * len(data)
    padded = bytes(data) + b"\x00" * 4
    out = [0] * count
    pos = 0
    for i in range(count):
        window = (int.from_bytes(padded[pos >> 3 : (pos >> 3) + 4], "little") >> (pos & 7)) & mask
        symbol = sym_list[window]
        if symbol < 0:
            raise ValueError("bit pattern is not a code of this table")
        pos += len_list[window]
        out[i] = symbol
    if pos > total_bits:
        raise ValueError("Huffman stream ends before its last symbol")
    if (pos + 7) // 8 != len(data) or (pos % 8 and data[-1] >> (pos % 8)):
        # the stream is exactly its codes, zero-padded to a byte: anything else is not what was written
        raise ValueError(f"Huffman stream has bytes or non-zero padding after its last code (bit {pos})")
    return np.asarray(out, dtype=np.int64)
