"""A second reader of the .tshrink format, written from docs/FORMAT.md alone (plain Python + numpy, no
torchshrink.pack code), decodes files written by torchshrink and must agree with the model."""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from torchshrink.models import build_model
from torchshrink.pack import save_compressed
from torchshrink.pruning import make_permanent, prune_
from torchshrink.quant import QuantConfig, ptq
from torchshrink.train import TrainConfig, fit


def read_bits(blob: bytes, width: int, count: int) -> list[int]:
    out = []
    for i in range(count):
        v = 0
        for j in range(width):
            s = i * width + j
            v |= ((blob[s // 8] >> (s % 8)) & 1) << j
        out.append(v)
    return out


def independent_read(data: bytes) -> dict[str, np.ndarray]:
    assert data[:8] == b"TSHRINK\x00"
    (h,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16 : 16 + h].decode("utf-8"))
    assert header["format"] == "torchshrink" and header["version"] == 1
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
            dt = "<f4" if t["dtype"] == "float32" else "<f2"
            out[t["name"]] = np.frombuffer(sec["values"], dtype=dt).astype(np.float32).reshape(t["shape"])
            continue
        if t["storage"] == "dense":
            stored = read_bits(sec["codes"], t["bits"], n)
        else:
            if t["positions"] == "bitmask":
                where = [i for i in range(n) if (sec["positions"][i // 8] >> (i % 8)) & 1]
            else:
                where, cursor, filler = [], 0, 2 ** t["gap_bits"] - 1
                for g in read_bits(sec["positions"], t["gap_bits"], t["gap_count"]):
                    if g == filler:
                        cursor += g
                    else:
                        where.append(cursor + g)
                        cursor += g + 1
            values = read_bits(sec["codes"], t["bits"], len(where))
            zero = -t["code_offset"] if t["encoding"] == "uniform" else 0
            stored = [zero] * n
            for i, v in zip(where, values, strict=True):
                stored[i] = v
        codes = np.array(stored, dtype=np.int64) + t["code_offset"]
        if t["encoding"] == "uniform":
            scales = np.frombuffer(sec["scales"], dtype="<f4")
            per = scales if t["scale_count"] > 1 else np.repeat(scales, t["shape"][0])
            w = codes.reshape(t["shape"][0], -1).astype(np.float32) * per[:, None]
        else:
            book = np.concatenate([[0.0], np.frombuffer(sec["codebook"], dtype="<f4")]).astype(np.float32)
            w = book[codes]
        out[t["name"]] = w.reshape(t["shape"])
    return out


@pytest.mark.parametrize("bits, sparsity, compression", [(4, 0.0, "none"), (3, 0.85, "lzma"), (2, 0.5, "zlib")])
def test_independent_reader_agrees_with_the_model(small, tmp_path, bits, sparsity, compression):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small.subset(train=500), TrainConfig(epochs=1, lr=0.05, batch_size=64), "cpu", progress=False, log=None)
    if sparsity:
        prune_(model, sparsity)
        make_permanent(model)
    q = ptq(model, small, QuantConfig(bits=bits))
    path = tmp_path / "m.tshrink"
    save_compressed(q, path, "cnn_tiny", compression=compression)
    tensors = independent_read(path.read_bytes())
    modules = dict(q.named_modules())
    for name, array in tensors.items():
        owner, _, leaf = name.rpartition(".")
        expected = getattr(modules[owner], leaf).detach().numpy()
        assert np.allclose(array, expected, atol=1e-7), name
