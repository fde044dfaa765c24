"""The ``.tshrink`` header checked against its schema before anything it describes is read or allocated.

One hand-written pass over the decoded JSON (no schema library): every field's presence, type and range,
then the facts that tie fields together, as ``docs/FORMAT.md`` states them. Integers are JSON integers
(``2.0`` is no version); a section's length follows from the counts and widths next to it (a packed stream of
``count`` ``w``-bit values is exactly ``ceil(count * w / 8)`` bytes); the sections of all tensors tile the
decompressed payload with no gap and no overlap (as safetensors checks); names are unique; aliases point
to stored tensors. Afterwards every size the reader allocates or decompresses is a function of checked
numbers, so it is bounded by ``MAX_ELEMENTS`` (or by the model the file fills, see :mod:`.decode`).

Each refusal is a :class:`FormatError` naming the field by its path (``tensors[2] 'fc.weight'.bits``), the
value found and what was expected.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from torchshrink.pack.bitpack import packed_size
from torchshrink.pack.format import (
    FORMAT_NAME,
    MAX_ELEMENTS,
    MAX_PAYLOAD,
    READABLE_VERSIONS,
    FormatError,
    shown,
)
from torchshrink.pack.huffman import MAX_LENGTH
from torchshrink.quant.fake_quant import MIN_SCALE

__all__ = ["check_header", "FLOAT_SIZES", "MAX_ARGS"]

FLOAT_SIZES = {"float32": 4, "float16": 2}
MAX_DIMS = 8
FLOAT32_MAX = 3.4028234663852886e38
# the input quantizer clamps its scale to MIN_SCALE (as float32, 9.99999993922529e-09): a smaller one in a file
# would not be the scale the model computes with
SCALE_FLOOR = struct.unpack("<f", struct.pack("<f", MIN_SCALE))[0]
# A registered model's constructor arguments are a few numbers and short lists (cnn: four stages of widths):
# the reader builds the architecture from them, and building (and folding) costs time per layer they ask for
MAX_ARGS = 64  # values (numbers, strings, ...) in all, nested lists included
MAX_ARGS_DEPTH = 4  # the object itself, then lists of lists of values (cnn's channels: [[32, 32], 64])
_SHA = frozenset("0123456789abcdef")


class _Fields:
    """One JSON object of the header and its path, so each refusal can name the field it is about."""

    def __init__(self, value: Any, path: str):
        if not isinstance(value, dict):
            where = f"header field {path}" if path else "header"
            raise FormatError(f"{where} is {shown(value)}, expected a JSON object")
        self.value, self.path = value, path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, expected: str) -> FormatError:
        if key not in self.value:
            return FormatError(f"header field {self.name(key)} is missing, expected {expected}")
        return FormatError(f"header field {self.name(key)} is {shown(self.value[key])}, expected {expected}")

    def integer(self, key: str, low: int, high: int, expected: str = "") -> int:
        value = self.value.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        if not ok:
            raise self.fail(key, expected or f"an integer in [{low}, {high}]")
        return value

    def choice(self, key: str, choices: tuple[str, ...] | dict[str, Any], default: str | None = None) -> str:
        value = self.value.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.fail(key, " or ".join(f'"{c}"' for c in choices) + (" (or absent)" if default else ""))
        return value

    def string(self, key: str) -> str:
        value = self.value.get(key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string")
        return value

    def boolean(self, key: str) -> bool:
        value = self.value.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.value.get(key)
        if not isinstance(value, list):
            raise self.fail(key, "an array")
        return value

    def child(self, key: str) -> _Fields:
        if not isinstance(self.value.get(key), dict):
            raise self.fail(key, "a JSON object")
        return _Fields(self.value[key], self.name(key))


def _stream(t: _Fields, key: str, width: int, count: int) -> dict[str, tuple[int, int]]:
    """Byte-length range of each section of a stream of ``count`` ``width``-bit symbols named ``key``."""
    coding = t.choice(f"{key}_coding", ("packed", "huffman"), default="packed")
    if coding == "packed":
        exact = packed_size(count, width)
        return {key: (exact, exact)}
    # each Huffman code is 1..MAX_LENGTH bits; the table holds one 4-bit length per symbol of 2**width
    table = packed_size(1 << width, 4)
    return {key: (packed_size(count, 1), packed_size(count, MAX_LENGTH)), f"{key}_table": (table, table)}


def _shape(t: _Fields) -> tuple[list[int], int]:
    shape = t.array("shape")
    if len(shape) > MAX_DIMS:
        raise t.fail("shape", f"at most {MAX_DIMS} dimensions")
    for i, size in enumerate(shape):
        if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_ELEMENTS):
            raise FormatError(f"header field {t.name('shape')}[{i}] is {shown(size)}, expected an integer in "
                              f"[0, {MAX_ELEMENTS}]")  # fmt: skip
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise t.fail("shape", f"at most {MAX_ELEMENTS} elements (this reader's limit), not {numel}")
    return shape, numel


def _codes(t: _Fields, shape: list[int], numel: int, encoding: str) -> dict[str, tuple[int, int]]:
    """The fields of a ``uniform`` or ``codebook`` entry; returns its sections' length ranges."""
    bits = t.integer("bits", 1, 8)
    if encoding == "uniform":
        # code_offset is the most negative code: -(2**(bits-1)) at most, 0 for unsigned codes
        t.integer("code_offset", -(1 << (bits - 1)), 0, f"an integer in [{-(1 << (bits - 1))}, 0] for {bits} bits")
        channels = shape[0] if shape else 1
        count = t.integer("scale_count", 1, max(channels, 1), f"1 or the size of axis 0 ({channels})")
        if count not in (1, channels):
            raise t.fail("scale_count", f"1 or the size of axis 0 ({channels})")
        size = FLOAT_SIZES[t.choice("scale_dtype", FLOAT_SIZES, default="float32")]
        need = {"scales": (count * size, count * size)}
    else:
        # index 0 is the pruned zero, so a b-bit index names at most 2**b - 1 entries, stored from 0
        t.integer("code_offset", 0, 0, "0 (codebook indices are stored as they are)")
        count = t.integer("codebook_size", 0, (1 << bits) - 1, f"an integer in [0, {(1 << bits) - 1}] for {bits} bits")
        size = FLOAT_SIZES[t.choice("codebook_dtype", FLOAT_SIZES, default="float32")]
        need = {"codebook": (count * size, count * size)}
    if t.choice("storage", ("dense", "sparse")) == "dense":
        return need | _stream(t, "codes", bits, numel)
    nonzeros = t.integer("nonzeros", 0, numel, f"an integer in [0, {numel}] (the elements stored)")
    if t.choice("positions", ("bitmask", "delta")) == "bitmask":
        t.choice("positions_coding", ("packed",), default="packed")  # gap_bits / gap_count: delta only, ignored
        mask = packed_size(numel, 1)
        need["positions"] = (mask, mask)
    else:
        gap_bits = t.integer("gap_bits", 1, 8)
        # one code per stored element plus fillers, and every code moves the cursor by at least one element
        gaps = t.integer("gap_count", nonzeros, numel, f"an integer in [nonzeros {nonzeros}, elements {numel}]")
        need |= _stream(t, "positions", gap_bits, gaps)
    return need | _stream(t, "codes", bits, nonzeros)


