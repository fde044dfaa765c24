"""The ``.tshrink`` compressed model file: write and read, strictly. Specified in ``docs/FORMAT.md``.

Layout: 8-byte magic ``TSHRINK\\x00``, an unsigned 64-bit little-endian header length ``H``, ``H`` bytes of
header (UTF-8 JSON, or a zlib stream of it when that is smaller), then the payload. The payload is the
concatenation of every tensor's byte sections, optionally compressed as a whole (``lzma`` or ``zlib``); the header's offsets point into the *decompressed*
payload, and ``payload_sha256`` checks the payload bytes as stored. Version 3 adds ``aliases`` (tied tensors
stored once) and models saved without a registered name (``model.name`` null, ``model.class`` informational).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchshrink.errors import TorchshrinkError

__all__ = [
    "MAGIC",
    "VERSION",
    "FormatError",
    "TensorRecord",
    "encode_file",
    "decode_file",
    "MAX_HEADER",
    "MAX_ELEMENTS",
]

MAGIC = b"TSHRINK\x00"
FORMAT_NAME = "torchshrink"
# 2 added Huffman-coded streams, float16 scales / centroids and the zlib-compressed header;
# 3 added "aliases" (tied tensors stored once) and unregistered models (model.name null, model.class)
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAX_HEADER = 16 << 20  # a header larger than 16 MiB is refused before it is read
MAX_ELEMENTS = 1 << 28  # per tensor, and in total: bounds every allocation driven by the header
MAX_PAYLOAD = 1 << 31


class FormatError(TorchshrinkError):
    """A compressed model file is empty, truncated, corrupt, or of another format or version."""


@dataclass
class TensorRecord:
    """One tensor in the file: its header entry (``meta``) and its byte sections, in order."""

    name: str
    meta: dict[str, Any]
    sections: dict[str, bytes] = field(default_factory=dict)


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
        "version": VERSION,
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


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise FormatError(message)


def _int(entry: dict[str, Any], key: str, low: int = 0, high: int = MAX_PAYLOAD) -> int:
    value = entry.get(key)
    _need(isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
          f"header field {key!r} of {entry.get('name', '?')!r} is {value!r}, expected an integer in [{low}, {high}]")  # fmt: skip
    return value


def decode_file(data: bytes) -> tuple[dict[str, Any], list[TensorRecord]]:
    """Parse and verify file bytes; return the header and every tensor's sections (decompressed).

    Raises :class:`FormatError`, and only that, for anything that is not a valid file.
    """
    try:
        return _decode(data)
    except FormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError, RecursionError,
            lzma.LZMAError, zlib.error, UnicodeDecodeError, MemoryError) as exc:  # fmt: skip
        raise FormatError(f"malformed file ({type(exc).__name__}: {exc})") from exc


def _decode(data: bytes) -> tuple[dict[str, Any], list[TensorRecord]]:
    _need(len(data) > 0, "empty file")
    _need(len(data) >= 16, f"truncated: {len(data)} bytes is shorter than the 16-byte preamble")
    _need(data[:8] == MAGIC, "not a torchshrink file (wrong magic bytes)")
    (head_len,) = struct.unpack("<Q", data[8:16])
    _need(head_len <= MAX_HEADER, f"header length {head_len} exceeds the {MAX_HEADER}-byte limit")
    _need(16 + head_len <= len(data), f"truncated: header of {head_len} bytes but only {len(data) - 16} follow")
    head = data[16 : 16 + head_len]
    if head[:1] != b"{":
        try:
            d = zlib.decompressobj()
            head = d.decompress(head, MAX_HEADER + 1)  # bounded, like the payload
        except zlib.error as exc:
            raise FormatError(f"header is neither JSON nor a zlib stream ({exc})") from exc
        _need(len(head) <= MAX_HEADER and d.eof, "compressed header is truncated or too large")
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"header is not valid JSON ({exc})") from exc
    _need(isinstance(header, dict), "header is not a JSON object")
    _need(header.get("format") == FORMAT_NAME, f"format {header.get('format')!r} is not {FORMAT_NAME!r}")
    _need(header.get("version") in READABLE_VERSIONS,
          f"format version {header.get('version')!r} is not supported (this reader knows {READABLE_VERSIONS})")  # fmt: skip
    payload = data[16 + head_len :]
    _need(len(payload) == _int(header, "payload_bytes"),
          f"payload is {len(payload)} bytes, header says {header.get('payload_bytes')} (truncated or padded)")  # fmt: skip
    _need(hashlib.sha256(payload).hexdigest() == header.get("payload_sha256"), "payload checksum mismatch (corrupt)")
    raw_len = _int(header, "raw_payload_bytes")
    compression = header.get("compression")
    if compression == "none":
        raw = payload
    elif compression == "zlib":
        d = zlib.decompressobj()
        raw = d.decompress(payload, raw_len + 1)  # bounded: never more than the declared size (+1 to detect)
    elif compression == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        raw = d.decompress(payload, max_length=raw_len + 1)
    else:
        raise FormatError(f"unknown compression {compression!r}")
    _need(len(raw) == raw_len, f"decompressed payload is {len(raw)} bytes, header says {raw_len}")
    entries = header.get("tensors")
    _need(isinstance(entries, list), "header field 'tensors' is not a list")
    records, total, names = [], 0, set()
    for entry in entries:
        _need(isinstance(entry, dict) and isinstance(entry.get("name"), str), "a tensor entry has no name")
        _need(entry["name"] not in names, f"tensor {entry['name']!r} appears twice")
        names.add(entry["name"])
        shape = entry.get("shape")
        _need(isinstance(shape, list) and len(shape) <= 8 and all(isinstance(s, int) and not isinstance(s, bool)
              and 0 <= s <= MAX_ELEMENTS for s in shape), f"tensor {entry['name']!r}: invalid shape {shape!r}")  # fmt: skip
        numel = math.prod(shape)
        total += numel
        _need(numel <= MAX_ELEMENTS and total <= MAX_ELEMENTS, f"tensor {entry['name']!r}: too many elements")
        sections = entry.get("sections")
        _need(isinstance(sections, dict), f"tensor {entry['name']!r}: 'sections' is not an object")
        blobs = {}
        for key, span in sections.items():
            _need(isinstance(span, dict), f"tensor {entry['name']!r}: section {key!r} is not an object")
            offset, length = _int(span, "offset", 0, raw_len), _int(span, "length", 0, raw_len)
            _need(offset + length <= raw_len, f"tensor {entry['name']!r}: section {key!r} runs past the payload")
            blobs[key] = raw[offset : offset + length]
        meta = {k: v for k, v in entry.items() if k not in ("name", "sections")}
        records.append(TensorRecord(entry["name"], meta, blobs))
    aliases = header.get("aliases", {})
    _need(isinstance(aliases, dict), "header field 'aliases' is not an object")
    for alias, target in aliases.items():
        _need(isinstance(target, str) and target in names,
              f"alias {alias!r} points to {target!r}, which is no tensor of the file")  # fmt: skip
        _need(alias not in names, f"alias {alias!r} is also the name of a tensor")
    return header, records


def float_bytes(values: np.ndarray, dtype: str) -> bytes:
    """Little-endian float16/float32 bytes."""
    return np.asarray(values, dtype="<f2" if dtype == "float16" else "<f4").tobytes()


def float_values(blob: bytes, dtype: str, count: int) -> np.ndarray:
    """Inverse of :func:`float_bytes` (``ValueError`` if ``blob`` has the wrong length)."""
    size = 2 if dtype == "float16" else 4
    if dtype not in ("float16", "float32") or len(blob) != size * count:
        raise ValueError(f"{len(blob)} bytes are not {count} {dtype} values")
    return np.frombuffer(blob, dtype="<f2" if dtype == "float16" else "<f4").astype(np.float32)
