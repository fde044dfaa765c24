"""The ``.tshrink`` header checked against its schema before anything it describes is read or allocated.

One hand-written pass over the decoded JSON (no schema library): every field's presence, type and range,
then the facts that tie fields together, as ``docs/FORMAT.md`` states them. Integers are JSON integers
(``2.0`` is no version); a section's length follows from the counts and widths next to it (a packed stream of
``count`` ``w``-bit values is exactly ``ceil(count * w / 8)`` bytes); the sections of all tensors follow one
another in header order, covering the decompressed payload with no gap and no overlap (as safetensors
checks); names are unique; aliases point to stored tensors; a field defined for another encoding, storage or
model kind, or a feature the file's version lacks, is refused, while a field defined nowhere is ignored. Afterwards every size the reader allocates or decompresses is a function of checked
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
MAX_ARGS = 64  # values in all: numbers, strings, booleans, nulls, lists and objects, at any depth
MAX_ARGS_DEPTH = 4  # the object itself, then lists of lists of values (cnn's channels: [[32, 32], 64])
_SHA = frozenset("0123456789abcdef")
# The fields docs/FORMAT.md defines for a tensor entry, by what calls for them. A name defined here but not
# called for by the entry's encoding and storage is refused (the entry contradicts itself, and inspect would
# show it); a name defined nowhere is ignored, so that a later writer may add information.
_COMMON_FIELDS = frozenset({"name", "shape", "encoding", "sections"})
_ENCODING_FIELDS = {
    "float": frozenset({"dtype"}),
    "uniform": frozenset({"bits", "code_offset", "scale_count", "scale_dtype", "storage", "codes_coding"}),
    "codebook": frozenset({"bits", "code_offset", "codebook_size", "codebook_dtype", "storage", "codes_coding"}),
}
# a bitmask entry keeps the delta fields: the writer writes gap_bits 0, gap_count N and positions_coding packed
_SPARSE_FIELDS = frozenset({"nonzeros", "positions", "gap_bits", "gap_count", "positions_coding"})
_DEFINED_FIELDS = _COMMON_FIELDS.union(*_ENCODING_FIELDS.values(), _SPARSE_FIELDS)
# what version 2 added to a tensor entry (the third addition, the zlib header, is checked in check_header)
_VERSION_2_VALUES = {"codes_coding": "huffman", "positions_coding": "huffman", "scale_dtype": "float16",
                     "codebook_dtype": "float16"}  # fmt: skip


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
    if count == 0:
        # no symbol, no code: a table would be read by nothing and checked by nothing, so an empty stream has none
        raise t.fail(f"{key}_coding", '"packed" (or absent) for a stream of 0 symbols: a Huffman stream holds one at '
                     "least")  # fmt: skip
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


def _uniform(t: _Fields, shape: list[int], bits: int) -> dict[str, tuple[int, int]]:
    """The fields of a ``uniform`` entry beside its codes; returns the length range of its ``scales``."""
    # weight codes are signed with zero point 0: the narrow range [-(2**(b-1)) + 1, 2**(b-1) - 1] or the full
    # signed range, and code_offset, the range's most negative code, is all that tells them apart
    full = -(1 << (bits - 1))
    offset = t.value.get("code_offset")
    if not (type(offset) is int and offset in (full + 1, full)):  # type(): neither true nor -7.0
        raise t.fail("code_offset", f"{full + 1} (narrow range) or {full} (full range) for {bits} bits")
    channels = shape[0] if shape else 1
    count = t.integer("scale_count", 1, max(channels, 1), f"1 or the size of axis 0 ({channels})")
    if count not in (1, channels):
        raise t.fail("scale_count", f"1 or the size of axis 0 ({channels})")
    size = FLOAT_SIZES[t.choice("scale_dtype", FLOAT_SIZES, default="float32")]
    return {"scales": (count * size, count * size)}


def _codebook(t: _Fields, bits: int) -> dict[str, tuple[int, int]]:
    """The fields of a ``codebook`` entry beside its indices; returns the length range of its ``codebook``."""
    # index 0 is the pruned zero, so a b-bit index names at most 2**b - 1 entries, stored from 0
    t.integer("code_offset", 0, 0, "0 (codebook indices are stored as they are)")
    # an empty codebook could only say "every weight is zero", which no writer stores as a codebook
    count = t.integer("codebook_size", 1, (1 << bits) - 1, f"an integer in [1, {(1 << bits) - 1}] for {bits} bits")
    size = FLOAT_SIZES[t.choice("codebook_dtype", FLOAT_SIZES, default="float32")]
    return {"codebook": (count * size, count * size)}


def _codes(t: _Fields, shape: list[int], numel: int, encoding: str) -> dict[str, tuple[int, int]]:
    """The fields of a ``uniform`` or ``codebook`` entry; returns its sections' length ranges, in layout order."""
    bits = t.integer("bits", 1, 8)
    need = _uniform(t, shape, bits) if encoding == "uniform" else _codebook(t, bits)
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


