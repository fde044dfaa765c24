"""Save a fake-quantized (and possibly pruned) model to a ``.tshrink`` file and load it back into a runnable
model whose predictions equal the model it was saved from.

Quantized weights are stored as integer codes at exactly their width or Huffman-coded (dense, or only the
non-zero codes plus their positions, whichever is smaller) with per-channel scales, or as codebook indices
plus a codebook. Floats (biases, scales, centroids) are float16 where that is exact, else float32.
BatchNorm is folded before quantization, so the file holds no BatchNorm. The input quantizers' parameters travel in the header.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink._io import atomic_write_bytes
from torchshrink.errors import TorchshrinkError
from torchshrink.models import MODELS, build_model
from torchshrink.pack.format import (
    MAX_ELEMENTS,
    FormatError,
    TensorRecord,
    decode_file,
    encode_file,
    float_bytes,
    float_values,
)
from torchshrink.pack.sparse import decode_positions, encode_positions
from torchshrink.pack.streams import Stream, decode_stream, encode_stream
from torchshrink.quant.apply import _quantize_input_hook, input_quantizer, quantized_layers
from torchshrink.quant.export import export_layers
from torchshrink.quant.fake_quant import FakeQuant, QuantSpec
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.sharing import codebook_layers

__all__ = [
    "save_compressed",
    "encode_compressed",
    "load_compressed",
    "read_compressed",
    "TensorSummary",
    "inspect_compressed",
    "encoded_weight_bytes",
]

FILE_LIMIT = 1 << 31


def _codes_record(name: str, codes: np.ndarray, shape: list[int], bits: int, offset: int,
                  extra_meta: dict[str, Any], extra_sections: dict[str, bytes], entropy: bool) -> TensorRecord:  # fmt: skip
    """Encode codes (``codes - offset`` is stored, non-negative): dense or sparse, whichever is smaller.

    A zero weight has code 0 (uniform) or index 0 (codebook); sparse storage omits those.
    """
    flat = codes.reshape(-1).astype(np.int64)
    meta = {"shape": shape, "bits": bits, "code_offset": offset, **extra_meta}
    dense = encode_stream(flat - offset, bits, entropy)
    nonzero = flat != 0
    pos = encode_positions(nonzero, entropy)
    sparse = encode_stream(flat[nonzero] - offset, bits, entropy)
    if pos.size + sparse.size < dense.size:
        meta |= {"storage": "sparse", "positions": pos.method, "gap_bits": pos.gap_bits, "gap_count": pos.entries,
                 "positions_coding": pos.stream.coding, "nonzeros": int(nonzero.sum()), "codes_coding": sparse.coding}  # fmt: skip
        sections = {**extra_sections, **_stream_sections("positions", pos.stream), **_stream_sections("codes", sparse)}
        return TensorRecord(name, meta, sections)
    meta |= {"storage": "dense", "codes_coding": dense.coding}
    return TensorRecord(name, meta, {**extra_sections, **_stream_sections("codes", dense)})


def encoded_weight_bytes(codes: np.ndarray, bits: int, entropy: bool = True) -> int:
    """Bytes the file spends on these weight codes (0 = zero weight): codes and positions, as written."""
    record = _codes_record("w", codes, list(codes.shape), bits, 0, {}, {}, entropy)
    return sum(len(b) for b in record.sections.values())


def _stream_sections(key: str, stream: Stream) -> dict[str, bytes]:
    return {key: stream.data, f"{key}_table": stream.table} if stream.coding == "huffman" else {key: stream.data}


def _float_dtype(values: np.ndarray) -> str:
    """``float16`` when every value survives the round trip exactly (storage never changes a value)."""
    values = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        exact = np.array_equal(values.astype(np.float16).astype(np.float32), values)
    return "float16" if exact else "float32"


def _float_record(name: str, t: torch.Tensor) -> TensorRecord:
    values = t.detach().cpu().float().numpy()
    dtype = _float_dtype(values)
    return TensorRecord(name, {"shape": list(t.shape), "encoding": "float", "dtype": dtype},
                        {"values": float_bytes(values, dtype)})  # fmt: skip


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike[str],
    model_name: str,
    model_args: dict[str, Any] | None = None,
    compression: str = "auto",
    entropy: bool = True,
) -> dict[str, Any]:
    """Write a quantized model (from :func:`torchshrink.quant.ptq`, ``qat`` or the codebook transform) to
    ``path`` atomically. Returns the header that was written. See :func:`encode_compressed`."""
    blob, header = encode_compressed(model, model_name, model_args, compression, entropy)
    atomic_write_bytes(path, blob)
    return header


@torch.no_grad()
def encode_compressed(
    model: nn.Module,
    model_name: str,
    model_args: dict[str, Any] | None = None,
    compression: str = "auto",
    entropy: bool = True,
) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the compressed file of a quantized model, and its header.

    Storage is lossless: every code stream is bit-packed or (``entropy``) Huffman-coded, whichever is
    smaller; float values (biases, scales, centroids) go to float16 only when that is exact (see
    :func:`torchshrink.quant.snap_floats_`), else float32. ``compression`` then applies to the whole payload.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}")
    layers = quantized_layers(model)
    books = codebook_layers(model)
    if not layers and not books:
        raise ValueError("the model has no quantized layer: run ptq/qat (or the codebook transform) first")
    reference = fold_batchnorm(build_model(model_name, **(model_args or {})))
    records: list[TensorRecord] = []
    exported = {q.name: q for q in export_layers(model)}
    for key, ref in reference.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if leaf == "weight" and owner in exported:
            q = exported[owner]
            dtype = _float_dtype(q.scale.numpy())
            records.append(_codes_record(
                key, q.codes.numpy(), list(q.codes.shape), q.spec.bits, q.spec.qmin,
                {"encoding": "uniform", "scale_count": q.scale.numel(), "scale_dtype": dtype},
                {"scales": float_bytes(q.scale.numpy(), dtype)}, entropy,
            ))  # fmt: skip
        elif leaf == "weight" and owner in books:
            cb = books[owner]
            values, indices = cb.export()
            # stored index 0 is a pruned zero; centroid k is stored as k + 1
            dtype = _float_dtype(values.numpy())
            records.append(_codes_record(
                key, indices.numpy() + 1, list(indices.shape), cb.bits, 0,
                {"encoding": "codebook", "codebook_size": values.numel(), "codebook_dtype": dtype},
                {"codebook": float_bytes(values.numpy(), dtype)}, entropy,
            ))  # fmt: skip
        else:
            try:
                tensor = model.get_parameter(key)
            except AttributeError:
                tensor = model.get_buffer(key)
            if tensor.shape != ref.shape:
                raise ValueError(f"{key}: shape {list(tensor.shape)} does not match the model's {list(ref.shape)}")
            records.append(_float_record(key, tensor))
    activations = []
    modules = dict(model.named_modules())
    for name in list(layers) + list(books):
        iq = input_quantizer(modules[name])
        if iq is not None and iq.enabled:
            scale = float(iq.effective_scale[0])
            activations.append({"layer": name, "bits": iq.spec.bits, "signed": iq.spec.signed,
                                "symmetric": iq.spec.symmetric, "scale": scale, "zero_point": float(iq.zero_point[0])})  # fmt: skip
    blob, header = encode_file({"name": model_name, "args": model_args or {}, "batchnorm_folded": True}, records,
                               compression, {"activations": activations})  # fmt: skip
    return blob, header


def read_compressed(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[TensorRecord]]:
    """Read and verify a file: header and tensor records. Raises :class:`FormatError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > FILE_LIMIT:
            raise FormatError(f"{path}: {size} bytes is larger than any torchshrink file can be")
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return decode_file(data)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _decode_tensor(rec: TensorRecord) -> torch.Tensor:
    meta = rec.meta
    shape = meta["shape"]
    numel = math.prod(shape)
    if meta.get("encoding") == "float":
        values = float_values(rec.sections["values"], meta.get("dtype"), numel)
        return torch.from_numpy(values.copy()).reshape(shape)
    bits, offset = meta["bits"], meta["code_offset"]
    if not (isinstance(bits, int) and 1 <= bits <= 8 and isinstance(offset, int) and -256 <= offset <= 256):
        raise ValueError(f"bits {bits!r} / code_offset {offset!r} out of range")
    sections = rec.sections
    coding = meta.get("codes_coding", "packed")
    if meta.get("storage") == "sparse":
        positions = decode_positions(meta["positions"], sections["positions"], numel, meta["gap_bits"],
                                     meta["gap_count"], meta.get("positions_coding", "packed"),
                                     sections.get("positions_table", b""))  # fmt: skip
        codes = np.zeros(numel, dtype=np.int64)
        stored = decode_stream(coding, sections["codes"], sections.get("codes_table", b""), bits, positions.size)
        codes[positions] = stored.astype(np.int64) + offset
    elif meta.get("storage") == "dense":
        stored = decode_stream(coding, sections["codes"], sections.get("codes_table", b""), bits, numel)
        codes = stored.astype(np.int64) + offset
    else:
        raise ValueError(f"unknown storage {meta.get('storage')!r}")
    codes_t = torch.from_numpy(codes).reshape(shape)
    if meta.get("encoding") == "uniform":
        raw = float_values(sections["scales"], meta.get("scale_dtype", "float32"), meta["scale_count"])
        scales = torch.from_numpy(raw.copy())
        if scales.numel() not in (1, shape[0]):
            raise ValueError(f"{scales.numel()} scales for {shape[0]} channels")
        view = scales.reshape(-1, *[1] * (len(shape) - 1)) if scales.numel() > 1 else scales[0]
        return codes_t.float() * view  # the same product the fake quant computes
    if meta.get("encoding") == "codebook":
        raw = float_values(sections["codebook"], meta.get("codebook_dtype", "float32"), meta["codebook_size"])
        book = torch.from_numpy(raw.copy())
        table = torch.cat([torch.zeros(1), book])
        if codes_t.numel() and int(codes_t.max()) >= table.numel():
            raise ValueError("codebook index out of range")
        return table[codes_t]
    raise ValueError(f"unknown encoding {meta.get('encoding')!r}")


def load_compressed(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild the model stored in ``path``: the architecture from the registry, BatchNorm folded, weights
    decoded, input quantizers attached. Returns the model in eval mode. Raises :class:`FormatError`.
    """
    header, records = read_compressed(path)
    try:
        info = header["model"]
        name, args = info["name"], info.get("args", {})
        if name not in MODELS or not isinstance(args, dict):
            raise FormatError(f"{path}: unknown model {name!r}")
        # build on the meta device first: arguments from the header must not drive a huge allocation
        with torch.device("meta"):
            probe = build_model(name, **args)
        if sum(t.numel() for t in probe.state_dict().values()) > MAX_ELEMENTS:
            raise FormatError(f"{path}: model arguments {args} describe more than {MAX_ELEMENTS} elements")
        model = fold_batchnorm(build_model(name, **args)).eval()
        state = model.state_dict()
        loaded = {}
        for rec in records:
            if rec.name not in state:
                raise FormatError(f"{path}: tensor {rec.name!r} does not belong to model {name!r}")
            tensor = _decode_tensor(rec)
            if tensor.shape != state[rec.name].shape:
                raise FormatError(f"{path}: tensor {rec.name!r} has shape {list(tensor.shape)}, "
                                  f"expected {list(state[rec.name].shape)}")  # fmt: skip
            loaded[rec.name] = tensor
        missing = sorted(set(state) - set(loaded))
        if missing:
            raise FormatError(f"{path}: missing tensors {missing[:3]}")
        model.load_state_dict(loaded)
        modules = dict(model.named_modules())
        for act in header.get("activations", []):
            layer = modules.get(act["layer"])
            if layer is None:
                raise FormatError(f"{path}: activation entry for unknown layer {act['layer']!r}")
            spec = QuantSpec(bits=act["bits"], signed=bool(act["signed"]), symmetric=bool(act["symmetric"]))
            fq = FakeQuant(spec)
            fq.scale.data.fill_(float(act["scale"]))
            fq.zero_point.fill_(float(act["zero_point"]))
            if not (math.isfinite(float(fq.scale)) and float(fq.scale) > 0):
                raise FormatError(f"{path}: activation scale of {act['layer']!r} is not a positive number")
            fq.enabled = True
            layer.input_quant = fq
            layer.register_forward_pre_hook(_quantize_input_hook)
        return model
    except FormatError:
        raise
    except (TorchshrinkError, KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError,
            OverflowError) as exc:  # fmt: skip
        raise FormatError(f"{path}: malformed content ({type(exc).__name__}: {exc})") from exc


def _coding(meta: dict[str, Any]) -> str:
    if meta.get("encoding") == "float":
        return str(meta.get("dtype"))
    codes = meta.get("codes_coding", "packed")
    return f"{codes}/{meta.get('positions_coding', 'packed')}" if meta.get("storage") == "sparse" else codes


@dataclass(frozen=True)
class TensorSummary:
    """One tensor of a file, for ``torchshrink inspect``."""

    name: str
    shape: list[int]
    encoding: str
    storage: str
    bits: int
    sparsity: float
    bytes: int  # its sections, before the whole-payload compression
    coding: str = "-"  # how the codes (and gaps) are stored: packed or huffman; float dtype for floats


def inspect_compressed(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[TensorSummary]]:
    """Header and per-tensor summary of a file."""
    header, records = read_compressed(path)
    rows = []
    for rec in records:
        try:
            tensor = _decode_tensor(rec)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{path}: tensor {rec.name!r} cannot be decoded ({exc})") from exc
        numel = max(tensor.numel(), 1)
        rows.append(TensorSummary(
            rec.name, rec.meta["shape"], rec.meta.get("encoding", "?"), rec.meta.get("storage", "-"),
            rec.meta.get("bits", 32 if rec.meta.get("dtype") == "float32" else 16),
            float((tensor == 0).sum()) / numel, sum(len(b) for b in rec.sections.values()), _coding(rec.meta),
        ))  # fmt: skip
    return header, rows
