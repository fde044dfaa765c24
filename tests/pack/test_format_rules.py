"""One test per rule of docs/FORMAT.md that a second reader could otherwise read two ways: each crafts the file
the rule is about (sections rebuilt, checksum and sizes made right, so the rule itself is what is tested) and
checks that torchshrink's reader refuses it in one line naming the field, or reads it, as the page says."""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pack import FormatError, encode_compressed, load_compressed, read_header
from torchshrink.pack.bitpack import pack_bits
from torchshrink.quant import QuantConfig
from torchshrink.quant.fake_quant import FakeQuant, QuantSpec
from torchshrink.recipes import ptq

Blobs = dict[str, dict[str, bytes]]  # tensor name -> section name -> bytes
File = tuple[dict[str, Any], Blobs]
ORDER = ("values", "scales", "codebook", "positions", "positions_table", "codes", "codes_table")
TARGET = "features.conv1.weight"  # cnn_tiny: shape [4, 1, 3, 3], 36 elements
SCALES = np.full(4, 0.125, dtype="<f4").tobytes()


def split(blob: bytes) -> File:
    """The header and every tensor's sections of a file with an uncompressed payload."""
    (n,) = struct.unpack("<Q", blob[8:16])
    head = blob[16 : 16 + n]
    header = json.loads(head if head[:1] == b"{" else zlib.decompress(head))
    assert header["compression"] == "none"
    raw = blob[16 + n :]
    blobs = {
        t["name"]: {k: raw[s["offset"] : s["offset"] + s["length"]] for k, s in t["sections"].items()}
        for t in header["tensors"]
    }
    return header, blobs


def assemble(file: File, after: Callable[[dict], object] | None = None, zlib_header: bool = False) -> bytes:
    """The file's bytes: sections laid out in header order, sizes and checksum right; ``after`` then changes
    the header (e.g. an offset) without the layout following it."""
    header, blobs = copy.deepcopy(file)
    raw = bytearray()
    for entry in header["tensors"]:
        own = blobs[entry["name"]]
        entry["sections"] = {}
        for key in sorted(own, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):  # unknown ones last
            entry["sections"][key] = {"offset": len(raw), "length": len(own[key])}
            raw += own[key]
    header.update(compression="none", payload_bytes=len(raw), raw_payload_bytes=len(raw),
                  payload_sha256=hashlib.sha256(raw).hexdigest())  # fmt: skip
    if after is not None:
        after(header)
    head = json.dumps(header).encode()
    head = zlib.compress(head) if zlib_header else head
    return b"TSHRINK\x00" + struct.pack("<Q", len(head)) + head + bytes(raw)


def entry(header: dict, name: str = TARGET) -> dict:
    return next(t for t in header["tensors"] if t["name"] == name)


def recoded(file: File, fields: dict[str, Any], sections: dict[str, bytes], name: str = TARGET) -> File:
    """``file`` with tensor ``name`` stored anew: ``fields`` beside its name and shape, and ``sections``."""
    header, blobs = copy.deepcopy(file)
    target = entry(header, name)
    for key in [k for k in target if k not in ("name", "shape")]:
        del target[key]
    target.update(fields)
    blobs[name] = dict(sections)
    return header, blobs


