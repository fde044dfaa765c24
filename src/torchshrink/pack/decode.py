"""Read a ``.tshrink`` file back into a runnable model whose predictions equal the model it was saved from.

:func:`read_compressed` verifies the bytes (:mod:`torchshrink.pack.format`); :func:`decode_tensor` turns one
record into the tensor the model computes with; :func:`load_compressed` checks every name and shape against
the model (the registered architecture the header names, or an instance the caller passes) and fills it,
all or nothing. Nothing a file names is ever imported or executed. Writing is :mod:`torchshrink.pack.encode`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchshrink.errors import TorchshrinkError
from torchshrink.models import MODELS, build_model
from torchshrink.pack.format import MAX_ELEMENTS, FormatError, TensorRecord, decode_file, float_values
from torchshrink.pack.sparse import decode_positions
from torchshrink.pack.streams import decode_stream
from torchshrink.quant.apply import _quantize_input_hook
from torchshrink.quant.fake_quant import FakeQuant, QuantSpec
from torchshrink.quant.fold import fold_batchnorm

__all__ = ["read_compressed", "decode_tensor", "load_compressed"]

FILE_LIMIT = 1 << 31


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


def decode_tensor(rec: TensorRecord) -> torch.Tensor:
    """The float tensor a record stands for: codes times their scales, codebook entries, or the float values.

    Raises:
        ValueError, KeyError, TypeError: meta or sections that describe no valid tensor (callers add the path).

    Example::

        header, records = read_compressed("net.tshrink")
        weight = decode_tensor(records[0])  # float32, shape records[0].meta["shape"]
    """
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
    decoded = {rec.name: decode_tensor(rec) for rec in records}
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