def _no_stray_fields(t: _Fields, encoding: str) -> None:
    """Refuse a field docs/FORMAT.md defines for another encoding or storage (``dtype`` in a uniform entry)."""
    allowed = _COMMON_FIELDS | _ENCODING_FIELDS[encoding]
    if t.value.get("storage") == "sparse":
        allowed |= _SPARSE_FIELDS
    stray = sorted((t.value.keys() & _DEFINED_FIELDS) - allowed)
    if stray:
        kind = f"{t.value.get('storage')} {encoding}" if encoding != "float" else encoding
        raise t.fail(stray[0], f"no {stray[0]} in a {kind} entry (a field of another encoding or storage)")


def _no_version_2_values(t: _Fields) -> None:
    """Refuse, in a version 1 file, the Huffman streams and float16 scales or codebooks version 2 added."""
    for key, value in _VERSION_2_VALUES.items():
        if t.value.get(key) == value:
            raise t.fail(key, f'no "{value}" in a version 1 file (it came with version 2)')


def _tensor(t: _Fields, raw_len: int, version: int) -> tuple[str, int, list[tuple[int, int, str]]]:
    """Check one tensor entry; returns its name, element count and ``(offset, length, field)`` spans, in the
    order its sections are laid out."""
    name = t.string("name")
    t.path = f"{t.path} {shown(name)}"
    shape, numel = _shape(t)
    encoding = t.choice("encoding", ("float", "uniform", "codebook"))
    if encoding == "float":
        size = numel * FLOAT_SIZES[t.choice("dtype", FLOAT_SIZES)]
        need = {"values": (size, size)}
    else:
        need = _codes(t, shape, numel, encoding)
    _no_stray_fields(t, encoding)
    if version == 1:
        _no_version_2_values(t)
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


def _layout(spans: list[tuple[int, int, str]], raw_len: int) -> None:
    """Sections follow one another in header order from the payload's start: a gap hides bytes, an overlap
    makes two tensors share them, and with any order but one a zero-length section would have no defined place."""
    cursor, before = 0, "the payload's start"
    for offset, length, where in spans:
        if offset != cursor:
            problem = "leaves a gap after" if offset > cursor else "starts before the end of"
            raise FormatError(f"header field {where}.offset is {offset}, expected {cursor}: it {problem} {before} "
                              "(sections follow one another in header order, each byte once)")  # fmt: skip
        cursor, before = cursor + length, where
    if cursor != raw_len:
        raise FormatError(f"header field raw_payload_bytes is {raw_len}, expected {cursor} (the sections' total)")


def _args_size(value: Any) -> tuple[int, int]:
    """Values below a JSON value (each number, string, boolean, null, list and object at any depth; keys do not
    count) and its depth, counting stopped just past ``MAX_ARGS``. Containers count too: a list of a million
    empty lists is as costly to hand a constructor as a million numbers. Iterative, so that a value nested as
    deep as the parser allows costs no recursion here."""
    count, depth, stack = -1, 0, [(value, 0)]  # -1: the value itself is not counted
    while stack and count <= MAX_ARGS:
        item, level = stack.pop()
        count, depth = count + 1, max(depth, level)
        if isinstance(item, (dict, list)):
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return count, depth


def _registered(model: _Fields) -> None:
    """The fields beside a registered ``model.name``: its ``args`` (optional), and no ``class``."""
    if "class" in model.value:
        raise model.fail("class", "no class beside a registered name (the name says what the model is)")
    count, depth = _args_size(model.child("args").value) if "args" in model.value else (0, 0)
    if count > MAX_ARGS or depth > MAX_ARGS_DEPTH:
        raise model.fail("args", f"constructor arguments of at most {MAX_ARGS} values in all (lists and objects "
                         f"included), nested at most {MAX_ARGS_DEPTH} deep")  # fmt: skip


def _model(top: _Fields, version: int) -> None:
    model = top.child("model")
    name = model.value.get("name", ...)
    if name is None and version >= 3:
        model.string("class")  # informational only: never imported
        if "args" in model.value:  # constructor arguments of no architecture: nothing could use them
            raise model.fail("args", "no args for a model saved without a registered name")
    elif isinstance(name, str) and name:
        _registered(model)
    else:
        raise model.fail("name", "a registered architecture's name" + (" or null" if version >= 3 else ""))
    if model.value.get("batchnorm_folded") is not True:
        raise model.fail("batchnorm_folded", "true (BatchNorm folded before saving)")


