"""Which layers of a model torchshrink prunes and quantizes, and which weights it leaves alone, and why.

One place decides this for pruning and quantization alike: a layer is accepted when ``filter_fn(module,
qualified_name)`` says so and it has a ``weight`` tensor. :func:`default_filter` accepts every convolution
(1-D, 2-D, 3-D, grouped, depthwise, transposed) and every ``nn.Linear`` (the ``out_proj`` of
``nn.MultiheadAttention`` included). Any other weight-like parameter (2-D or more) stays in float, and
:func:`skipped_layers` says which and why, so nothing is skipped silently.

This module sits below :mod:`torchshrink.pruning` and :mod:`torchshrink.quant` and imports neither.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError

__all__ = [
    "FilterFn",
    "CONVS",
    "CONV_TRANSPOSES",
    "BATCH_NORMS",
    "NORMS",
    "SUPPORTED_LAYERS",
    "LEAF_LAYERS",
    "default_filter",
    "prunable_layers",
    "skipped_layers",
    "warn_skipped",
    "find_parametrization",
    "stored_weight",
    "weight_ties",
    "FILTER_REJECTED",
]

FilterFn = Callable[[nn.Module, str], bool]  # (module, qualified name) -> accept?

# The layer kinds, in one place: what pruning, quantization, folding, the tracer and the exporter call a layer.
CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # weight (out, in / groups, *kernel)
CONV_TRANSPOSES: tuple[type[nn.Module], ...] = (  # weight (in, out / groups, *kernel)
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # foldable into a conv
NORMS: tuple[type[nn.Module], ...] = (*BATCH_NORMS, nn.SyncBatchNorm)  # per-channel norms channels flow through
# nn.Linear covers its subclasses, e.g. NonDynamicallyQuantizableLinear (the out_proj of MultiheadAttention)
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (*CONVS, *CONV_TRANSPOSES, nn.Linear)  # pruned and quantized
LEAF_LAYERS: tuple[type[nn.Module], ...] = (*SUPPORTED_LAYERS, *NORMS)  # single nodes in a traced graph

FILTER_REJECTED = "rejected by filter_fn"
_MHA_REASON = (
    "raw projection parameter inside nn.MultiheadAttention: not a layer torchshrink can parametrize; left in float"
)
_MHA_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
# the stored tensor of a parametrized attribute: '<owner>.parametrizations.<attr>.original' (original0.. if split)
_PARAMETRIZED = re.compile(r"^(?:(?P<owner>.*)\.)?parametrizations\.(?P<attr>[^.]+)\.original\d*$")

P = TypeVar("P", bound=nn.Module)


def default_filter(module: nn.Module, name: str) -> bool:
    """Accept convolutions (1-D/2-D/3-D, grouped, depthwise, transposed) and linear layers; nothing else.

    Example::

        >>> default_filter(nn.Conv1d(2, 4, 3), "conv"), default_filter(nn.LayerNorm(4), "norm")
        (True, False)
    """
    return isinstance(module, SUPPORTED_LAYERS)


def _has_weight_tensor(module: nn.Module) -> bool:
    # a parametrized weight is a tensor; reading it would run the parametrizations, so don't
    if parametrize.is_parametrized(module, "weight"):
        return True
    return isinstance(getattr(module, "weight", None), torch.Tensor)


def _accepted(module: nn.Module, name: str, filter_fn: FilterFn) -> bool:
    return bool(name) and _has_weight_tensor(module) and filter_fn(module, name)


def prunable_layers(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, nn.Module]:
    """Qualified name -> module for every layer ``filter_fn`` accepts that has a ``weight``, in model order.

    Raises:
        ConfigError: no layer is accepted; the message lists the module types the model has.
    """
    layers = {name: module for name, module in model.named_modules() if _accepted(module, name, filter_fn)}
    if not layers:
        seen = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            "no prunable layer: the filter accepted no module with a weight (the default accepts Conv1d/2d/3d, "
            f"ConvTranspose1d/2d/3d and Linear); module types in the model: {', '.join(seen)}"
        )
    return layers


def _weight_like_parameters(model: nn.Module) -> list[tuple[str, str, str, torch.Tensor]]:
    """``(qualified name, owner module name, attribute, tensor)`` of every parameter with 2 or more dims."""
    out = []
    for qualified, p in model.named_parameters():
        if p.ndim < 2:
            continue
        match = _PARAMETRIZED.match(qualified)
        if match:
            owner, attr = match["owner"] or "", match["attr"]
            qualified = f"{owner}.{attr}" if owner else attr
        elif ".parametrizations." in f".{qualified}":
            continue  # the state of a parametrization itself (e.g. a codebook), not a model weight
        else:
            owner, _, attr = qualified.rpartition(".")
        out.append((qualified, owner, attr, p))
    return out


def skipped_layers(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, str]:
    """Qualified parameter name -> reason, for every weight-like parameter (2 or more dims) that no accepted
    layer covers: it is neither pruned nor quantized and stays in float.

    1-D parameters (biases, LayerNorm and BatchNorm affine parameters) are never listed. The reason is
    :data:`FILTER_REJECTED` (``"rejected by filter_fn"``) for a layer of a supported type that ``filter_fn``
    turned down, i.e. a deliberate choice. Example::

        >>> skipped_layers(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))
        {'0.weight': 'embedding: not pruned or quantized'}
    """
    modules = dict(model.named_modules())
    skipped: dict[str, str] = {}
    for qualified, owner_name, attr, _ in _weight_like_parameters(model):
        owner = modules[owner_name]
        if attr == "weight" and _accepted(owner, owner_name, filter_fn):
            continue
        if isinstance(owner, nn.MultiheadAttention) and attr in _MHA_PROJECTIONS:
            reason = _MHA_REASON
        elif isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
            reason = "embedding: not pruned or quantized"
        elif attr == "weight" and default_filter(owner, owner_name):
            reason = FILTER_REJECTED
        elif attr == "weight":
            reason = f"{type(owner).__name__} is not a layer type torchshrink prunes or quantizes; left in float"
        else:
            reason = f"{attr!r} of {type(owner).__name__}: only a layer's 'weight' is pruned or quantized"
        skipped[qualified] = reason
    return skipped


def warn_skipped(
    model: nn.Module,
    filter_fn: FilterFn,
    action: str,
    extra: Mapping[str, str] | None = None,
    stacklevel: int = 3,
) -> dict[str, str]:
    """Emit one ``warnings.warn`` listing the weights ``action`` leaves alone (plus ``extra`` entries),
    unless the only reason is :data:`FILTER_REJECTED`. Returns what was listed.

    Args:
        action: what the caller does, for the message, e.g. ``"prune_"``.
        extra: more ``name -> reason`` entries from the caller (e.g. inputs it could not quantize).
        stacklevel: passed to ``warnings.warn``; the default points at the caller's caller (the user's code).
    """
    listed = {n: r for n, r in skipped_layers(model, filter_fn).items() if r != FILTER_REJECTED}
    listed.update(extra or {})
    if listed:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in listed.items())
        warnings.warn(f"{action} left {len(listed)} weight(s) or input(s) untouched:\n{lines}", stacklevel=stacklevel)
    return listed


def find_parametrization(module: nn.Module, kind: type[P], name: str = "weight") -> P | None:
    """The first parametrization of type ``kind`` on ``module.<name>``, or ``None``."""
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, kind):
                return p
    return None


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The tensor a layer's ``weight`` is stored in: the parametrization's original where there is one."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def weight_ties(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, list[str]]:
    """For each of ``layers`` whose weight tensor another module also holds (a language model's head tied to its
    embedding), the names of those other holders. A module reached under two names is one layer, not a tie.

    >>> emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    >>> head.weight = emb.weight
    >>> weight_ties(nn.ModuleDict({"emb": emb, "head": head}), {"head": head})
    {'head': ['emb.weight']}
    """
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # the original of a parametrized weight: its layer is the holder, found through stored_weight
        for pname, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((module, f"{name}.{pname}" if name else pname))
    ties = {}
    for name, layer in layers.items():
        others = [label for module, label in holders.get(id(stored_weight(layer)), []) if module is not layer]
        if others:
            ties[name] = others
    return ties
