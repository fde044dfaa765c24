"""A second reader and a writer of the .tshrink format, written from docs/FORMAT.md alone (plain Python + numpy,
no torchshrink.pack code): the reader decodes files written by torchshrink and must agree with the model; files
the writer makes (with only the fields the document requires) must load into the model it describes."""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchshrink.models import build_model
from torchshrink.pack import load_compressed, save_compressed
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import QuantConfig, fold_batchnorm, quantize_, snap_floats_
from torchshrink.recipes import TrainConfig, codebook, fit, ptq
from torchshrink.recipes.quantize import CodebookConfig

FLOAT = {"float32": "<f4", "float16": "<f2"}


def read_bits(blob: bytes, width: int, count: int) -> list[int]:
    out = []
    for i in range(count):
        v = 0
        for j in range(width):
            s = i * width + j
            v |= ((blob[s // 8] >> (s % 8)) & 1) << j
        out.append(v)
    return out


def huffman_symbols(table: bytes, width: int, blob: bytes, count: int) -> list[int]:
    """Canonical Huffman, decoded bit by bit with a dictionary from (length, code) to symbol."""
    lengths = read_bits(table, 4, 2**width)
    order = sorted((n, s) for s, n in enumerate(lengths) if n)
    codes, code, previous = {}, 0, order[0][0]
    for n, s in order:
        code <<= n - previous
        codes[(n, code)] = s
        code, previous = code + 1, n
    out, cursor = [], 0
    for _ in range(count):
        n, value = 0, 0
        while (n, value) not in codes:
            value = (value << 1) | ((blob[cursor // 8] >> (cursor % 8)) & 1)
            n, cursor = n + 1, cursor + 1
        out.append(codes[(n, value)])
    return out


def read_stream(t: dict, sec: dict, name: str, width: int, count: int) -> list[int]:
    if t.get(f"{name}_coding", "packed") == "huffman":
        return huffman_symbols(sec[f"{name}_table"], width, sec[name], count)
    return read_bits(sec[name], width, count)


def independent_read(data: bytes) -> dict[str, np.ndarray]:
    assert data[:8] == b"TSHRINK\x00"
    (h,) = struct.unpack("<Q", data[8:16])
    head = data[16 : 16 + h]
    header = json.loads((head if head[:1] == b"{" else zlib.decompress(head)).decode("utf-8"))
    assert header["format"] == "torchshrink" and header["version"] in (1, 2, 3, 4)
    payload = data[16 + h :]
    assert len(payload) == header["payload_bytes"]
    assert hashlib.sha256(payload).hexdigest() == header["payload_sha256"]
    raw = {"none": lambda b: b, "zlib": zlib.decompress, "lzma": lzma.decompress}[header["compression"]](payload)
    assert len(raw) == header["raw_payload_bytes"]
    out = {}
    for t in header["tensors"]:
        sec = {k: raw[v["offset"] : v["offset"] + v["length"]] for k, v in t["sections"].items()}
        n = math.prod(t["shape"])
        if t["encoding"] == "float":
            out[t["name"]] = (
                np.frombuffer(sec["values"], dtype=FLOAT[t["dtype"]]).astype(np.float32).reshape(t["shape"])
            )
            continue
        if t["storage"] == "dense":
            stored = read_stream(t, sec, "codes", t["bits"], n)
        else:
            if t["positions"] == "bitmask":
                where = [i for i in range(n) if (sec["positions"][i // 8] >> (i % 8)) & 1]
            else:
                where, cursor, filler = [], 0, 2 ** t["gap_bits"] - 1
                for g in read_stream(t, sec, "positions", t["gap_bits"], t["gap_count"]):
                    if g == filler:
                        cursor += g
                    else:
                        where.append(cursor + g)
                        cursor += g + 1
            values = read_stream(t, sec, "codes", t["bits"], len(where))
            zero = -t["code_offset"] if t["encoding"] == "uniform" else 0
            stored = [zero] * n
            for i, v in zip(where, values, strict=True):
                stored[i] = v
        codes = np.array(stored, dtype=np.int64) + t["code_offset"]
        if t["encoding"] == "uniform":
            scales = np.frombuffer(sec["scales"], dtype=FLOAT[t.get("scale_dtype", "float32")]).astype(np.float32)
            per = scales if t["scale_count"] > 1 else np.repeat(scales, t["shape"][0])
            w = codes.reshape(t["shape"][0], -1).astype(np.float32) * per[:, None]
        else:
            centroids = np.frombuffer(sec["codebook"], dtype=FLOAT[t.get("codebook_dtype", "float32")])
            book = np.concatenate([[0.0], centroids.astype(np.float32)]).astype(np.float32)
            w = book[codes]
        out[t["name"]] = w.reshape(t["shape"])
    for alias, target in header.get("aliases", {}).items():  # tied tensors: stored once, under the target
        assert target in out and alias not in out
        out[alias] = out[target]
    return out


@pytest.mark.parametrize("bits, sparsity, compression, shared", [
    (4, 0.0, "none", False), (3, 0.85, "lzma", False), (2, 0.5, "zlib", False), (4, 0.9, "none", True),
])  # fmt: skip
def test_independent_reader_agrees_with_the_model(small, tmp_path, bits, sparsity, compression, shared):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small.subset(train=500).task(batch_size=64), TrainConfig(epochs=1, lr=0.05), progress=False,
        log=None)  # fmt: skip
    if sparsity:
        prune_(model, PruneConfig(sparsity))
        make_permanent(model)
    if shared:
        q = codebook(model, small.task(), CodebookConfig(bits, act_bits=8), log=None, train=None).model
        snap_floats_(q)  # float16 biases and centroids
    else:
        q = ptq(model, small.task(), QuantConfig(bits=bits)).model
    path = tmp_path / "m.tshrink"
    header = save_compressed(q, path, "cnn_tiny", compression=compression)
    if shared:
        codings = {t.get(k) for t in header["tensors"] for k in ("codes_coding", "positions_coding")}
        assert "huffman" in codings and any(t.get("codebook_dtype") == "float16" for t in header["tensors"])
    tensors = independent_read(path.read_bytes())
    modules = dict(q.named_modules())
    for name, array in tensors.items():
        owner, _, leaf = name.rpartition(".")
        expected = getattr(modules[owner], leaf).detach().numpy()
        assert np.allclose(array, expected, atol=1e-7), name


class TinyLM(nn.Module):
    """Embedding -> Linear -> ReLU -> output layer that shares the embedding's weight (tied)."""

    def __init__(self, vocab: int = 40, dim: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(tokens))))  # (B, T) -> (B, T, vocab)


@pytest.mark.filterwarnings("ignore:quantize_ left:UserWarning")  # the embedding stays float on purpose
def test_independent_reader_reads_aliases_of_an_unregistered_model(tmp_path):
    torch.manual_seed(0)
    model = quantize_(TinyLM(), QuantConfig(bits=4, quantize_inputs=False), lambda m, name: name == "mix")
    path = tmp_path / "lm.tshrink"
    save_compressed(model, path, compression="lzma")
    tensors = independent_read(path.read_bytes())
    assert sorted(tensors) == ["embed.weight", "head.weight", "mix.bias", "mix.weight"]
    assert np.array_equal(tensors["head.weight"], model.embed.weight.detach().numpy())
    assert np.allclose(tensors["mix.weight"], model.mix.weight.detach().numpy(), atol=1e-7)


def fake_quant(x: np.ndarray, q: dict) -> np.ndarray:
    """An input (or join operand) quantizer as the page states it: ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``."""
    bits, s, z = q["bits"], np.float32(q["scale"]), int(q["zero_point"])
    if not q["signed"]:
        lo, hi = 0, 2**bits - 1
    else:
        lo, hi = -(2 ** (bits - 1)) + int(q["symmetric"]), 2 ** (bits - 1) - 1
    return ((np.clip(np.round(x / s) + z, lo, hi) - z) * s).astype(np.float32)


class Residual(nn.Module):
    """``head(relu(b(relu(a(x))) + x))``: one residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x))) + x))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_independent_reader_runs_a_residual_model_with_quantized_joins(tmp_path):
    """A version-4 file: the join's operands are rounded by its quantizers, in the order of the forward."""
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    q = ptq(Residual().eval(), [x], QuantConfig(bits=4, act_bits=8, quantize_joins=True)).model
    path = tmp_path / "residual.tshrink"
    save_compressed(q, path)
    data = path.read_bytes()
    (h,) = struct.unpack("<Q", data[8:16])
    head = data[16 : 16 + h]
    header = json.loads((head if head[:1] == b"{" else zlib.decompress(head)).decode("utf-8"))
    w = independent_read(data)
    inputs = {a["layer"]: a for a in header["activations"]}
    (join,) = header["joins"]

    def linear(name: str, v: np.ndarray) -> np.ndarray:
        return fake_quant(v, inputs[name]) @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    xs = x.numpy()
    branch = linear("b", np.maximum(linear("a", xs), 0))
    joined = fake_quant(branch, join["operands"][0]) + fake_quant(xs, join["operands"][1])
    expected = linear("head", np.maximum(joined, 0))
    with torch.no_grad():
        got = load_compressed(path, Residual())(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    without = linear("head", np.maximum(branch + xs, 0))
    assert np.abs(got - without).max() > 1e-3 * np.abs(expected).max(), "the join quantizers change the result"


def test_independent_reader_reads_the_version_2_fixture():
    path = Path(__file__).parents[1] / "fixtures" / "v2_cnn_tiny_4bit.tshrink"
    tensors = independent_read(path.read_bytes())
    state = load_compressed(path).state_dict()
    assert sorted(tensors) == sorted(state)
    for name, array in tensors.items():
        assert np.array_equal(array, state[name].numpy()), name


def write_bits(values: list[int], width: int) -> bytes:
    out = bytearray(-(-len(values) * width // 8))
    for i, v in enumerate(values):
        for j in range(width):
            s = i * width + j
            out[s // 8] |= ((v >> j) & 1) << (s % 8)
    return bytes(out)


def delta_gaps(where: list[int], width: int) -> list[int]:
    codes, cursor, filler = [], 0, 2**width - 1
    for p in where:
        g = p - cursor
        while g >= filler:
            codes.append(filler)
            g -= filler
        codes.append(g)
        cursor = p + 1
    return codes


def independent_write(
    model: dict, entries: list[tuple[dict, dict]], activations: list[dict], compression: str
) -> bytes:
    """A file with exactly the fields the document asks for, the header as plain JSON in another key order."""
    raw, tensors = bytearray(), []
    for meta, sections in entries:
        spans = {}
        for key, blob in sections.items():
            spans[key] = {"offset": len(raw), "length": len(blob)}
            raw += blob
        tensors.append({"sections": spans, **meta})
    payload = {"none": bytes, "zlib": zlib.compress, "lzma": lzma.compress}[compression](bytes(raw))
    header = {"activations": activations, "tensors": tensors, "payload_sha256": hashlib.sha256(payload).hexdigest(),
              "raw_payload_bytes": len(raw), "payload_bytes": len(payload), "compression": compression, "model": model,
              "version": 3, "format": "torchshrink"}  # fmt: skip
    head = json.dumps(header).encode()
    return b"TSHRINK\x00" + struct.pack("<Q", len(head)) + head + payload


def _coded(name: str, shape: list[int], q: np.ndarray, storage: str, extra: dict, sections: dict) -> tuple[dict, dict]:
    """A code tensor: stored values v = q - code_offset (or k), dense, or sparse with bitmask / delta positions."""
    meta = {"name": name, "shape": shape, **extra, "storage": "dense" if storage == "dense" else "sparse"}
    stored = (q.reshape(-1) - extra["code_offset"]).tolist()
    if storage == "dense":
        return meta, {**sections, "codes": write_bits(stored, extra["bits"])}
    where = np.flatnonzero(q.reshape(-1)).tolist()
    values = [stored[i] for i in where]
    meta |= {"nonzeros": len(where), "positions": storage}  # bitmask: no gap_bits, gap_count or positions_coding
    if storage == "bitmask":
        hit = set(where)
        flags = [int(i in hit) for i in range(q.size)]
        positions = write_bits(flags, 1)
    else:
        gaps = delta_gaps(where, 3)
        meta |= {"gap_bits": 3, "gap_count": len(gaps)}
        positions = write_bits(gaps, 3)
    return meta, {**sections, "positions": positions, "codes": write_bits(values, extra["bits"])}


@pytest.mark.parametrize("compression", ["none", "zlib", "lzma"])
def test_files_written_from_the_document_load(tmp_path, compression):
    """Uniform (dense, bitmask, delta), codebook and float16 / float32 tensors plus input quantizers, written from
    docs/FORMAT.md alone, load into cnn_tiny with exactly the values the document defines."""
    rng = np.random.default_rng(0)
    shapes = {k: list(t.shape) for k, t in fold_batchnorm(build_model("cnn_tiny")).state_dict().items()}
    layouts = iter(["dense", "bitmask", "delta", "codebook", "dense"])
    entries, expected = [], {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            dtype = "float16" if name.startswith("classifier") else "float32"
            values = rng.normal(size=shape).astype(FLOAT[dtype])
            entries.append(({"name": name, "shape": shape, "encoding": "float", "dtype": dtype},
                            {"values": values.tobytes()}))  # fmt: skip
            expected[name] = values.astype(np.float32)
            continue
        layout = next(layouts)
        q = rng.integers(-7, 8, size=shape) * (rng.random(shape) < 0.4)  # 4-bit narrow-range codes, 60% zero
        if layout == "codebook":
            k = rng.integers(0, 8, size=shape) * (rng.random(shape) < 0.4)
            book = rng.normal(size=7).astype("<f2")
            extra = {
                "encoding": "codebook",
                "bits": 3,
                "code_offset": 0,
                "codebook_size": 7,
                "codebook_dtype": "float16",
            }
            entries.append(_coded(name, shape, k, "bitmask", extra, {"codebook": book.tobytes()}))
            expected[name] = np.concatenate([[0], book.astype(np.float32)]).astype(np.float32)[k]
            continue
        count = 1 if name == "classifier.fc2.weight" else shape[0]  # one scale for the whole tensor, or per channel
        scales = (rng.random(count) + 0.01).astype("<f4")
        extra = {"encoding": "uniform", "bits": 4, "code_offset": -7, "scale_count": count}
        entries.append(_coded(name, shape, q, layout, extra, {"scales": scales.tobytes()}))
        per = scales if count > 1 else np.repeat(scales, shape[0])
        expected[name] = (q.reshape(shape[0], -1).astype(np.float32) * per[:, None]).reshape(shape)
    scale = float(np.float32(0.03))  # a scale is a float32 value, written exactly
    activations = [
        {"layer": "features.conv1", "bits": 8, "signed": True, "symmetric": False, "scale": scale, "zero_point": -3},
        {"layer": "features.conv2", "bits": 4, "signed": False, "symmetric": True, "scale": 0.25, "zero_point": 0},
    ]
    model = {"name": "cnn_tiny", "batchnorm_folded": True}
    blob = independent_write(model, entries, activations, compression)
    path = tmp_path / "doc.tshrink"
    path.write_bytes(blob)
    loaded = load_compressed(path)
    state = loaded.state_dict()
    assert sorted(k for k in state if ".input_quant." not in k) == sorted(expected)  # the quantizers' own state
    for name, values in expected.items():
        assert np.array_equal(state[name].numpy(), values), name
        assert np.array_equal(independent_read(blob)[name], values), name
    assert float(loaded.features.conv1.input_quant.zero_point[0]) == -3.0
    assert float(loaded.features.conv2.input_quant.scale[0]) == pytest.approx(0.25)
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.randn(2, 1, 28, 28))).all()
