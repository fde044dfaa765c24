"""Attach pruning masks to a model so the zeros stick, and take them off again.

A mask is a parametrization (``torch.nn.utils.parametrize``): the layer's ``weight`` is computed as
``original * mask`` on every access. Whatever an optimizer does to ``original`` (momentum, weight decay,
AdamW's moments), the weight the layer uses stays exactly zero where the mask is zero, and the gradient
reaching a pruned entry is zero. :func:`make_permanent` bakes the zeros in and removes the machinery.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.parametrizations import find_parametrization
from torchshrink.pruning.masks import check_amount, global_magnitude_masks, lamp_masks, layer_magnitude_mask

__all__ = [
    "FilterFn",
    "default_filter",
    "prunable_layers",
    "Mask",
    "get_mask",
    "prune_",
    "prune_from_zeros_",
    "make_permanent",
    "permanent_copy",
    "LayerSparsity",
    "sparsity_report",
]

FilterFn = Callable[[nn.Module, str], bool]


def default_filter(module: nn.Module, name: str) -> bool:
    """Conv2d and Linear weights are prunable; biases, BatchNorm and everything else are left alone."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


def prunable_layers(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, nn.Module]:
    """Qualified name -> module for every layer ``filter_fn`` accepts that has a ``weight``."""
    layers = {
        name: module
        for name, module in model.named_modules()
        if name and hasattr(module, "weight") and isinstance(_weight(module), torch.Tensor) and filter_fn(module, name)
    }
    if not layers:
        raise ConfigError("no prunable layer: the model has no Conv2d/Linear layer accepted by the filter")
    return layers


class Mask(nn.Module):
    """Parametrization ``weight = original * mask``; the mask is a buffer, so it is saved with the model."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The mask attached to ``module.weight``, or ``None``."""
    mask = find_parametrization(module, Mask)
    return None if mask is None else mask.mask


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    existing = get_mask(module)
    mask = mask.to(device=_weight(module).device, dtype=_weight(module).dtype)
    if existing is not None:
        existing.copy_(mask)
    else:
        parametrize.register_parametrization(module, "weight", Mask(mask))


@torch.no_grad()
def prune_(
    model: nn.Module,
    sparsity: float | dict[str, float],
    scope: str = "global",
    filter_fn: FilterFn = default_filter,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place by weight magnitude and return the masks by layer name.

    Args:
        sparsity: the fraction of zeros to reach; with ``scope="layer"`` it may be a dict of per-layer
            sparsities (layers not named keep their current mask).
        scope: ``"global"`` ranks all prunable weights together by magnitude, ``"lamp"`` together by
            layer-adaptive (scale-free) magnitude, ``"layer"`` ranks each layer alone.
        filter_fn: ``(module, qualified_name) -> bool`` choosing the prunable layers.

    Masks already attached are respected: a weight once pruned is never revived.
    """
    layers = prunable_layers(model, filter_fn)
    if scope in ("global", "lamp"):
        if isinstance(sparsity, dict):
            raise ConfigError("per-layer sparsities need scope='layer'")
        names = list(layers)
        scores = [_weight(layers[n]) for n in names]
        rank = global_magnitude_masks if scope == "global" else lamp_masks
        masks = rank(scores, check_amount(sparsity), [get_mask(layers[n]) for n in names])
        plan = dict(zip(names, masks, strict=True))
    elif scope == "layer":
        amounts = sparsity if isinstance(sparsity, dict) else dict.fromkeys(layers, sparsity)
        unknown = sorted(set(amounts) - set(layers))
        if unknown:
            raise ConfigError(f"no prunable layer named {unknown[0]!r}; prunable: {', '.join(layers)}")
        plan = {
            n: layer_magnitude_mask(_weight(layers[n]), check_amount(a), get_mask(layers[n]))
            for n, a in amounts.items()
        }
    else:
        raise ConfigError(f"scope {scope!r}: choose 'global', 'lamp' or 'layer'")
    for name, mask in plan.items():
        _set_mask(layers[name], mask)
    return {name: get_mask(module) for name, module in layers.items() if get_mask(module) is not None}


@torch.no_grad()
def prune_from_zeros_(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, torch.Tensor]:
    """Attach masks that keep exactly the non-zero weights (to resume work on a saved pruned model)."""
    layers = prunable_layers(model, filter_fn)
    for module in layers.values():
        _set_mask(module, (_weight(module) != 0).float())
    return {name: get_mask(module) for name, module in layers.items()}


@torch.no_grad()
def make_permanent(model: nn.Module) -> nn.Module:
    """Replace every masked weight by the plain tensor ``original * mask`` and drop the masks."""
    for module in model.modules():
        if get_mask(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def permanent_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with masks made permanent; ``model`` itself keeps its masks.

    ``copy.deepcopy`` shares torch's generated ``Parametrized*`` classes between original and copy, and
    removing a parametrization edits that class, which would strip the original's ``weight``. So each copied
    module first gets a class of its own.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            cls = module.__class__
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    return make_permanent(clone)


@dataclass(frozen=True)
class LayerSparsity:
    """Parameters, non-zeros and sparsity of one layer's weight."""

    name: str
    params: int
    nonzeros: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "sparsity": self.sparsity}


@torch.no_grad()
def sparsity_report(model: nn.Module, filter_fn: FilterFn = default_filter) -> list[LayerSparsity]:
    """Per prunable layer: weight parameters and non-zeros of the weight the layer actually uses."""
    return [
        LayerSparsity(name, m.weight.numel(), int((m.weight != 0).sum()))
        for name, m in prunable_layers(model, filter_fn).items()
    ]
