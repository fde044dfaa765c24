"""Read a ``.tshrink`` file back into a runnable model whose predictions equal the model it was saved from.

Order matters, so that a file can make the reader allocate no more than the model it fills needs: read the
preamble and header (at most ``MAX_HEADER`` bytes) and check them against the schema
(:mod:`torchshrink.pack.schema`); check every name and shape against the model (the registered architecture
the header names, built first on the ``meta`` device, or the instance the caller passes); only then read,
verify and decompress the payload (bounded by the sizes just checked) and decode the tensors
(:mod:`torchshrink.pack.records`). The model is filled all or nothing. Nothing a file names is ever imported
or executed. Every refusal is a :class:`FormatError` whose one line names the file. Writing is
:mod:`torchshrink.pack.encode`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from torchshrink.errors import ConfigError, TorchshrinkError
from torchshrink.models import MODELS, build_model
from torchshrink.pack.format import (
    MAX_ELEMENTS,
    FormatError,
    TensorRecord,
    header_length,
    open_payload,
    parse_header,
    shown,
)
from torchshrink.pack.records import decode_tensor
from torchshrink.pack.schema import check_header
from torchshrink.quant.adds import attach_joins_, has_join_quant
from torchshrink.quant.apply import attach_input_quant_
from torchshrink.quant.fake_quant import FakeQuant, QuantSpec
from torchshrink.quant.fold import fold_batchnorm

__all__ = ["read_header", "read_compressed", "decode_tensor", "load_compressed", "open_compressed", "architecture_shapes",
           "check_fits"]  # fmt: skip

UNCHECKED = "no check of this reader caught it: please report the file"
_SLIPPED = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError, AttributeError)
# what a constructor may raise on arguments it was never meant to get (a file may hold any JSON there)
_BUILD_ERRORS = (TorchshrinkError, TypeError, ValueError, RuntimeError, OverflowError, ZeroDivisionError,
                 IndexError, KeyError, AttributeError, NotImplementedError, RecursionError)  # fmt: skip


@contextmanager
def about(path: str | os.PathLike[str]) -> Iterator[None]:
    """Prefix the file name to a :class:`FormatError` raised inside, once.

    Every check names its field; an error of another type means one is missing. It still reaches the user
    as one line rather than a traceback, marked so (the fuzzer, ``tests/pack/test_fuzz_format.py``, counts it).
    """
    try:
        yield
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    except _SLIPPED as exc:
        raise FormatError(f"{path}: unexpected content ({type(exc).__name__}: {shown(str(exc), 120)}); "
                          f"{UNCHECKED}") from exc  # fmt: skip


def _header(f: BinaryIO) -> dict[str, Any]:
    """The checked header of an open file, which is then positioned at the payload."""
    size = os.fstat(f.fileno()).st_size
    head_len = header_length(f.read(16), size)
    head = f.read(head_len)
    header = check_header(parse_header(head), compressed=head[:1] != b"{")  # as parse_header tells them apart
    expected = 16 + head_len + header["payload_bytes"]
    if size != expected:
        problem = "truncated" if size < expected else "extra bytes after the payload"
        raise FormatError(f"{problem}: the file is {size} bytes, expected {expected} (16 + header {head_len} + "
                          f"payload_bytes {header['payload_bytes']})")  # fmt: skip
    return header


def _read(path: Path, fits: Callable[[dict[str, Any]], None] | None) -> tuple[dict[str, Any], list[TensorRecord]]:
    try:
        with path.open("rb") as f:
            header = _header(f)
            if fits is not None:
                fits(header)  # before the payload is read: the model bounds what it may hold
            payload = f.read(header["payload_bytes"])
    except OSError as exc:
        raise FormatError(f"cannot read ({exc.strerror or exc})") from None
    return header, open_payload(header, payload)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked header of a file, without reading its payload (what ``eval`` needs to pick the model).

    Raises:
        FormatError: the preamble or header is invalid, or the file's length differs from what it declares.
    """
    with about(path):
        try:
            with Path(path).open("rb") as f:
                return _header(f)
        except OSError as exc:
            raise FormatError(f"cannot read ({exc.strerror or exc})") from None


