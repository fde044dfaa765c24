"""Quantizers on the inputs of residual adds and concatenations ("shortcut quantizers", as NVIDIA ModelOpt
places them before each residual add).

Why: a quantized layer whose output goes straight into ``a + b`` or ``torch.cat`` has no quantizer after it, so
an ONNX runtime cannot run it as one integer kernel (onnxruntime fuses ``DequantizeLinear -> Conv ->
QuantizeLinear``, and ``QLinearAdd`` / ``QLinearConcat`` need quantized inputs too). With these quantizers the
model itself rounds the operands of every join to 8-bit codes, so the exported graph is exact to it and the
runtime can keep the whole block in integers. QAT trains their scales like any other input quantizer.

Which calls: ``a + b`` (``+``, ``+=``, ``torch.add``, ``Tensor.add``) of two float activations of one shape, and
``torch.cat`` of two or more float activations, written in the forward of a module of the model that is not
itself a layer torchshrink quantizes (an attention's internal arithmetic is not a join). A parameter as operand
(a bias, a positional embedding) or a broadcast (an attention mask) is not a join either. The ``k``-th such call
of one forward gets the ``k``-th group of quantizers; a forward whose joins change from call to call (a branch
on the data) is refused when the count differs.

Found by running the model once (:func:`discover_joins_`, which :func:`~torchshrink.quant.apply.calibrate_`
calls on its first batch), while a ``TorchFunctionMode`` that the model's own forward hooks enter sees every
torch call; no tracer is involved, so any Python forward works.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from torchshrink.errors import ConfigError
from torchshrink.kinds import layer_kind
from torchshrink.quant.fake_quant import FakeQuant, QuantSpec

__all__ = ["JOIN_BITS", "attach_join_quant_", "discover_joins_", "join_quantizers", "join_names", "attach_joins_",
           "has_join_quant"]

JOIN_BITS = 8  # what integer add and concat kernels take: the joins stay 8-bit at every activation width

_ADDS = frozenset({torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__, torch.add, torch.Tensor.add})
_CATS = frozenset({torch.cat, torch.concat, torch.concatenate})
_ROOT_ATTR = "join_quant"  # the ModuleList of groups, one per join, on the model the config was applied to


@dataclass
class _Joins:
    """State of one forward of the model: the calls seen so far, and, while discovering, what they were."""

    root: nn.Module
    names: dict[int, str]
    discovering: bool
    count: int = 0
    found: list[tuple[str, str, int]] | None = None  # (owner module, "add"/"cat", operands)


def _is_activation(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not isinstance(t, nn.Parameter) and t.ndim >= 1


def _operands(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, list[torch.Tensor]] | None:
    """``("add", [a, b])`` or ``("cat", tensors)`` for a join between activations, else ``None``."""
    if func in _ADDS and len(args) == 2 and not kwargs:
        a, b = args
        if _is_activation(a) and _is_activation(b) and a.shape == b.shape and a.ndim >= 2:
            return "add", [a, b]
    elif func in _CATS and args and isinstance(args[0], (list, tuple)) and len(args[0]) >= 2:  # noqa: SIM102
        if all(_is_activation(t) for t in args[0]):  # (two conditions: the list first, then what it holds)
            return "cat", list(args[0])
    return None


def _owner(frame: FrameType | None, names: dict[int, str]) -> str | None:
    """The model's module in whose ``forward`` the call was written (helpers it calls included), or ``None`` when
    that module is a layer torchshrink quantizes or a quantizer (their internal arithmetic is not a join)."""
    while frame is not None:
        if frame.f_code.co_name == "forward":
            module = frame.f_locals.get("self")
            if isinstance(module, nn.Module):
                if id(module) not in names or isinstance(module, FakeQuant) or layer_kind(module) is not None:
                    return None
                return names[id(module)]
            # a forward of something else (a parametrization's own module, a function named forward): look further
        frame = frame.f_back
    return None


class _JoinMode(TorchFunctionMode):
    """Sees every torch call of the model's forward; quantizes the operands of its joins."""

    def __init__(self, joins: _Joins) -> None:
        super().__init__()
        self.joins = joins

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        join = _operands(func, args, kwargs)
        if join is None:
            return func(*args, **kwargs)
        owner = _owner(sys._getframe(1), self.joins.names)
        if owner is None:
            return func(*args, **kwargs)
        j = self.joins
        index, j.count = j.count, j.count + 1
        op, tensors = join
        if j.discovering:
            assert j.found is not None
            j.found.append((owner, op, len(tensors)))
            return func(*args, **kwargs)
        groups = getattr(j.root, _ROOT_ATTR)
        if index >= len(groups) or len(groups[index]) != len(tensors):
            raise ConfigError(f"{owner or 'the model'}: its {op} is join {index} of this forward, but the model's "
                              f"join quantizers were set up for {len(groups)} joins (as first seen): a forward whose "
                              "adds or concatenations change from call to call cannot be quantized this way")  # fmt: skip
        quantized = [fq(t) for fq, t in zip(groups[index], tensors, strict=True)]
        if op == "add":
            return func(*quantized, **kwargs)
        return func(quantized, *args[1:], **kwargs)