def uniform(stored: list[int], code_offset: int = -7, **more: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Fields and sections of a dense, packed 4-bit uniform TARGET holding the stored values ``stored``."""
    fields = {"encoding": "uniform", "bits": 4, "code_offset": code_offset, "scale_count": 4,
              "scale_dtype": "float32", "storage": "dense", "codes_coding": "packed", **more}  # fmt: skip
    return fields, {"scales": SCALES, "codes": pack_bits(np.array(stored), 4)}


def write(tmp_path: Path, blob: bytes, name: str = "f.tshrink") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def refusal(tmp_path: Path, blob: bytes, read: Callable[[Path], object] = load_compressed) -> str:
    """The one-line message of the FormatError ``read`` raises on ``blob``."""
    path = write(tmp_path, blob, "bad.tshrink")
    with pytest.raises(FormatError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def outputs(path: Path, model: nn.Module | None = None) -> torch.Tensor:
    torch.manual_seed(1)  # the same input for every file
    x = torch.randn(2, 1, 28, 28) if model is None else torch.randn(3, 8)
    with torch.no_grad():
        return load_compressed(path, model=model)(x)


@pytest.fixture(scope="module")
def seed() -> File:
    """cnn_tiny, 4-bit weights and inputs, packed streams (nothing version 1 lacks), uncompressed payload."""
    torch.manual_seed(0)
    model = ptq(build_model("cnn_tiny"), [torch.randn(16, 1, 28, 28)], QuantConfig(bits=4)).model
    blob, _ = encode_compressed(model, "cnn_tiny", None, "none", entropy=False)
    header, blobs = split(blob)
    assert header["activations"] and all(t.get("scale_dtype", "float32") == "float32" for t in header["tensors"])
    return header, blobs


def test_code_offset_is_the_narrow_or_the_full_range(seed, tmp_path):
    """Weight codes are signed, zero point 0: code_offset -7 or -8 at 4 bits, not -3 nor 0 ("unsigned")."""
    for offset in (-7, -8):
        outputs(write(tmp_path, assemble(recoded(seed, *uniform([7] * 36, offset)))))
    for offset in (-3, 0, -7.0):
        message = refusal(tmp_path, assemble(recoded(seed, *uniform([7] * 36, offset))))
        assert f"'{TARGET}'.code_offset is {offset}, expected -7 (narrow range) or -8 (full range)" in message


def test_the_writer_refuses_weight_codes_outside_the_two_ranges():
    """So that every file it writes stays readable: an unsigned (hand-made) weight quantizer is refused."""
    model = nn.Sequential(nn.Linear(4, 3))
    fq = FakeQuant(QuantSpec(bits=4, signed=False, symmetric=False), channels=3)
    fq.calibrate_from(model[0].weight.detach())
    fq.enabled = True
    parametrize.register_parametrization(model[0], "weight", fq)
    with pytest.raises(ConfigError, match="0.weight: its weight quantizer is unsigned and asymmetric"):
        encode_compressed(model)


def test_a_narrow_range_has_no_code_two_to_the_bits_minus_one(seed, tmp_path):
    """Stored value 15 at 4 bits is the code 8 with code_offset -7 (refused), the code 7 with -8 (read)."""
    message = refusal(tmp_path, assemble(recoded(seed, *uniform([15] + [7] * 35, -7))))
    assert f"tensor '{TARGET}': stored value 15 is the code 8, past 7" in message
    full = outputs(write(tmp_path, assemble(recoded(seed, *uniform([15] + [8] * 35, -8)))))
    assert torch.isfinite(full).all()


def _sparse(stored: list[int], fields: dict[str, Any], table: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A TARGET with every element stored sparse (bitmask all ones) at 4 bits."""
    fields = {**fields, "bits": 4, "storage": "sparse", "positions": "bitmask", "nonzeros": 36,
              "codes_coding": "packed"}  # fmt: skip
    key = "scales" if fields["encoding"] == "uniform" else "codebook"
    return fields, {key: table, "positions": b"\xff" * 4 + b"\x0f", "codes": pack_bits(np.array(stored), 4)}


def test_sparse_storage_holds_no_zero_code(seed, tmp_path):
    """Sparse storage omits exactly the zero codes: q == 0 (stored -code_offset) or k == 0 in codes is refused."""
    fields = {"encoding": "uniform", "code_offset": -7, "scale_count": 4}
    outputs(write(tmp_path, assemble(recoded(seed, *_sparse([8] * 36, fields, SCALES)))))
    message = refusal(tmp_path, assemble(recoded(seed, *_sparse([8] * 20 + [7] + [8] * 15, fields, SCALES))))
    assert f"tensor '{TARGET}': sparse code 20 is the zero code (stored value 7)" in message
    book = np.array([0.5, 0.0, -0.5], dtype="<f4").tobytes()  # an entry that is 0.0 is an index like any other
    fields = {"encoding": "codebook", "code_offset": 0, "codebook_size": 3}
    outputs(write(tmp_path, assemble(recoded(seed, *_sparse([2] * 36, fields, book)))))
    message = refusal(tmp_path, assemble(recoded(seed, *_sparse([1] * 35 + [0], fields, book))))
    assert f"tensor '{TARGET}': sparse code 35 is the zero code (stored value 0)" in message


def test_unknown_fields_are_ignored_misplaced_fields_and_unknown_sections_refused(seed, tmp_path):
    """A name FORMAT.md never defines is ignored at every level; a field it defines for another encoding or
    storage is refused; `sections` holds exactly the sections the entry calls for."""

    def unknown(header: dict) -> None:
        header["x-note"] = 1
        header["model"]["x-note"] = [1]
        for t in header["tensors"]:
            t["x-note"] = {"a": None}
            next(iter(t["sections"].values()))["x-note"] = "span"
        header["activations"][0]["x-note"] = True

    plain = write(tmp_path, assemble(seed), "plain.tshrink")
    assert torch.equal(outputs(plain), outputs(write(tmp_path, assemble(seed, unknown))))
    misplaced = [("features.conv1.bias", "bits", 4), (TARGET, "dtype", "float32"), (TARGET, "nonzeros", 36)]
    for name, key, value in misplaced:  # bits in a float entry, dtype in a uniform one, nonzeros in a dense one
        message = refusal(tmp_path, assemble(seed, lambda h, n=name, k=key, v=value: entry(h, n).update({k: v})))
        assert f"'{name}'.{key} is {value!r}, expected no {key} in a" in message
    header, blobs = copy.deepcopy(seed)
    blobs[TARGET]["x-extra"] = b""
    message = refusal(tmp_path, assemble((header, blobs)))
    assert f"'{TARGET}'.sections is " in message and "expected exactly the sections" in message


# a sparse TARGET of zeros only: its positions and codes are zero-length sections
EMPTY = {"encoding": "uniform", "bits": 4, "code_offset": -7, "scale_count": 4, "storage": "sparse",
         "positions": "delta", "gap_bits": 1, "gap_count": 0, "nonzeros": 0, "positions_coding": "packed",
         "codes_coding": "packed"}  # fmt: skip


def test_sections_follow_one_another_in_header_order(seed, tmp_path):
    """Each section starts where the one before it in header order ends, so a zero-length one has one place;
    the key order inside `sections` plays no part."""
    empty = recoded(seed, EMPTY, {"scales": SCALES, "positions": b"", "codes": b""})
    loaded = load_compressed(write(tmp_path, assemble(empty)))
    assert not loaded.features.conv1.weight.any()

    def reversed_keys(header: dict) -> None:
        for t in header["tensors"]:
            t["sections"] = dict(reversed(list(t["sections"].items())))

    outputs(write(tmp_path, assemble(empty, reversed_keys)))
    at_start = refusal(tmp_path, assemble(empty, lambda h: entry(h)["sections"]["codes"].update(offset=0)))
    assert f"'{TARGET}'.sections.codes.offset is 0, expected 16" in at_start
    swapped = refusal(tmp_path, assemble(seed, lambda h: h["tensors"].insert(0, h["tensors"].pop(1))))
    assert "tensors[0] 'features.conv1.bias'.sections.values.offset is 34, expected 0: it leaves a gap" in swapped


def test_a_huffman_stream_holds_one_symbol_at_least(seed, tmp_path):
    """A stream of 0 symbols is packed, with no table: a Huffman one (a table and no code) is refused."""
    table = pack_bits(np.array([0] * 7 + [1] + [0] * 8), 4)  # 16 lengths: symbol 7 has the code 0
    fields = EMPTY | {"codes_coding": "huffman"}
    message = refusal(tmp_path, assemble(recoded(seed, fields, {"scales": SCALES, "positions": b"", "codes": b"",
                                                                "codes_table": table})))  # fmt: skip
    assert f"'{TARGET}'.codes_coding is 'huffman', expected \"packed\" (or absent) for a stream of 0 symbols" in message


def _huffman(lengths: dict[int, int], data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A dense TARGET whose 36 codes are Huffman-coded with the given code lengths (symbol -> length)."""
    fields, sections = uniform([7] * 36, codes_coding="huffman")
    table = pack_bits(np.array([lengths.get(s, 0) for s in range(16)]), 4)
    return fields, sections | {"codes": data, "codes_table": table}


def test_huffman_tables_are_complete_codes(seed, tmp_path):
    """Kraft sum exactly 1, or one symbol of length 1 (what Huffman's construction gives); 36 zero bits read
    as 36 times symbol 7 under each table, but an incomplete one is refused."""
    zeros = bytes(5)  # 36 bits of the code 0
    outputs(write(tmp_path, assemble(recoded(seed, *_huffman({7: 1}, zeros)))))
    outputs(write(tmp_path, assemble(recoded(seed, *_huffman({7: 1, 8: 1}, zeros)))))
    for lengths in ({7: 1, 8: 2}, {7: 2}):  # sums 3/4 and 1/4: bit patterns that start no code
        message = refusal(tmp_path, assemble(recoded(seed, *_huffman(lengths, zeros))))
        assert f"tensor '{TARGET}': section codes (huffman): code lengths have a Kraft sum of" in message
        assert "expected exactly 1 (a complete prefix code) or a lone symbol of length 1" in message


def test_float_zero_points_are_read_in_every_version_and_fractions_refused(seed, tmp_path):
    """Writers of versions 1, 2 and 3 wrote the activation zero point as a float such as -3.0: read as -3 in
    every version (the file gives the same outputs), while -3.5 is refused in every version."""
    expected = outputs(write(tmp_path, assemble(seed), "int.tshrink"))
    assert all(type(a["zero_point"]) is int for a in seed[0]["activations"])
    for version in (1, 2, 3):

        def floats(header: dict, v: int = version, extra: float = 0.0) -> None:
            header["version"] = v
            for a in header["activations"]:
                a["zero_point"] = float(a["zero_point"]) + extra

        assert torch.equal(outputs(write(tmp_path, assemble(seed, floats))), expected)
        message = refusal(tmp_path, assemble(seed, lambda h, f=floats: f(h, extra=0.5)))
        assert "header field activations[0].zero_point is" in message and ".5, expected an integer in" in message


def test_an_activation_scale_is_exactly_a_float32(seed, tmp_path):
    """0.03 is no float32 value (float32 would round it): refused; float32(0.03) written exactly is read."""
    exact = float(np.float32(0.03))
    outputs(write(tmp_path, assemble(seed, lambda h: h["activations"][0].update(scale=exact))))
    message = refusal(tmp_path, assemble(seed, lambda h: h["activations"][0].update(scale=0.03)))
    assert "header field activations[0].scale is 0.03, expected a float32 value in" in message


def test_every_value_inside_args_counts_toward_64(seed, tmp_path):
    """Numbers, strings, booleans, nulls, lists and objects at any depth count one each; keys and args itself do
    not. Checked with the header, before anything is built."""

    def args(value: dict) -> bytes:
        return assemble(seed, lambda h: h["model"].update(args=value))

    for fits in ({"x": [1] * 63}, {f"k{i}": None for i in range(64)}, {"x": [[True]] * 31, "y": "s"}):  # 64 each
        read_header(write(tmp_path, args(fits)))
    for over in ({"x": [1] * 64}, {"x": [[]] * 70}, {"x": [{}] * 70}, {"x": [[[[[]]]]]}):
        message = refusal(tmp_path, args(over), read_header)
        assert "header field model.args is" in message and "at most 64 values in all" in message


def test_class_goes_with_a_null_name_and_args_with_a_registered_one(seed, tmp_path):
    """`model.class` beside a registered name and `model.args` beside a null name are refused."""
    message = refusal(tmp_path, assemble(seed, lambda h: h["model"].update({"class": "x.Y"})), read_header)
    assert "header field model.class is 'x.Y', expected no class beside a registered name" in message
    unregistered = {"name": None, "class": "x.Y", "batchnorm_folded": True}
    read_header(write(tmp_path, assemble(seed, lambda h: h.update(model=unregistered))))
    message = refusal(tmp_path, assemble(seed, lambda h: h.update(model=unregistered | {"args": {}})), read_header)
    assert "header field model.args is {}, expected no args for a model saved without a registered name" in message


def test_a_file_uses_no_feature_its_version_lacks(seed, tmp_path):
    """Version 1: no Huffman stream, no float16 scale or codebook, no zlib header; version 2: no aliases and no
    null model name. The same files as version 3 (2 for the zlib header) are read."""
    huffman = recoded(seed, *_huffman({7: 1}, bytes(5)))
    fields, sections = uniform([7] * 36, scale_dtype="float16")
    half = recoded(seed, fields, sections | {"scales": np.full(4, 0.125, dtype="<f2").tobytes()})
    cases = {"huffman": (huffman, False, "codes_coding is 'huffman', expected no \"huffman\" in a version 1 file"),
             "float16": (half, False, "scale_dtype is 'float16', expected no \"float16\" in a version 1 file"),
             "zlib header": (seed, True, "version is 1, expected 2, 3 or 4 for a zlib-compressed header")}  # fmt: skip
    for file, zlib_header, words in cases.values():
        outputs(write(tmp_path, assemble(file, zlib_header=zlib_header)))
        message = refusal(tmp_path, assemble(file, lambda h: h.update(version=1), zlib_header), read_header)
        assert words in message
    aliased = refusal(tmp_path, assemble(seed, lambda h: h.update(version=2, aliases={})), read_header)
    assert "aliases is {}, expected no aliases in a version 2 file" in aliased
    unnamed = {"name": None, "class": "x.Y", "batchnorm_folded": True}
    message = refusal(tmp_path, assemble(seed, lambda h: h.update(version=2, model=unnamed)), read_header)
    assert "header field model.name is None, expected a registered architecture's name" in message


def test_joins_come_with_version_4_with_two_checked_operands_and_must_match_the_forward(seed, tmp_path):
    """``joins`` in a version-3 file, a join of one operand, an operand scale that is no float32: refused. A
    version-4 file whose joins the model's forward does not make is refused when the model runs."""
    operand = {"bits": 8, "signed": True, "symmetric": False, "scale": 0.25, "zero_point": 0}
    join = {"at": "(model): add", "operands": [operand, operand]}
    message = refusal(tmp_path, assemble(seed, lambda h: h.update(joins=[join])), read_header)
    assert "header field joins is" in message and "expected no joins in a version 3 file" in message
    one = {"at": "x", "operands": [operand]}
    message = refusal(tmp_path, assemble(seed, lambda h: h.update(version=4, joins=[one])), read_header)
    assert "header field joins[0].operands is" in message and "two or more quantizers" in message
    inexact = {"at": "x", "operands": [operand, operand | {"scale": 0.03}]}
    message = refusal(tmp_path, assemble(seed, lambda h: h.update(version=4, joins=[inexact])), read_header)
    assert "header field joins[0].operands[1].scale is 0.03, expected a float32 value" in message
    path = write(tmp_path, assemble(seed, lambda h: h.update(version=4, joins=[join])), "joins.tshrink")
    assert read_header(path)["joins"] == [join]
    with pytest.raises(ConfigError, match="set up for 1"):
        outputs(path)  # cnn_tiny makes no join: never run with the file's join left out


def test_a_codebook_has_one_entry_at_least(seed, tmp_path):
    """codebook_size 0 (every index 0: a tensor of zeros) is refused; 1 entry is read."""
    fields = {"encoding": "codebook", "bits": 2, "code_offset": 0, "storage": "dense", "codes_coding": "packed"}
    codes = pack_bits(np.zeros(36), 2)
    one = recoded(seed, fields | {"codebook_size": 1}, {"codebook": np.ones(1, "<f4").tobytes(), "codes": codes})
    outputs(write(tmp_path, assemble(one)))
    empty = recoded(seed, fields | {"codebook_size": 0}, {"codebook": b"", "codes": codes})
    message = refusal(tmp_path, assemble(empty))
    assert f"'{TARGET}'.codebook_size is 0, expected an integer in [1, 3] for 2 bits" in message


class Twice(nn.Module):
    """One Linear reached under two names (`enc` and `dec`): its tensors are stored once, aliased once."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.dec = self.enc
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.dec(torch.relu(self.enc(x)))))


def test_a_module_reached_under_two_names_has_one_input_quantizer(tmp_path):
    """The writer names it once (by its first name); a reader takes either name, and refuses a second entry for
    the same module."""
    torch.manual_seed(0)
    model = ptq(Twice(), [torch.randn(16, 8)], QuantConfig(bits=4)).model
    blob, header = encode_compressed(model, None, None, "none")
    assert [a["layer"] for a in header["activations"]] == ["enc", "out"] and header["aliases"]
    file = split(blob)
    expected = outputs(write(tmp_path, blob), Twice())
    renamed = assemble(file, lambda h: h["activations"][0].update(layer="dec"))
    assert torch.equal(outputs(write(tmp_path, renamed), Twice()), expected)
    twice = assemble(file, lambda h: h["activations"].append(h["activations"][0] | {"layer": "dec"}))
    message = refusal(tmp_path, twice, lambda p: load_compressed(p, model=Twice()))
    assert "header field activations[2].layer is 'dec', the module 'enc' names too, expected one entry" in message
