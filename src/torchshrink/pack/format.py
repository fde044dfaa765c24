"""The ``.tshrink`` byte layout: assemble a file, and take one apart without trusting it. See ``docs/FORMAT.md``.

Layout: 8-byte magic ``TSHRINK\\x00``, an unsigned 64-bit little-endian header length ``H``, ``H`` bytes of
header (UTF-8 JSON, or a zlib stream of it when that is smaller), then the payload. The payload is the
concatenation of every tensor's byte sections, optionally compressed as a whole (``lzma`` or ``zlib``); the
header's offsets point into the *decompressed* payload, and ``payload_sha256`` checks the payload as stored.

Reading is split so that nothing a header declares is allocated before the header is checked: the preamble
(:func:`header_length`), the header bytes (:func:`parse_header`; the schema is :mod:`torchshrink.pack.schema`),
then the payload (:func:`open_payload`), which never inflates past the size the checked header declares.
Every refusal is a :class:`FormatError`; callers add the file name.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchshrink.errors import TorchshrinkError

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_HEADER",
    "MAX_ELEMENTS",
    "MAX_PAYLOAD",
    "FormatError",
    "TensorRecord",
    "encode_file",
    "header_length",
    "parse_header",
    "open_payload",
    "float_bytes",
    "float_values",
    "shown",
]

MAGIC = b"TSHRINK\x00"
FORMAT_NAME = "torchshrink"
# 2 added Huffman-coded streams, float16 scales / centroids and the zlib-compressed header;
# 3 added "aliases" (tied tensors stored once) and unregistered models (model.name null, model.class)
# 4 added "joins" (quantizers on the inputs of residual adds and concatenations); the writer writes version 3
# for a file without them, so such a file reads in every reader of version 3
VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
MAX_HEADER = 16 << 20  # stored or inflated: ~50,000 tensor entries, and JSON parsing stays well under a second
MAX_ELEMENTS = 1 << 28  # per file: bounds every tensor the reader builds (1 GiB as float32)
MAX_PAYLOAD = 1 << 30  # stored or inflated: 2**28 float32 values, the most a file of MAX_ELEMENTS can need
# The writer compresses with preset 9e (a 64 MiB dictionary); a stream asking for more memory is not ours.
LZMA_MEMLIMIT = 128 << 20


class FormatError(TorchshrinkError):
    """A compressed model file is empty, truncated, corrupt, inconsistent, or of another format or version."""


@dataclass
class TensorRecord:
    """One tensor in the file: its header entry (``meta``) and its byte sections, in order."""

    name: str
    meta: dict[str, Any]
    sections: dict[str, bytes] = field(default_factory=dict)


def shown(value: Any, limit: int = 60, quote: bool = True) -> str:
    """A value from a file for a one-line message: ``repr`` (a string unquoted if not ``quote``), control
    characters escaped, cut short."""
    try:
        text = value if isinstance(value, str) and not quote else repr(value)
    except RecursionError:  # JSON may nest ~1000 deep; repr, called deeper in the stack, may not get that far
        return f"a {type(value).__name__} nested too deep to show"
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def encode_file(model: dict[str, Any], tensors: list[TensorRecord], compression: str = "auto",
                extra: dict[str, Any] | None = None) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """Assemble the file bytes. ``compression`` is ``none``, ``zlib``, ``lzma`` or ``auto`` (smallest).

    Returns the bytes and the header that was written.
    """
    raw = bytearray()
    entries = []
    for t in tensors:
        sections = {}
        for key, blob in t.sections.items():
            sections[key] = {"offset": len(raw), "length": len(blob)}
            raw += blob
        entries.append({"name": t.name, **t.meta, "sections": sections})
    raw = bytes(raw)
    candidates = {"none": raw}
    if compression in ("auto", "zlib"):
        candidates["zlib"] = zlib.compress(raw, 9)
    if compression in ("auto", "lzma"):
        candidates["lzma"] = lzma.compress(raw, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if compression not in ("auto", *candidates):
        raise ValueError(f"compression {compression!r}: choose none, zlib, lzma or auto")
    chosen = min(candidates, key=lambda k: len(candidates[k])) if compression == "auto" else compression
    payload = candidates[chosen]
    header = {
        "format": FORMAT_NAME,
        "version": VERSION if "joins" in (extra or {}) else 3,
        "model": model,
        "compression": chosen,
        "payload_bytes": len(payload),
        "raw_payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "tensors": entries,
        **(extra or {}),
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    packed_head = zlib.compress(head, 9)
    if len(packed_head) < len(head):
        head = packed_head  # a zlib stream never starts with "{", so a reader can tell the two apart
    return MAGIC + struct.pack("<Q", len(head)) + head + payload, header


def header_length(preamble: bytes, file_size: int) -> int:
    """``H`` from the first 16 bytes of a file of ``file_size`` bytes, checked against the file and the limit."""
    if file_size == 0:
        raise FormatError("empty file, expected a torchshrink file")
    if len(preamble) < 16:
        raise FormatError(f"truncated: {len(preamble)} bytes is shorter than the 16-byte preamble")
    if preamble[:8] != MAGIC:
        raise FormatError(f"not a torchshrink file (wrong magic bytes {shown(preamble[:8])}, expected {MAGIC!r})")
    (head_len,) = struct.unpack("<Q", preamble[8:16])
    if head_len > MAX_HEADER:
        raise FormatError(f"header length {head_len} exceeds the {MAX_HEADER}-byte limit")
    if 16 + head_len > file_size:
        raise FormatError(f"truncated: header length {head_len} but only {file_size - 16} bytes follow the preamble")
    return head_len


def _no_constant(name: str) -> Any:
    raise FormatError(f"header holds {name}, which is not JSON: expected finite numbers only")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # json keeps the last silently: a second "version" could hide behind the first
            raise FormatError(f"header has a JSON object with the key {shown(key)} twice, expected unique keys")
        out[key] = value
    return out


def _inflate_header(stream: bytes) -> bytes:
    """Inflate a zlib header 1 MiB at a time, stopping past ``MAX_HEADER``: a small stream may inflate to
    gigabytes, and one call with that limit would hold the limit twice over while its buffer grows."""
    d, out = zlib.decompressobj(), bytearray()
    try:
        while not d.eof and len(out) <= MAX_HEADER:
            chunk = d.decompress(stream, 1 << 20)
            stream = d.unconsumed_tail
            if not chunk and not stream:
                break  # no input left and no output pending: the stream ends early
            out += chunk
    except zlib.error as exc:
        raise FormatError(f"header is neither JSON nor a zlib stream ({exc})") from None
    if len(out) > MAX_HEADER:
        raise FormatError(f"compressed header inflates past the {MAX_HEADER}-byte limit")
    if not d.eof or d.unused_data:
        raise FormatError("compressed header is truncated or followed by extra bytes, expected one zlib stream")
    return bytes(out)


def parse_header(head: bytes) -> Any:
    """The JSON value of the stored header (plain, or a zlib stream inflated to at most ``MAX_HEADER``).

    Strict JSON: no ``NaN``/``Infinity``, no key twice in one object. (An integer of over 4300 digits is
    refused by Python itself; the schema refuses any integer out of its field's range.)
    """
    if head[:1] != b"{":
        head = _inflate_header(head)
    try:
        return json.loads(head.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(f"header is not valid UTF-8 JSON ({type(exc).__name__}: {shown(str(exc), 80)})") from None


def _inflate(payload: bytes, compression: str, raw_len: int) -> bytes:
    """Decompress, stopping one byte past the declared size: a bomb costs ``raw_len`` bytes, no more."""
    try:
        if compression == "zlib":
            z = zlib.decompressobj()
            raw = z.decompress(payload, raw_len + 1)
            whole = z.eof and not z.unused_data and not z.unconsumed_tail
        else:
            x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
            raw = x.decompress(payload, max_length=raw_len + 1)
            whole = x.eof and not x.unused_data
    except (zlib.error, lzma.LZMAError) as exc:
        raise FormatError(f"payload is no valid {compression} stream ({exc})") from None
    if len(raw) > raw_len:
        raise FormatError(f"payload inflates past raw_payload_bytes {raw_len}, expected exactly that many bytes")
    if len(raw) < raw_len:
        raise FormatError(f"payload inflates to {len(raw)} bytes, expected raw_payload_bytes {raw_len}")
    if not whole:
        raise FormatError(f"payload {compression} stream does not end after {raw_len} bytes, or has bytes after it")
    return raw


def open_payload(header: dict[str, Any], payload: bytes) -> list[TensorRecord]:
    """Verify the stored payload against a checked header, decompress it (bounded) and cut out every section.

    ``header`` must have passed :func:`torchshrink.pack.schema.check_header`: its sections tile
    ``raw_payload_bytes`` exactly, so the slices below are the whole payload, each byte once.
    """
    if len(payload) != header["payload_bytes"]:
        raise FormatError(f"payload is {len(payload)} bytes, expected payload_bytes {header['payload_bytes']}")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise FormatError("payload checksum mismatch: payload_sha256 differs from the bytes (corrupt file)")
    compression, raw_len = header["compression"], header["raw_payload_bytes"]
    raw = payload if compression == "none" else _inflate(payload, compression, raw_len)
    records = []
    for entry in header["tensors"]:
        blobs = {key: raw[s["offset"] : s["offset"] + s["length"]] for key, s in entry["sections"].items()}
        meta = {k: v for k, v in entry.items() if k not in ("name", "sections")}
        records.append(TensorRecord(entry["name"], meta, blobs))
    return records


def float_bytes(values: np.ndarray, dtype: str) -> bytes:
    """Little-endian float16/float32 bytes."""
    return np.asarray(values, dtype="<f2" if dtype == "float16" else "<f4").tobytes()


def float_values(blob: bytes, dtype: str, count: int) -> np.ndarray:
    """Inverse of :func:`float_bytes`, as float32 (:class:`FormatError` if ``blob`` has the wrong length)."""
    size = 2 if dtype == "float16" else 4
    if dtype not in ("float16", "float32") or len(blob) != size * count:
        raise FormatError(f"{len(blob)} bytes are not {count} {dtype} values")
    return np.frombuffer(blob, dtype="<f2" if dtype == "float16" else "<f4").astype(np.float32)