def _enter(root: nn.Module, args: Any) -> None:
    stack = root.__dict__.setdefault("_join_modes", [])
    discovering = root.__dict__.get("_join_discovering", False)
    joins = _Joins(root, {id(m): n for n, m in root.named_modules()}, discovering, found=[] if discovering else None)
    mode = _JoinMode(joins)
    mode.__enter__()
    stack.append(mode)


def _leave(root: nn.Module, args: Any, output: Any) -> None:
    stack = root.__dict__.get("_join_modes") or []
    if not stack:
        return
    mode = stack.pop()
    mode.__exit__(None, None, None)
    j = mode.joins
    if j.discovering:
        root.__dict__["_join_found"] = j.found
    elif j.count != len(getattr(root, _ROOT_ATTR)):
        raise ConfigError(f"this forward made {j.count} adds or concatenations between activations, but the model's "
                          f"join quantizers were set up for {len(getattr(root, _ROOT_ATTR))} (as first seen): a forward "
                          "whose joins change from call to call cannot be quantized this way")  # fmt: skip


def has_join_quant(model: nn.Module) -> bool:
    """Whether :func:`attach_join_quant_` was applied to ``model``."""
    return isinstance(getattr(model, _ROOT_ATTR, None), nn.ModuleList)


def attach_join_quant_(model: nn.Module) -> None:
    """Make ``model`` quantize the inputs of its joins: hooks on its forward; the quantizers themselves are
    created by :func:`discover_joins_` (the joins are only known once the model has run)."""
    if has_join_quant(model):
        raise ConfigError("the inputs of adds and concatenations are already quantized")
    setattr(model, _ROOT_ATTR, nn.ModuleList())
    model.register_forward_pre_hook(_enter)
    model.register_forward_hook(_leave, always_call=True)  # leave the mode even when forward raises


@torch.no_grad()
def discover_joins_(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Run ``model`` once on ``inputs`` and give each join an 8-bit input quantizer per operand (disabled and
    uncalibrated, as :func:`~torchshrink.quant.apply.attach_input_quant_` leaves one). Returns the joins, e.g.
    ``["layers.0: add", "up1: cat"]``. Does nothing (returns the known joins) once they are known."""
    groups = getattr(model, _ROOT_ATTR)
    if len(groups):
        return join_names(model)
    was_training = model.training
    model.eval()  # one forward to look: no BatchNorm statistics move
    model.__dict__["_join_discovering"] = True
    try:
        model(inputs)
    finally:
        model.__dict__["_join_discovering"] = False
        model.train(was_training)
    found = model.__dict__.pop("_join_found", [])
    for _owner_name, _op, n in found:
        groups.append(nn.ModuleList(
            FakeQuant(QuantSpec(bits=JOIN_BITS, signed=True, symmetric=False), is_activation=True) for _ in range(n)
        ))  # fmt: skip
    model.__dict__["_join_names"] = [f"{owner or '(model)'}: {op}" for owner, op, _ in found]
    return model.__dict__["_join_names"]


def join_names(model: nn.Module) -> list[str]:
    """Where each join is, in forward order (``"layers.0: add"``), as found or as a file states them."""
    return list(model.__dict__.get("_join_names", []))


def attach_joins_(model: nn.Module, groups: list[list[FakeQuant]], names: list[str]) -> None:
    """Give ``model`` these ready join quantizers (e.g. read back from a file), one group per join."""
    attach_join_quant_(model)
    getattr(model, _ROOT_ATTR).extend(nn.ModuleList(group) for group in groups)
    model.__dict__["_join_names"] = list(names)


def join_quantizers(model: nn.Module) -> dict[str, FakeQuant]:
    """``"join_quant.<join>.<operand>"`` -> quantizer, for every join quantizer of ``model`` (empty without)."""
    if not has_join_quant(model):
        return {}
    return {
        f"{_ROOT_ATTR}.{i}.{k}": fq for i, group in enumerate(getattr(model, _ROOT_ATTR)) for k, fq in enumerate(group)
    }
