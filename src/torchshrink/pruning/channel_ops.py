"""Which operations leave a tensor's channel dimension alone: the tables structured pruning trusts.

A traced model is a graph of module calls, function calls and method calls. For channel pruning each one
falls into one kind (:class:`OpKind`): it keeps dim 1 as it is (activations, pooling, dropout), combines two
tensors channel by channel (``x + y``), reduces or flattens the other dims, concatenates, or is unknown.
Only what is listed here is understood; anything else stops the channels that reach it from being pruned.
Layers with weights (Conv, BatchNorm, Linear) are handled by :mod:`torchshrink.pruning.dependency` itself.

    >>> op_kind("call_function", torch.relu)
    <OpKind.ELEMENTWISE: 'elementwise'>
    >>> op_kind("call_method", "transpose")
    <OpKind.UNKNOWN: 'unknown'>
"""

from __future__ import annotations

import enum
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OpKind", "op_kind", "module_kind", "normalize_dims"]


class OpKind(enum.Enum):
    """How an operation treats the channel dimension (dim 1) of its first tensor argument."""

    ELEMENTWISE = "elementwise"  # channel i of the output depends on channel i of the input only
    SPATIAL = "spatial"  # pooling / resizing over dims 2.. of an (N, C, ...) tensor
    BINARY = "binary"  # elementwise op of two tensors (or a tensor and a number): channels line up
    REDUCE = "reduce"  # mean / sum / amax / amin over explicit dims
    FLATTEN = "flatten"  # torch.flatten / .flatten / nn.Flatten
    RESHAPE = "reshape"  # .view / .reshape / torch.reshape: understood only as (N, -1)
    CAT = "cat"  # torch.cat and its aliases
    UNKNOWN = "unknown"


_ELEMENTWISE_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.elu, F.selu, F.celu, F.softplus, torch.sigmoid, F.sigmoid,
    torch.tanh, F.tanh, torch.clamp, torch.clip, torch.abs, torch.neg, operator.neg, torch.exp,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
}  # fmt: skip
_SPATIAL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
}  # fmt: skip
_BINARY_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
}  # fmt: skip
_FUNCTIONS: dict[Any, OpKind] = {
    **dict.fromkeys(_ELEMENTWISE_FUNCTIONS, OpKind.ELEMENTWISE),
    **dict.fromkeys(_SPATIAL_FUNCTIONS, OpKind.SPATIAL),
    **dict.fromkeys(_BINARY_FUNCTIONS, OpKind.BINARY),
    **dict.fromkeys((torch.mean, torch.sum, torch.amax, torch.amin), OpKind.REDUCE),
    torch.flatten: OpKind.FLATTEN,
    torch.reshape: OpKind.RESHAPE,
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), OpKind.CAT),
}
_METHODS: dict[str, OpKind] = {
    **dict.fromkeys(
        (
            "relu",
            "relu_",
            "sigmoid",
            "sigmoid_",
            "tanh",
            "tanh_",
            "clamp",
            "clamp_",
            "clip",
            "clip_",
            "abs",
            "neg",
            "exp",
            "contiguous",
            "clone",
            "detach",
            "float",
            "half",
            "double",
            "bfloat16",
        ),
        OpKind.ELEMENTWISE,
    ),  # fmt: skip
    **dict.fromkeys(("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"), OpKind.BINARY),
    **dict.fromkeys(("mean", "sum", "amax", "amin"), OpKind.REDUCE),
    "flatten": OpKind.FLATTEN,
    **dict.fromkeys(("view", "reshape"), OpKind.RESHAPE),
}
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)  # fmt: skip


def op_kind(op: str, target: Any) -> OpKind:
    """The kind of an fx ``call_function`` (target: the function) or ``call_method`` (target: its name)."""
    table: dict[Any, OpKind] = _FUNCTIONS if op == "call_function" else _METHODS if op == "call_method" else {}
    try:
        return table.get(target, OpKind.UNKNOWN)
    except TypeError:  # an unhashable target is nothing we know
        return OpKind.UNKNOWN


def module_kind(module: nn.Module) -> OpKind:
    """The kind of a parameter-free leaf module; exact types only, a subclass may do anything."""
    if type(module) in _ELEMENTWISE_MODULES:
        return OpKind.ELEMENTWISE
    if type(module) is nn.PReLU and module.num_parameters == 1:  # one slope for all channels
        return OpKind.ELEMENTWISE
    if type(module) in _SPATIAL_MODULES and not getattr(module, "return_indices", False):
        return OpKind.SPATIAL
    if type(module) is nn.Flatten:
        return OpKind.FLATTEN
    return OpKind.UNKNOWN


def normalize_dims(dims: Any, rank: int) -> tuple[int, ...] | None:
    """Dims as non-negative ints for a tensor of ``rank``; None if they are not plain ints in range.

    >>> normalize_dims((-1, -2), 4)
    (3, 2)
    """
    items = dims if isinstance(dims, (tuple, list)) else (dims,)
    if not items or not all(isinstance(d, int) and not isinstance(d, bool) and -rank <= d < rank for d in items):
        return None
    return tuple(d % rank for d in items)
