from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchshrink.models import build_model
from torchshrink.pack import FormatError, inspect_compressed, load_compressed, read_compressed, save_compressed
from torchshrink.pack.bitpack import pack_bits, packed_size, unpack_bits
from torchshrink.pack.huffman import canonical_codes, code_lengths, encoded_bits, huffman_decode, huffman_encode
from torchshrink.pack.sparse import decode_positions, encode_positions, gap_codes
from torchshrink.pack.streams import decode_stream, encode_stream
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import QuantConfig, snap_floats_
from torchshrink.recipes import TrainConfig, codebook, evaluate, fit, ptq, qat
from torchshrink.recipes.quantize import CodebookConfig


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 8), data=st.data())
def test_bit_packing_round_trips_for_every_width(width, data):
    """pack -> unpack is the identity for any width 1..8 and any length, at exactly ceil(n*w/8) bytes."""
    values = np.array(data.draw(st.lists(st.integers(0, 2**width - 1), max_size=300)), dtype=np.uint8)
    packed = pack_bits(values, width)
    assert len(packed) == packed_size(values.size, width)
    assert np.array_equal(unpack_bits(packed, width, values.size), values)


def _decode(pos, n):
    return decode_positions(pos.method, pos.stream.data, n, pos.gap_bits, pos.entries, pos.stream.coding,
                            pos.stream.table)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(flags=st.lists(st.booleans(), max_size=400), density=st.floats(0, 1), entropy=st.booleans())
def test_position_encodings_round_trip(flags, density, entropy):
    """Every position encoding decodes to exactly the non-zero indices, and none is larger than the bitmask."""
    rng = np.random.default_rng(len(flags))
    mask = np.array(flags, dtype=bool) & (rng.random(len(flags)) < density)
    pos = encode_positions(mask, entropy)
    assert np.array_equal(_decode(pos, mask.size), np.flatnonzero(mask))
    assert pos.size <= packed_size(mask.size, 1)


def test_long_gaps_use_fillers():
    mask = np.zeros(5000, dtype=bool)
    mask[[0, 4000, 4999]] = True
    pos = encode_positions(mask, entropy=False)
    assert pos.method == "delta" and pos.size < 5000 / 8
    assert _decode(pos, 5000).tolist() == [0, 4000, 4999]


def test_gap_codes_match_a_plain_loop():
    positions = np.array([0, 3, 40, 41, 300])
    expected = []
    for g in np.diff(np.concatenate([[-1], positions])) - 1:
        while g >= 15:
            expected.append(15)
            g -= 15
        expected.append(g)
    assert gap_codes(positions, 4).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 8), data=st.data())
def test_huffman_round_trips_and_never_beats_the_entropy(width, data):
    """Decode(encode(x)) == x for any symbols of any width; the code is a prefix code no shorter than the
    order-0 entropy and within one bit per symbol of it (when no length limit applies)."""
    symbols = np.array(data.draw(st.lists(st.integers(0, 2**width - 1), max_size=500)), dtype=np.int64)
    lengths, blob = huffman_encode(symbols, 2**width)
    assert np.array_equal(huffman_decode(lengths, blob, symbols.size), symbols)
    if symbols.size:
        assert np.sum(2.0 ** -lengths[lengths > 0]) <= 1.0
        p = np.bincount(symbols) / symbols.size
        entropy = -np.sum(p[p > 0] * np.log2(p[p > 0])) * symbols.size
        used = encoded_bits(symbols, lengths)
        assert used >= entropy - 1e-6 and len(blob) == -(-used // 8)
        if lengths.max() < 15:
            assert used <= entropy + symbols.size + 1e-6


def test_huffman_matches_the_documented_example():
    """docs/FORMAT.md: lengths A=1, B=2, C=2 -> codes 0, 10, 11; B A C is the single byte 0x19."""
    assert canonical_codes(np.array([1, 2, 2])).tolist() == [0b0, 0b10, 0b11]
    lengths, blob = huffman_encode(np.array([1, 0, 2, 0]), 3)  # A twice: A=1 bit
    assert lengths.tolist() == [1, 2, 2]
    assert huffman_decode(np.array([1, 2, 2]), bytes([0x19]), 3).tolist() == [1, 0, 2]


def test_huffman_limits_code_lengths_and_rejects_bad_streams():
    counts = np.array([2**i for i in range(40)], dtype=np.int64)  # Fibonacci-like skew wants 39-bit codes
    lengths = code_lengths(counts)
    assert lengths.max() <= 15 and np.sum(2.0**-lengths) <= 1.0
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes(np.array([1, 1, 1]))
    with pytest.raises(ValueError):
        huffman_decode(np.array([1, 2, 2]), b"", 5)  # stream too short for its count
    with pytest.raises(ValueError, match="not a code"):
        huffman_decode(np.array([2, 2, 0, 0]), bytes([0xFF]), 3)  # 11 is no code of {00, 01}


def test_streams_keep_the_smaller_coding():
    rng = np.random.default_rng(0)
    skewed = np.minimum(rng.geometric(0.5, 5000) - 1, 15)
    uniform = rng.integers(0, 16, 5000)
    assert encode_stream(skewed, 4).coding == "huffman"
    assert encode_stream(uniform, 4).coding == "packed"
    assert encode_stream(skewed, 4, entropy=False).coding == "packed"
    for values in (skewed, uniform):
        s = encode_stream(values, 4)
        assert np.array_equal(decode_stream(s.coding, s.data, s.table, 4, values.size), values)


@pytest.fixture(scope="module")
def trained(small_task):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small_task, TrainConfig(epochs=2, lr=0.05), progress=False, log=None)
    return model.eval()