def read_compressed(
    path: str | os.PathLike[str], fits: Callable[[dict[str, Any]], None] | None = None
) -> tuple[dict[str, Any], list[TensorRecord]]:
    """Read and verify a file: its checked header and the tensor records (sections decompressed).

    Args:
        path: a ``.tshrink`` file.
        fits: called with the checked header before the payload is read; raises :class:`FormatError` to
            refuse it (e.g. :func:`check_fits` against a model).

    Raises:
        FormatError: the file is invalid; the message starts with the path.
    """
    with about(path):
        return _read(Path(path), fits)


def architecture_shapes(info: dict[str, Any]) -> dict[str, list[int]] | None:
    """Tensor names and shapes of the registered architecture a checked ``model`` field names, BatchNorm
    folded, or ``None`` when its name is not registered. Built on the ``meta`` device: no memory, whatever
    the arguments say.
    """
    name, args = info.get("name"), info.get("args", {})
    if not isinstance(name, str) or name not in MODELS:
        return None
    # inspect, then load, of one file build the same probe: keep a few (a name is registered once, for good)
    return _shapes(name, json.dumps(args, sort_keys=True))


@functools.lru_cache(maxsize=16)
def _shapes(name: str, args_json: str) -> dict[str, list[int]]:
    args = json.loads(args_json)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe: what folding leaves is reported when the model is built
            probe = fold_batchnorm(build_model(name, **args))
        shapes = {key: list(t.shape) for key, t in probe.state_dict().items()}
    except _BUILD_ERRORS as exc:
        raise FormatError(f"header field model.args {shown(args)} does not build {name!r} "
                          f"({type(exc).__name__}: {shown(str(exc), 80)}), expected its constructor arguments") from None  # fmt: skip
    total = sum(math.prod(s) for s in shapes.values())
    if total > MAX_ELEMENTS:
        raise FormatError(f"header field model.args {shown(args)} describe {total} elements, expected at most "
                          f"{MAX_ELEMENTS}")  # fmt: skip
    return shapes


def check_fits(header: dict[str, Any], shapes: dict[str, list[int]], label: str = "this model") -> None:
    """Refuse a checked header whose tensor names (aliases included) or shapes differ from ``shapes``."""
    stored = {t["name"]: t["shape"] for t in header["tensors"]}
    aliases = header.get("aliases", {})
    names = {**stored, **{alias: stored[target] for alias, target in aliases.items()}}
    missing = [key for key in shapes if key not in names]
    unexpected = [name for name in names if name not in shapes]
    if missing or unexpected:
        raise FormatError(f"does not fit {label}: missing tensors {_few(missing)}, unexpected {_few(unexpected)}")
    for key, shape in shapes.items():  # the model's order makes "the first mismatch" natural
        if names[key] != shape:
            raise FormatError(f"tensor {key!r} has shape {names[key]} in the file but {shape} in {label}")


def _few(names: list[str], count: int = 5) -> str:
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return "[" + ", ".join(shown(n) for n in names[:count]) + "]" + more


def _label(info: dict[str, Any], model: nn.Module) -> str:
    mine = f"{type(model).__module__}.{type(model).__qualname__}"
    saved = info.get("class")
    if isinstance(saved, str) and saved != mine:
        return f"this model (saved from class {shown(saved, quote=False)}, this is {mine})"
    return "this model"