def _tensor(t: _Fields, raw_len: int) -> tuple[str, int, list[tuple[int, int, str]]]:
    """Check one tensor entry; returns its name, element count and ``(offset, length, field)`` spans."""
    name = t.string("name")
    t.path = f"{t.path} {shown(name)}"
    shape, numel = _shape(t)
    encoding = t.choice("encoding", ("float", "uniform", "codebook"))
    if encoding == "float":
        size = numel * FLOAT_SIZES[t.choice("dtype", FLOAT_SIZES)]
        need = {"values": (size, size)}
    else:
        need = _codes(t, shape, numel, encoding)
    sections = t.child("sections")
    if set(sections.value) != set(need):
        found = shown(sorted(sections.value), 80)
        raise t.fail("sections", f"exactly the sections {sorted(need)} for this encoding, not {found}")
    spans = []
    for key, (low, high) in need.items():
        span = sections.child(key)
        length = span.integer("length", low, high, f"{low} bytes" if low == high else f"{low} to {high} bytes")
        if length > raw_len:
            raise span.fail("length", f"at most raw_payload_bytes ({raw_len}): the section runs past the payload")
        offset = span.integer("offset", 0, raw_len - length, f"an offset in [0, {raw_len - length}]: the section "
                              "runs past the payload")  # fmt: skip
        spans.append((offset, length, span.path))
    return name, numel, spans


def _tile(spans: list[tuple[int, int, str]], raw_len: int) -> None:
    """Sections must cover the payload exactly: a gap hides bytes, an overlap makes two tensors share them."""
    cursor, before = 0, "the payload's start"
    for offset, length, where in sorted(spans):
        if offset != cursor:
            problem = "leaves a gap after" if offset > cursor else "overlaps"
            raise FormatError(f"header field {where}.offset is {offset}: {problem} {before} (which ends at {cursor}), "
                              "expected the sections to tile the payload, each byte once")  # fmt: skip
        cursor, before = cursor + length, where
    if cursor != raw_len:
        raise FormatError(f"header field raw_payload_bytes is {raw_len}, expected {cursor} (the sections' total)")


def _args_size(value: Any) -> tuple[int, int]:
    """Scalars in a JSON value (nested lists and objects included) and its depth; iterative, so that a value
    nested as deep as the parser allows costs no recursion here."""
    count, depth, stack = 0, 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        depth = max(depth, level)
        if isinstance(item, (dict, list)):
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
        else:
            count += 1
    return count, depth


