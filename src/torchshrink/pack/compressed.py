"""Save a fake-quantized (and possibly pruned) model to a ``.tshrink`` file and load it back into a runnable
model whose predictions equal the model it was saved from.

Quantized weights are stored as integer codes at exactly their width or Huffman-coded (dense, or only the
non-zero codes plus their positions, whichever is smaller) with per-channel scales, or as codebook indices
plus a codebook. Floats (biases, scales, centroids) are float16 where that is exact, else float32.
BatchNorm is folded before quantization, so the file holds no foldable BatchNorm. The input quantizers'
parameters travel in the header. A file names a registered architecture (and loads by itself) or was saved
from any model (and loads into an instance of it); tied weights are stored once, under ``aliases``.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

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


def _exact_in_float32(t: torch.Tensor) -> bool:
    """Whether float32 holds every value of ``t`` (integer buffers up to 2**24, float64 that is float32)."""
    if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return True
    if t.is_complex():
        return False
    back = t.float().to(t.dtype)
    return bool(((back == t) | (back != back) & (t != t)).all())  # NaN stays NaN


def _float_record(name: str, t: torch.Tensor) -> TensorRecord:
    source = t.detach().cpu()
    if not _exact_in_float32(source):
        raise ValueError(f"{name}: its {source.dtype} values do not all fit float32 exactly, and the file stores "
                         "float32 at most; convert them (e.g. model.float()) before saving")  # fmt: skip
    values = source.float().numpy()
    dtype = _float_dtype(values)
    return TensorRecord(name, {"shape": list(t.shape), "encoding": "float", "dtype": dtype},
                        {"values": float_bytes(values, dtype)})  # fmt: skip


def _plain_keys(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys of ``model`` as a plain (unquantized) copy of it has them.

    ``<m>.parametrizations.<t>.original`` is ``<m>.<t>``; the parametrizations' own state (masks, fake-quant
    scales, codebooks) and the input quantizers are dropped: the encoded weights and ``activations`` carry them.
    """
    quantizers = tuple(f"{n}." for n, m in model.named_modules() if n and isinstance(m, FakeQuant))
    keys = []
    for key in model.state_dict():
        parts = key.split(".")
        at = parts.index("parametrizations") if "parametrizations" in parts[:-2] else -1
        if at >= 0 and parametrize.is_parametrized(model.get_submodule(".".join(parts[:at])), parts[at + 1]):
            if parts[at + 2 :] == ["original"]:
                keys.append(".".join([*parts[:at], parts[at + 1]]))
            elif parts[-1].startswith("original"):
                raise ValueError(
                    f"{key}: a parametrization whose right_inverse returns several tensors cannot be saved"
                )
        elif not key.startswith(quantizers):
            keys.append(key)
    return keys


