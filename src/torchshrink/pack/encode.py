"""Write a fake-quantized (and possibly pruned) model as a ``.tshrink`` file: model -> tensor records -> bytes.

Quantized weights are stored as integer codes at exactly their width or Huffman-coded (dense, or only the
non-zero codes plus their positions, whichever is smaller) with per-channel scales, or as codebook indices
plus a codebook. Floats (biases, scales, centroids) are float16 where that is exact, else float32.
BatchNorm is folded before quantization, so the file holds no foldable BatchNorm. The input quantizers'
parameters travel in the header. A file names a registered architecture (and loads by itself) or was saved
from any model (and loads into an instance of it); tied weights are stored once, under ``aliases``.
Reading is :mod:`torchshrink.pack.decode`; the byte layout is :mod:`torchshrink.pack.format`.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink._io import atomic_write_bytes
from torchshrink.errors import ConfigError, TorchshrinkError
from torchshrink.layers import module_weights
from torchshrink.models import MODELS, build_model
from torchshrink.pack.format import TensorRecord, encode_file, float_bytes
from torchshrink.pack.sparse import encode_positions
from torchshrink.pack.streams import Stream, encode_stream
from torchshrink.quant.adds import has_join_quant, join_names
from torchshrink.quant.apply import input_quantizer, quantized_layers
from torchshrink.quant.export import export_layers
from torchshrink.quant.fake_quant import FakeQuant, QuantSpec
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.sharing import codebook_layers

__all__ = ["save_compressed", "encode_compressed", "encoded_weight_bytes", "encoded_uniform_bytes"]

COMPRESSIONS = ("auto", "none", "zlib", "lzma")  # of the whole payload; auto keeps the smallest
# Refusals here are ConfigErrors, not FormatErrors: a FormatError says a file being read is bad, while here no file
# is written yet and the model or the arguments handed in must change (as with the ONNX exporter's refusals).
_NOT_THAT_MODEL = "pass the model_name and model_args the model was built with, or model_name=None to save it as it is"


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


def _uniform_record(
    name: str, codes: np.ndarray, scale: np.ndarray, bits: int, qmin: int, entropy: bool
) -> TensorRecord:
    """Uniform codes (signed, stored as ``codes - qmin``) and their scales, float16 where that is exact."""
    dtype = _float_dtype(scale)
    return _codes_record(
        name, codes, list(codes.shape), bits, qmin,
        {"encoding": "uniform", "scale_count": scale.size, "scale_dtype": dtype},
        {"scales": float_bytes(scale, dtype)}, entropy,
    )  # fmt: skip


def encoded_uniform_bytes(codes: np.ndarray, scale: np.ndarray, bits: int, qmin: int, entropy: bool = True) -> int:
    """Bytes the file spends on a uniform weight: codes, positions and scales, as written.

    ``qmin`` is the quantizer's ``spec.qmin``, the most negative code of its range (stored as the record's
    ``code_offset``): at 4 bits -7 for narrow codes, -8 for the full signed range.

    Example::

        codes = quantize(w, scale, zero, -7, 7, axis=0)  # 4-bit symmetric codes, narrow range
        encoded_uniform_bytes(codes.numpy(), scale.numpy(), 4, -7)
    """
    record = _uniform_record("w", codes, np.asarray(scale, dtype=np.float32), bits, qmin, entropy)
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
        raise ConfigError(f"{name}: its {source.dtype} values do not all fit float32 exactly, and the file stores "
                          "float32 at most; convert them (e.g. model.float()) before saving")  # fmt: skip
    values = source.float().numpy()
    dtype = _float_dtype(values)
    return TensorRecord(name, {"shape": list(t.shape), "encoding": "float", "dtype": dtype},
                        {"values": float_bytes(values, dtype)})  # fmt: skip


def _quantizer_entry(name: str, fq: FakeQuant) -> dict[str, Any]:
    """The file's fields of an enabled activation quantizer: ``bits``, ``signed``, ``symmetric``, ``scale``,
    ``zero_point``. ``name`` says whose it is in an error."""
    scale, zero = float(fq.effective_scale[0]), float(fq.zero_point[0])
    if not zero.is_integer():  # calibration rounds it; a hand-set fraction has no integer code to store
        raise ConfigError(f"{name}: input zero point {zero} is not an integer, and the file stores integer "
                          "codes; calibrate the input quantizer (ptq, qat) rather than setting it by hand")  # fmt: skip
    _check_input_range(name, fq.spec)
    return {"bits": fq.spec.bits, "signed": fq.spec.signed, "symmetric": fq.spec.symmetric, "scale": scale,
            "zero_point": int(zero)}  # fmt: skip


def _join_entries(model: nn.Module) -> list[dict[str, Any]]:
    """One entry per join of the model (:mod:`torchshrink.quant.adds`), in forward order: where it is (for
    people) and its operands' quantizers. A join quantizer left uncalibrated is refused: the file would say
    less than the model does."""
    if not has_join_quant(model):
        return []
    names = join_names(model)
    entries = []
    for i, group in enumerate(model.join_quant):
        where = names[i] if i < len(names) else f"join {i}"
        for k, fq in enumerate(group):
            if not fq.enabled:
                raise ConfigError(f"{where}: the quantizer of operand {k} is not calibrated; calibrate the model "
                                  "(ptq, qat) before saving it")  # fmt: skip
        entries.append({"at": where, "operands": [_quantizer_entry(where, fq) for fq in group]})
    return entries


def _plain_keys(model: nn.Module) -> list[str]:
    """The ``state_dict`` keys of ``model`` as a plain (unquantized) copy of it has them.

    ``<m>.parametrizations.<t>.original`` is ``<m>.<t>``; the parametrizations' own state (masks, fake-quant
    scales, codebooks) and the input quantizers are dropped: the encoded weights and ``activations`` carry them.
    """
    # every name a quantizer is reached under: a module used in two places has its input quantizer under both
    quantizers = tuple(f"{n}." for n, m in model.named_modules(remove_duplicate=False) if n and isinstance(m, FakeQuant))
    keys = []
    for key in model.state_dict():
        parts = key.split(".")
        at = parts.index("parametrizations") if "parametrizations" in parts[:-2] else -1
        if at >= 0 and parametrize.is_parametrized(model.get_submodule(".".join(parts[:at])), parts[at + 1]):
            if parts[at + 2 :] == ["original"]:
                keys.append(".".join([*parts[:at], parts[at + 1]]))
            elif parts[-1].startswith("original"):
                raise ConfigError(
                    f"{key}: a parametrization whose right_inverse returns several tensors cannot be saved; remove it "
                    "(torch.nn.utils.parametrize.remove_parametrizations) before saving"
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
        raise ConfigError(f"{key}: the model has no such tensor; {_NOT_THAT_MODEL}") from None
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{key}: the model has no such tensor; {_NOT_THAT_MODEL}")
    stored = module.parametrizations[leaf].original if parametrize.is_parametrized(module, leaf) else value
    return module, value, stored


def _tie(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Tensors with equal keys share their elements (tied weights); empty tensors tie nothing."""
    return None if t.numel() == 0 else (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def _describe(rec: TensorRecord) -> str:
    encoding = rec.meta.get("encoding")
    return "plain float" if encoding == "float" else f"{rec.meta.get('bits')}-bit {encoding}"


def _tie_error(first: str, kept: TensorRecord, other: str, rec: TensorRecord) -> ConfigError:
    a, b = _describe(kept), _describe(rec)
    if a == b:
        problem = f"{first} and {other} are one tied tensor, but the two modules compute different values from it"
    else:
        problem = f"{first} and {other} are one tied tensor, but {first} is used as {a} and {other} as {b}"
    if "plain float" in (a, b):
        fix = "quantize neither of them (a filter_fn that leaves both out) or untie them"
    else:
        fix = "quantize both the same way, quantize neither, or untie them"
    return ConfigError(f"{problem}: the file would hold a different model from the one in memory; {fix}")


def _check_input_range(name: str, spec: QuantSpec) -> None:
    """Refuse an input quantizer whose code range is not the one the reader derives from bits, signed and
    symmetric (narrow when signed and symmetric): a hand-made full-range one would load clipping differently.
    (Weights carry their own range: the record's ``code_offset``.)"""
    stored = QuantSpec(bits=spec.bits, signed=spec.signed, symmetric=spec.symmetric)
    if (spec.qmin, spec.qmax) != (stored.qmin, stored.qmax):
        raise ConfigError(f"{name}: its input quantizer's codes [{spec.qmin}, {spec.qmax}] are not the range the file "
                          f"records for a {spec.bits}-bit {'signed' if spec.signed else 'unsigned'} "
                          f"{'symmetric' if spec.symmetric else 'asymmetric'} input ([{stored.qmin}, {stored.qmax}]), "
                          "so the loaded model would differ; use narrow=None for input quantizers")  # fmt: skip


def _check_weight_range(name: str, spec: QuantSpec) -> None:
    """Refuse a weight quantizer whose codes are not signed with zero point 0 (a hand-made unsigned or asymmetric
    one): the file stores a weight as its code times its scale, in the narrow or the full signed range only."""
    if not (spec.signed and spec.symmetric):
        raise ConfigError(f"{name}: its weight quantizer is {'signed' if spec.signed else 'unsigned'} and "
                          f"{'symmetric' if spec.symmetric else 'asymmetric'}, but the file stores signed symmetric "
                          "weight codes (zero point 0); quantize the weights with quantize_, ptq or qat")  # fmt: skip


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
        raise ConfigError("the model holds BatchNorm layers that fold_batchnorm would fold, so its file would not fit "
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
        ConfigError: unknown ``compression`` or ``model_name``, no quantized layer, shapes that do not fit the
            named architecture, BatchNorm left unfolded, or tied weights that the two modules use differently.
    """
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    if model_name is not None and model_name not in MODELS:
        raise ConfigError(f"unknown model {model_name!r}; registered models: {', '.join(MODELS)} (model_name=None saves "
                          "any architecture)")  # fmt: skip
    if model_name is None and model_args:
        raise ConfigError("model_args describe a registered model: pass its model_name too, or neither")
    layers = quantized_layers(model)
    books = codebook_layers(model)
    if not layers and not books:
        raise ConfigError("the model has no quantized layer: run ptq/qat (or the codebook transform) first")
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
    weights = module_weights(model)
    # by (module, attribute): a module reached under two names is one layer
    exported = {(id(weights[q.name].module), q.attr): q for q in export_layers(model)}
    shared = {(id(weights[name].module), weights[name].attr): cb for name, cb in books.items()}
    records: list[TensorRecord] = []
    aliases: dict[str, str] = {}
    first: dict[tuple[Any, ...], TensorRecord] = {}  # tie key -> the record that stores it
    for key in keys:
        module, value, stored = _tensor(model, key)
        slot = (id(module), key.rpartition(".")[2])
        if slot in exported:
            q = exported[slot]
            _check_weight_range(key, q.spec)
            rec = _uniform_record(key, q.codes.numpy(), q.scale.numpy(), q.spec.bits, q.spec.qmin, entropy)
        elif slot in shared:
            values, indices = shared[slot].export()
            # stored index 0 is a pruned zero; centroid k is stored as k + 1
            dtype = _float_dtype(values.numpy())
            rec = _codes_record(
                key, indices.numpy() + 1, list(indices.shape), shared[slot].bits, 0,
                {"encoding": "codebook", "codebook_size": values.numel(), "codebook_dtype": dtype},
                {"codebook": float_bytes(values.numpy(), dtype)}, entropy,
            )  # fmt: skip
        else:
            rec = _float_record(key, value)
        if shapes is not None and rec.meta["shape"] != shapes[key]:
            raise ConfigError(f"{key}: shape {rec.meta['shape']} does not match the model's {shapes[key]}; "
                              f"{_NOT_THAT_MODEL}")  # fmt: skip
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
    for name in dict.fromkeys(weights[n].module_name for n in list(layers) + list(books)):  # one per module
        iq = input_quantizer(model.get_submodule(name))
        if iq is not None and iq.enabled:
            activations.append({"layer": name, **_quantizer_entry(name, iq)})
    extra: dict[str, Any] = {"activations": activations}
    if aliases:
        extra["aliases"] = aliases  # absent when nothing is tied: a file without ties has no extra bytes
    joins = _join_entries(model)
    if joins:
        extra["joins"] = joins  # absent without: such a file stays version 3
    return encode_file(info, records, compression, extra)