def _is_float32(value: Any) -> bool:
    """Whether a JSON number is exactly a float32 value (a double that float32 would round is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= FLOAT32_MAX:
        return False
    return struct.unpack("<f", struct.pack("<f", value))[0] == value


def _quantizer(a: _Fields) -> None:
    """Check the fields of one activation quantizer: ``bits``, ``signed``, ``symmetric``, ``scale``, ``zero_point``."""
    bits, signed, symmetric = a.integer("bits", 2, 8), a.boolean("signed"), a.boolean("symmetric")
    scale = a.value.get("scale")
    # the quantizer holds float32, and the writer writes its value exactly: any other double would be rounded
    # to a scale the file does not state (or to 0, or to inf)
    if not (_is_float32(scale) and SCALE_FLOOR <= scale <= FLOAT32_MAX):
        raise a.fail("scale", f"a float32 value in [{SCALE_FLOOR!r}, {FLOAT32_MAX:.9g}], exactly")
    low = -(1 << (bits - 1)) + int(symmetric) if signed else 0
    high = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    zero = a.value.get("zero_point")
    # writers of all three versions wrote it as a float such as -55.0 until 0.1.0's reader hardening: integral
    # floats are read as those integers, in any version, so that no file written then becomes unreadable
    if isinstance(zero, float) and zero.is_integer():
        zero = int(zero)
    if not (isinstance(zero, int) and not isinstance(zero, bool) and low <= zero <= high):
        raise a.fail("zero_point", f"an integer in [{low}, {high}] for this {bits}-bit quantizer")


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
        _quantizer(a)


def _joins(top: _Fields, version: int) -> None:
    """Check ``joins`` (version 4): one entry per join, each with two or more operand quantizers."""
    if "joins" not in top.value:
        return
    if version < 4:
        raise top.fail("joins", f"no joins in a version {version} file (they came with version 4)")
    for i, value in enumerate(top.array("joins")):
        join = _Fields(value, f"joins[{i}]")
        operands = join.array("operands")
        if len(operands) < 2:
            raise join.fail("operands", "two or more quantizers, one per operand of the add or concatenation")
        for k, operand in enumerate(operands):
            _quantizer(_Fields(operand, f"joins[{i}].operands[{k}]"))


def _tensors(top: _Fields, raw_len: int, version: int) -> tuple[set[str], set[str]]:
    """Check every tensor entry and the payload's layout; returns the names stored and those of coded tensors."""
    names: set[str] = set()
    codes: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    total = 0
    for i, value in enumerate(top.array("tensors")):
        name, numel, more = _tensor(_Fields(value, f"tensors[{i}]"), raw_len, version)
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
    _layout(spans, raw_len)
    return names, codes


def _aliases(top: _Fields, version: int, names: set[str], codes: set[str]) -> None:
    """Check ``aliases`` (version 3); an alias of a coded tensor joins ``codes``."""
    if "aliases" not in top.value:
        return
    if version < 3:
        raise top.fail("aliases", f"no aliases in a version {version} file (they came with version 3)")
    aliases = top.child("aliases")
    for alias, target in aliases.value.items():
        if alias in names or not isinstance(target, str) or target not in names:
            raise aliases.fail(alias, "the name of a tensor entry, for a name that is not one itself")
        if target in codes:
            codes.add(alias)


def check_header(header: Any, compressed: bool = False) -> dict[str, Any]:
    """Check a decoded header against the schema of ``docs/FORMAT.md``; return it unchanged. ``compressed``:
    the header was stored as a zlib stream (which version 1 has not).

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
    version = top.integer("version", 1, READABLE_VERSIONS[-1], "an integer: 1, 2, 3 or 4")
    if compressed and version == 1:
        raise top.fail("version", "2, 3 or 4 for a zlib-compressed header (version 1 headers are plain JSON)")
    _model(top, version)
    compression = top.choice("compression", ("none", "zlib", "lzma"))
    stored = top.integer("payload_bytes", 0, MAX_PAYLOAD)
    raw_len = top.integer("raw_payload_bytes", 0, MAX_PAYLOAD)
    if compression == "none" and stored != raw_len:
        raise top.fail("raw_payload_bytes", f"payload_bytes ({stored}) for an uncompressed payload")
    digest = top.value.get("payload_sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _SHA):
        raise top.fail("payload_sha256", "64 lowercase hex digits")
    names, codes = _tensors(top, raw_len, version)
    _aliases(top, version, names, codes)
    _activations(top, codes)
    _joins(top, version)
    return header