def _tensor(model: nn.Module, key: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The module owning ``key``, the tensor it computes with, and the stored tensor behind it (the same,
    or a parametrization's ``original``: what tied modules share)."""
    owner, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(owner)
        value = getattr(module, leaf)
    except AttributeError:
        raise ValueError(f"{key}: the model has no such tensor") from None
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{key}: the model has no such tensor")
    stored = module.parametrizations[leaf].original if parametrize.is_parametrized(module, leaf) else value
    return module, value, stored


def _tie(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Tensors with equal keys share their elements (tied weights); empty tensors tie nothing."""
    return None if t.numel() == 0 else (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def _describe(rec: TensorRecord) -> str:
    encoding = rec.meta.get("encoding")
    return "plain float" if encoding == "float" else f"{rec.meta.get('bits')}-bit {encoding}"


def _tie_error(first: str, kept: TensorRecord, other: str, rec: TensorRecord) -> ValueError:
    a, b = _describe(kept), _describe(rec)
    if a == b:
        problem = f"{first} and {other} are one tied tensor, but the two modules compute different values from it"
    else:
        problem = f"{first} and {other} are one tied tensor, but {first} is used as {a} and {other} as {b}"
    if "plain float" in (a, b):
        fix = "quantize neither of them (a filter_fn that leaves both out) or untie them"
    else:
        fix = "quantize both the same way, quantize neither, or untie them"
    return ValueError(f"{problem}: the file would hold a different model from the one in memory; {fix}")


def _check_folded(model: nn.Module) -> None:
    """Refuse a model with BatchNorm that ``load_compressed`` would fold (its file would not fit the folded
    model it is loaded into). Only models that still hold a BatchNorm pay for the trial fold on a copy."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    try:
        probe = copy.deepcopy(model)
    except (copy.Error, TypeError, RuntimeError):
        return  # cannot copy: load_compressed still refuses a file that does not fit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BatchNorms that stay unfolded are reported when the model loads
            fold_batchnorm(probe)
        unfolded = _plain_keys(probe) != _plain_keys(model)
    except TorchshrinkError:  # a BatchNorm to fold follows a quantized (parametrized) conv
        unfolded = True
    if unfolded:
        raise ValueError("the model holds BatchNorm layers that fold_batchnorm would fold, so its file would not fit "
                         "the model it is loaded into; fold_batchnorm(model) before quantizing (ptq, qat and "
                         "codebook do)")  # fmt: skip


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike[str],
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
    compression: str = "auto",
    entropy: bool = True,
) -> dict[str, Any]:
    """Write a quantized model (from :func:`torchshrink.recipes.ptq`, ``qat`` or ``codebook``) to ``path``
    atomically. Returns the header that was written. See :func:`encode_compressed`.

    Example::

        save_compressed(q, "net.tshrink")  # any architecture; load with load_compressed(path, model=MyNet())
        save_compressed(q, "cnn.tshrink", "cnn")  # a registered one; load with load_compressed(path)
    """
    blob, header = encode_compressed(model, model_name, model_args, compression, entropy)
    atomic_write_bytes(path, blob)
    return header


@torch.no_grad()
def encode_compressed(
    model: nn.Module,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
    compression: str = "auto",
    entropy: bool = True,
) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the compressed file of a quantized model, and its header.

    With ``model_name`` (a name in :data:`torchshrink.models.MODELS`) the tensors are those of that
    architecture built from ``model_args`` with BatchNorm folded, and the file loads without being given the
    model. Without it they are the model's own ``state_dict`` (quantized and codebook weights encoded), the
    header names the model's class for information only, and loading needs an instance of the architecture.
    A tensor shared by several names (tied weights) is stored once; the other names become ``aliases``.

    Storage is lossless: every code stream is bit-packed or (``entropy``) Huffman-coded, whichever is
    smaller; float values (biases, scales, centroids) go to float16 only when that is exact (see
    :func:`torchshrink.quant.snap_floats_`), else float32. ``compression`` then applies to the whole payload.

    Raises:
        ValueError: unknown ``model_name``, no quantized layer, shapes that do not fit the named architecture,
            BatchNorm left unfolded, or tied weights that the two modules use differently.
    """
    if model_name is not None and model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}")
    if model_name is None and model_args:
        raise ValueError("model_args describe a registered model: pass its model_name too, or neither")
    layers = quantized_layers(model)
    books = codebook_layers(model)
    if not layers and not books:
        raise ValueError("the model has no quantized layer: run ptq/qat (or the codebook transform) first")
    _check_folded(model)
    if model_name is None:
        shapes = None
        keys = _plain_keys(model)
        info = {"name": None, "class": f"{type(model).__module__}.{type(model).__qualname__}", "batchnorm_folded": True}
    else:
        reference = fold_batchnorm(build_model(model_name, **(model_args or {})))
        shapes = {key: list(t.shape) for key, t in reference.state_dict().items()}
        keys = list(shapes)
        info = {"name": model_name, "args": model_args or {}, "batchnorm_folded": True}
    modules = dict(model.named_modules())
    exported = {id(modules[q.name]): q for q in export_layers(model)}  # by module: a shared one has two names
    shared = {id(modules[name]): cb for name, cb in books.items()}
    records: list[TensorRecord] = []
    aliases: dict[str, str] = {}
    first: dict[tuple[Any, ...], TensorRecord] = {}  # tie key -> the record that stores it
    for key in keys:
        module, value, stored = _tensor(model, key)
        leaf = key.rpartition(".")[2]
        if leaf == "weight" and id(module) in exported:
            q = exported[id(module)]
            dtype = _float_dtype(q.scale.numpy())
            rec = _codes_record(
                key, q.codes.numpy(), list(q.codes.shape), q.spec.bits, q.spec.qmin,
                {"encoding": "uniform", "scale_count": q.scale.numel(), "scale_dtype": dtype},
                {"scales": float_bytes(q.scale.numpy(), dtype)}, entropy,
            )  # fmt: skip
        elif leaf == "weight" and id(module) in shared:
            values, indices = shared[id(module)].export()
            # stored index 0 is a pruned zero; centroid k is stored as k + 1
            dtype = _float_dtype(values.numpy())
            rec = _codes_record(
                key, indices.numpy() + 1, list(indices.shape), shared[id(module)].bits, 0,
                {"encoding": "codebook", "codebook_size": values.numel(), "codebook_dtype": dtype},
                {"codebook": float_bytes(values.numpy(), dtype)}, entropy,
            )  # fmt: skip
        else:
            rec = _float_record(key, value)
        if shapes is not None and rec.meta["shape"] != shapes[key]:
            raise ValueError(f"{key}: shape {rec.meta['shape']} does not match the model's {shapes[key]}")
        tie = _tie(stored)
        if tie in first:
            kept = first[tie]
            if (kept.meta, kept.sections) != (rec.meta, rec.sections):
                raise _tie_error(kept.name, kept, key, rec)
            aliases[key] = kept.name
            continue
        if tie is not None:
            first[tie] = rec
        records.append(rec)
    activations = []
    for name in list(layers) + list(books):
        iq = input_quantizer(modules[name])
        if iq is not None and iq.enabled:
            scale = float(iq.effective_scale[0])
            activations.append({"layer": name, "bits": iq.spec.bits, "signed": iq.spec.signed,
                                "symmetric": iq.spec.symmetric, "scale": scale, "zero_point": float(iq.zero_point[0])})  # fmt: skip
    extra: dict[str, Any] = {"activations": activations}
    if aliases:
        extra["aliases"] = aliases  # absent when nothing is tied: a file without ties has no extra bytes
    return encode_file(info, records, compression, extra)


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


def _shown(value: Any, limit: int = 120) -> str:
    """A value from a file for an error message: quoted, and cut short (a file may hold anything)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _few(names: list[str], count: int = 5) -> str:
    return f"{names[:count]}" + (f" and {len(names) - count} more" if len(names) > count else "")


def _registered_model(path: str | os.PathLike[str], info: dict[str, Any]) -> nn.Module:
    """Build (BatchNorm folded) the registered architecture a file names, refusing huge arguments."""
    name, args = info.get("name"), info.get("args", {})
    if name is None:
        raise FormatError(f"{path}: saved from an unregistered model (class {_shown(info.get('class', '?'))}); "
                          "pass the model: load_compressed(path, model=MyModel(...))")  # fmt: skip
    if not isinstance(name, str) or name not in MODELS or not isinstance(args, dict):
        raise FormatError(f"{path}: unknown model {_shown(name)!r}; registered: {', '.join(MODELS)} "
                          "(or pass the model: load_compressed(path, model=MyModel(...)))")  # fmt: skip
    # build on the meta device first: arguments from the header must not drive a huge allocation
    with torch.device("meta"):
        probe = build_model(name, **args)
    if sum(t.numel() for t in probe.state_dict().values()) > MAX_ELEMENTS:
        raise FormatError(f"{path}: model arguments {_shown(args)} describe more than {MAX_ELEMENTS} elements")
    return fold_batchnorm(build_model(name, **args))


def _input_quantizers(path: str | os.PathLike[str], model: nn.Module,
                      activations: list[dict[str, Any]]) -> list[tuple[nn.Module, FakeQuant]]:  # fmt: skip
    """The input quantizers the header describes, checked, with the layer each one goes to."""
    modules = dict(model.named_modules())
    out = []
    for act in activations:
        layer = modules.get(act["layer"])
        if layer is None:
            raise FormatError(f"{path}: activation entry for unknown layer {_shown(act['layer'])!r}")
        spec = QuantSpec(bits=act["bits"], signed=bool(act["signed"]), symmetric=bool(act["symmetric"]))
        fq = FakeQuant(spec)
        fq.scale.data.fill_(float(act["scale"]))
        fq.zero_point.fill_(float(act["zero_point"]))
        if not (math.isfinite(float(fq.scale)) and float(fq.scale) > 0):
            raise FormatError(f"{path}: activation scale of {_shown(act['layer'])!r} is not a positive number")
        fq.enabled = True
        weight = next(layer.parameters(), None)
        out.append((layer, fq if weight is None else fq.to(weight.device)))
    return out


def _fill(path: str | os.PathLike[str], model: nn.Module, header: dict[str, Any], records: list[TensorRecord]) -> None:
    """Check every name and shape of the file against ``model``, then load the tensors (all or none)."""
    state = model.state_dict()
    aliases = header.get("aliases", {})  # checked by decode_file: alias -> a tensor of the file
    names = [rec.name for rec in records] + list(aliases)
    known = set(names)
    missing = [key for key in state if key not in known]
    unexpected = [name for name in names if name not in state]
    if missing or unexpected:
        saved = header["model"].get("class")
        mine = f"{type(model).__module__}.{type(model).__qualname__}"
        origin = (
            f" (saved from class {_shown(saved)}, this is {mine})" if isinstance(saved, str) and saved != mine else ""
        )
        raise FormatError(f"{path}: does not fit this model{origin}: missing tensors {_few(missing)}, "
                          f"unexpected {_few(unexpected)}")  # fmt: skip
    by_name = {rec.name: rec for rec in records}
    for name in state:  # the names are the same now; the model's order makes "the first mismatch" natural
        shape = by_name[aliases.get(name, name)].meta["shape"]
        if shape != list(state[name].shape):
            raise FormatError(f"{path}: tensor {name!r} has shape {shape} in the file but {list(state[name].shape)} "
                              "in this model")  # fmt: skip
    quantizers = _input_quantizers(path, model, header.get("activations", []))
    decoded = {rec.name: _decode_tensor(rec) for rec in records}
    # a tied pair gets the one tensor under both names; a model that does not tie them gets two equal copies
    model.load_state_dict({name: decoded[aliases.get(name, name)] for name in state})
    for layer, fq in quantizers:
        layer.input_quant = fq
        layer.register_forward_pre_hook(_quantize_input_hook)


def load_compressed(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load the model stored in ``path``: weights decoded, input quantizers attached, in eval mode.

    Args:
        path: a ``.tshrink`` file.
        model: an instance of the architecture the file was saved from (needed when it was saved without a
            registered name). Its BatchNorm is folded (:func:`torchshrink.quant.fold_batchnorm`) and it is
            filled in place: every tensor name and shape must match the file exactly. Without it, the
            registered architecture the header names is built.

    Returns:
        The filled model (``model`` itself when given).

    Raises:
        FormatError: the file is invalid or does not fit the model; nothing is loaded then.

    Example::

        net = load_compressed("net.tshrink", model=MyNet())  # saved without a registered name
        cnn = load_compressed("cnn.tshrink")  # saved as "cnn"
    """
    header, records = read_compressed(path)
    info = header.get("model")
    if not isinstance(info, dict):
        raise FormatError(f"{path}: header field 'model' is not an object")
    if model is not None:
        fold_batchnorm(model)  # outside the try below: a failure here is about the model, not the file
    try:
        if model is None:
            model = _registered_model(path, info)
        _fill(path, model.eval(), header, records)
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