def _input_quantizers(model: nn.Module, activations: list[dict[str, Any]]) -> list[tuple[nn.Module, FakeQuant]]:
    """The input quantizers a checked header describes, with the layer each one goes to.

    A module reached under several names (one object in two places) may be named by any of them, but by one
    entry only: it has one input, so two quantizers for it would leave the file saying two things."""
    modules = dict(model.named_modules(remove_duplicate=False))  # every name of a shared module
    named: dict[int, str] = {}  # id(module) -> the entry's name for it
    out = []
    for i, act in enumerate(activations):
        layer = modules.get(act["layer"])
        if layer is None:  # the schema tied the layer to a weight of the file; this model has no such module
            raise FormatError(f"activation entry for {shown(act['layer'])}: the model has no such layer")
        if id(layer) in named:
            raise FormatError(f"header field activations[{i}].layer is {shown(act['layer'])}, the module "
                              f"{shown(named[id(layer)])} names too, expected one entry per module")  # fmt: skip
        named[id(layer)] = act["layer"]
        out.append((layer, _quantizer(act, layer)))
    return out


def _quantizer(act: dict[str, Any], layer: nn.Module) -> FakeQuant:
    """The enabled input quantizer of a checked activation entry, on the device of ``layer``'s weights."""
    spec = QuantSpec(bits=act["bits"], signed=act["signed"], symmetric=act["symmetric"])
    fq = FakeQuant(spec, is_activation=True)
    fq.scale.data.fill_(float(act["scale"]))
    fq.zero_point.fill_(int(act["zero_point"]))  # an integral float (0.1.0 files) is that integer
    fq.enabled = True
    weight = next(layer.parameters(), None)
    return fq if weight is None else fq.to(weight.device)


def _join_groups(model: nn.Module, joins: list[dict[str, Any]]) -> list[list[FakeQuant]]:
    """The join quantizers a checked header describes (version 4), one group per join, on the model's device."""
    if joins and has_join_quant(model):
        raise ConfigError("the model given to load the file into already quantizes its joins: give a plain instance")
    return [[_quantizer(operand, model) for operand in join["operands"]] for join in joins]


def _fill(model: nn.Module, header: dict[str, Any], records: list[TensorRecord]) -> None:
    """Load the (checked, fitting) tensors into ``model``: all of them, or none if one fails."""
    quantizers = _input_quantizers(model, header["activations"])
    joins = header.get("joins", [])
    groups = _join_groups(model, joins)
    aliases = header.get("aliases", {})
    decoded = {rec.name: decode_tensor(rec) for rec in records}
    # a tied pair gets the one tensor under both names; a model that does not tie them gets two equal copies
    model.load_state_dict({name: decoded[aliases.get(name, name)] for name in model.state_dict()})
    for layer, fq in quantizers:
        attach_input_quant_(layer, fq)
    if groups:
        attach_joins_(model, groups, [str(join.get("at", f"join {i}")) for i, join in enumerate(joins)])


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
    return open_compressed(path, model)[0]


def open_compressed(
    path: str | os.PathLike[str], model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, Any], list[TensorRecord]]:
    """:func:`load_compressed`, also returning the checked header and the tensor records the model was filled
    from (one read of the file: what an exporter needs to get the integer codes behind the weights)."""
    if model is not None:
        fold_batchnorm(model)  # outside the file's errors below: a failure here is about the model

    def fits(header: dict[str, Any]) -> None:
        info = header["model"]
        if model is not None:
            check_fits(header, {k: list(t.shape) for k, t in model.state_dict().items()}, _label(info, model))
            return
        if info["name"] is None:
            saved = shown(info["class"], quote=False)
            raise FormatError(f"saved from an unregistered model (class {saved}); pass the model: "
                              "load_compressed(path, model=MyModel(...))")  # fmt: skip
        shapes = architecture_shapes(info)
        if shapes is None:
            raise FormatError(f"header field model.name is {shown(info['name'])}, expected a registered model "
                              f"({', '.join(MODELS)}), or pass the model: load_compressed(path, model=MyModel(...))")  # fmt: skip
        check_fits(header, shapes, f"the registered {info['name']!r}")

    with about(path):
        header, records = _read(Path(path), fits)
        if model is None:  # its shapes were checked on the meta device: this allocates what the file fills
            info = header["model"]
            model = fold_batchnorm(build_model(info["name"], **info.get("args", {})))
        _fill(model.eval(), header, records)
        return model, header, records