def _model(top: _Fields, version: int) -> None:
    model = top.child("model")
    name = model.value.get("name", ...)
    if name is None and version >= 3:
        model.string("class")  # informational only: never imported
    elif isinstance(name, str) and name:
        count, depth = _args_size(model.child("args").value) if "args" in model.value else (0, 0)
        if count > MAX_ARGS or depth > MAX_ARGS_DEPTH:
            raise model.fail("args", f"constructor arguments of at most {MAX_ARGS} values in all, nested at most "
                             f"{MAX_ARGS_DEPTH} deep")  # fmt: skip
    else:
        raise model.fail("name", "a registered architecture's name" + (" or null" if version >= 3 else ""))
    if model.value.get("batchnorm_folded") is not True:
        raise model.fail("batchnorm_folded", "true (BatchNorm folded before saving)")


def _activations(top: _Fields, codes: set[str]) -> None:
    holders = {name.rpartition(".")[0] for name in codes}  # 'fc1' of 'fc1.weight', 'attn' of 'attn.in_proj_weight'
    seen = set()
    for i, value in enumerate(top.array("activations")):
        a = _Fields(value, f"activations[{i}]")
        layer = a.string("layer")
        if layer in seen or layer not in holders:
            raise a.fail("layer", "a layer holding a quantized tensor of the file (named '<layer>.<attribute>'), "
                         "named once")  # fmt: skip
        seen.add(layer)
        bits, signed, symmetric = a.integer("bits", 2, 8), a.boolean("signed"), a.boolean("symmetric")
        scale = a.value.get("scale")
        # the quantizer holds float32: a positive double can still round to 0 or overflow to inf there
        if not (
            isinstance(scale, (int, float)) and not isinstance(scale, bool) and SCALE_FLOOR <= scale <= FLOAT32_MAX
        ):
            raise a.fail("scale", f"a number in [{SCALE_FLOOR:.9g}, {FLOAT32_MAX:.9g}] (positive, a float32)")
        low = -(1 << (bits - 1)) + int(symmetric) if signed else 0
        high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        zero = a.value.get("zero_point")
        # earlier writers (0.1.0) wrote the zero point as a float such as -55.0: integral floats are read as ints
        if isinstance(zero, float) and zero.is_integer():
            zero = int(zero)
        if not (isinstance(zero, int) and not isinstance(zero, bool) and low <= zero <= high):
            raise a.fail("zero_point", f"an integer in [{low}, {high}] for this {bits}-bit quantizer")


def check_header(header: Any) -> dict[str, Any]:
    """Check a decoded header against the schema of ``docs/FORMAT.md``; return it unchanged.

    Raises:
        FormatError: the first field that is missing, of the wrong type, out of range or inconsistent.

    Example::

        header = check_header(parse_header(head))  # then every count and offset in it can be trusted
    """
    top = _Fields(header, "")
    if top.value.get("format") != FORMAT_NAME:
        raise top.fail("format", f'"{FORMAT_NAME}" (this is not a torchshrink file)')
    version = top.value.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version not in READABLE_VERSIONS:
        raise FormatError(f"format version {version} is not supported (this reader knows versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}): upgrade torchshrink")  # fmt: skip
    version = top.integer("version", 1, READABLE_VERSIONS[-1], "an integer: 1, 2 or 3")
    _model(top, version)
    compression = top.choice("compression", ("none", "zlib", "lzma"))
    stored = top.integer("payload_bytes", 0, MAX_PAYLOAD)
    raw_len = top.integer("raw_payload_bytes", 0, MAX_PAYLOAD)
    if compression == "none" and stored != raw_len:
        raise top.fail("raw_payload_bytes", f"payload_bytes ({stored}) for an uncompressed payload")
    digest = top.value.get("payload_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _SHA):
        raise top.fail("payload_sha256", "64 lowercase hex digits")
    names: set[str] = set()
    codes: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    total = 0
    for i, value in enumerate(top.array("tensors")):
        name, numel, more = _tensor(_Fields(value, f"tensors[{i}]"), raw_len)
        if name in names:
            raise FormatError(f"header field tensors[{i}].name is {shown(name)}, expected a name no other entry has")
        names.add(name)
        if value["encoding"] != "float":
            codes.add(name)
        total += numel
        if total > MAX_ELEMENTS:
            raise FormatError(f"header field tensors[{i}].shape brings the file to {total} elements, expected at "
                              f"most {MAX_ELEMENTS} in all (this reader's limit)")  # fmt: skip
        spans += more
    _tile(spans, raw_len)
    if "aliases" in top.value:
        if version < 3:
            raise top.fail("aliases", f"no aliases in a version {version} file (they came with version 3)")
        aliases = top.child("aliases")
        for alias, target in aliases.value.items():
            if alias in names or not isinstance(target, str) or target not in names:
                raise aliases.fail(alias, "the name of a tensor entry, for a name that is not one itself")
            if target in codes:
                codes.add(alias)
    _activations(top, codes)
    return header