def _predictions_equal(a, b, small):
    x = (small.test_x.float() / 255 - 0.2860) / 0.3530
    with torch.no_grad():
        la, lb = a(x), b(x)
    assert torch.equal(la.argmax(1), lb.argmax(1))
    assert float((la - lb).abs().max()) <= 1e-5


@pytest.mark.parametrize("bits, sparsity", [(8, 0.0), (4, 0.5), (2, 0.9), (6, 0.7)])
def test_save_load_gives_identical_predictions(trained, small, small_task, tmp_path, bits, sparsity):
    model = copy.deepcopy(trained)
    if sparsity:
        prune_(model, PruneConfig(sparsity))
        make_permanent(model)
    q = ptq(model, small_task, QuantConfig(bits=bits)).model
    path = tmp_path / "m.tshrink"
    save_compressed(q, path, "cnn_tiny")
    loaded = load_compressed(path)
    _predictions_equal(q, loaded, small)
    _, rows = inspect_compressed(path)
    weights = [r for r in rows if r.name.endswith("weight")]
    assert all(r.bits == bits or r.name in () for r in weights)
    if sparsity:
        total = sum(np.prod(r.shape) for r in weights)
        zeros = sum(r.sparsity * np.prod(r.shape) for r in weights)
        assert zeros / total >= sparsity - 1e-3  # sparsity survives export
    assert not list(tmp_path.glob(".*tmp"))


def test_sparsity_survives_qat_and_the_file_is_small(trained, small, small_task, tmp_path):
    model = copy.deepcopy(trained)
    prune_(model, PruneConfig(0.8))
    make_permanent(model)
    q = qat(model, small_task, QuantConfig(bits=4), train=TrainConfig(epochs=1, lr=0.01), log=None, progress=False).model
    path = tmp_path / "m.tshrink"
    header = save_compressed(q, path, "cnn_tiny")
    _predictions_equal(q, load_compressed(path), small)
    _, rows = inspect_compressed(path)
    weights = [r for r in rows if r.encoding == "uniform"]
    codes = sum(r.bytes - 4 * r.shape[0] for r in weights)  # minus the per-channel float32 scales
    dense = sum(np.prod(r.shape) * 4 / 8 for r in weights)
    # 20% non-zero codes plus their positions take well under half of dense 4-bit storage
    assert codes < 0.5 * dense
    assert all(r.storage == "sparse" for r in weights if np.prod(r.shape) > 1000)
    assert header["compression"] in ("none", "zlib", "lzma")


def test_codebook_round_trip_and_shared_gradient(trained, small, small_task, tmp_path):
    model = copy.deepcopy(trained)
    prune_(model, PruneConfig(0.5))
    make_permanent(model)
    q = codebook(model, small_task, CodebookConfig(3, act_bits=8), train=TrainConfig(epochs=1, lr=0.005), log=None).model
    layer = q.features.conv2
    values = torch.unique(layer.weight)
    assert values.numel() <= 2**3  # 7 shared values and the pruned zero
    assert snap_floats_(q) > 0  # biases and centroids rounded to float16 values
    path = tmp_path / "cb.tshrink"
    header = save_compressed(q, path, "cnn_tiny")
    _predictions_equal(q, load_compressed(path), small)
    dtypes = {t.get("dtype") or t.get("codebook_dtype") for t in header["tensors"]}
    assert dtypes == {"float16"}  # every float survived the rounding exactly, so the file keeps half the bytes
    acc, _ = evaluate(q, small.test_batches())
    assert acc > 0.5


def _with_plain_header(blob: bytes, change) -> bytes:
    """The file with its header decoded, changed, and stored back as plain JSON."""
    (n,) = struct.unpack("<Q", blob[8:16])
    head = blob[16 : 16 + n]
    header = json.loads(head if head[:1] == b"{" else zlib.decompress(head))
    new = json.dumps(change(header)).encode()
    return blob[:8] + struct.pack("<Q", len(new)) + new + blob[16 + n :]


def test_strict_reader_rejects_bad_files(trained, small_task, tmp_path):
    q = ptq(trained, small_task, QuantConfig(bits=4)).model
    path = tmp_path / "m.tshrink"
    save_compressed(q, path, "cnn_tiny", compression="none")
    good = path.read_bytes()
    cases = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "magic": b"XXXXXXXX" + good[8:],
        "huge header": good[:8] + (2**40).to_bytes(8, "little") + good[16:],
        "flipped payload": good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:],
        "version": _with_plain_header(good, lambda h: h | {"version": 7}),
    }
    messages = {}
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.tshrink"
        bad.write_bytes(blob)
        with pytest.raises(FormatError) as info:
            load_compressed(bad)
        messages[name] = str(info.value)
    assert "empty" in messages["empty"] and "truncated" in messages["truncated"]
    assert "magic" in messages["magic"] and "limit" in messages["huge header"]
    assert "checksum" in messages["flipped payload"] and "version 7" in messages["version"]
    with pytest.raises(FormatError, match="cannot read"):
        read_compressed(tmp_path / "missing.tshrink")


def test_plain_and_compressed_headers_read_alike(trained, small_task, tmp_path):
    q = ptq(trained, small_task, QuantConfig(bits=4)).model
    path = tmp_path / "m.tshrink"
    save_compressed(q, path, "cnn_tiny")
    blob = path.read_bytes()
    assert blob[16:17] != b"{"  # the header compresses, so it is stored as a zlib stream
    plain = tmp_path / "plain.tshrink"
    plain.write_bytes(_with_plain_header(blob, lambda h: h))
    a, b = load_compressed(path), load_compressed(plain)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_centroid_gradient_is_the_mean_of_its_weights_gradients():
    from torchshrink.quant import Codebook

    w = torch.tensor([0.0, 1.0, 1.1, 0.9, -2.0, -2.1])
    cb = Codebook(w, bits=2)
    out = cb(w)
    grads = torch.tensor([5.0, 1.0, 2.0, 3.0, 4.0, 6.0])
    (out * grads).sum().backward()
    table = torch.cat([torch.zeros(1), cb.centroids.detach()])
    assert torch.allclose(table[cb.indices], torch.tensor([0.0, 1.0, 1.0, 1.0, -2.05, -2.05]), atol=1e-6)
    members = {int(k): grads[cb.indices == k].mean() for k in cb.indices.unique() if k > 0}
    for k, mean in members.items():
        assert torch.isclose(cb.centroids.grad[k - 1], mean)


def test_centroid_gradient_is_a_serial_sum_the_same_every_run():
    """The shared gradient is summed in one fixed order (a parallel scatter-add summed in a different order
    from run to run, so the same fine-tuning ended a few ULPs apart)."""
    from torchshrink.quant import Codebook

    torch.manual_seed(0)
    w = torch.randn(256, 1024)
    cb = Codebook(w, bits=4)
    grads = torch.randn(256, 1024)
    runs = []
    for _ in range(4):
        cb.centroids.grad = None
        (cb(w) * grads).sum().backward()
        runs.append(cb.centroids.grad.clone())
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    serial = torch.bincount(cb.indices.flatten(), weights=grads.flatten(), minlength=16)[1:] * cb.inverse_counts
    assert torch.equal(runs[0], serial)


DATA = Path(__file__).parents[1] / "fixtures"


def test_version_2_file_still_loads_with_the_same_predictions():
    """tests/fixtures/v2_cnn_tiny_4bit.tshrink was written by the version-2 writer (cnn_tiny, random weights and
    BatchNorm statistics, weight-only 4-bit PTQ); the .json beside it holds the logits that writer's loader gave."""
    header, _ = read_compressed(DATA / "v2_cnn_tiny_4bit.tshrink")
    assert header["version"] == 2 and "aliases" not in header
    expected = json.loads((DATA / "v2_cnn_tiny_4bit.json").read_text())
    steps = torch.arange(8 * 784, dtype=torch.float32).reshape(8, 1, 28, 28)
    x = torch.sin(steps * torch.linspace(0.1, 1.5, 8).reshape(8, 1, 1, 1)) * 2  # the .json's "input"
    with torch.no_grad():
        logits = load_compressed(DATA / "v2_cnn_tiny_4bit.tshrink")(x)
    assert logits.argmax(1).tolist() == expected["argmax"] and len(set(expected["argmax"])) > 1
    assert torch.allclose(logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-5)
