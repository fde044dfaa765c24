"""Attach pruning masks to a model so the zeros stick, and take them off again.

A mask is a parametrization (``torch.nn.utils.parametrize``): the layer's ``weight`` is computed as
``original * mask`` on every access. Whatever an optimizer does to ``original`` (momentum, weight decay,
AdamW's moments), the weight the layer uses stays exactly zero where the mask is zero, and the gradient
reaching a pruned entry is zero. :func:`make_permanent` bakes the zeros in and removes the machinery.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink import distributed as dist
from torchshrink.errors import ConfigError
from torchshrink.layers import (
    FilterFn,
    default_filter,
    find_parametrization,
    prunable_layers,
    stored_weight,
    warn_skipped,
    weight_ties,
)
from torchshrink.pruning.config import PruneConfig
from torchshrink.pruning.masks import MASKS, min_density_masks

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

SPARSE_LAYER_DENSITY = 0.01  # a layer keeping less than this fraction of its weights is reported after pruning


class Mask(nn.Module):
    """Parametrization ``weight = original * mask``; the mask is a buffer, so it is saved with the model."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _check_untied(model: nn.Module, layers: dict[str, nn.Module]) -> None:
    # a mask on a weight another module also reads would prune that module too once made permanent (an
    # embedding tied to a language model's head becoming mostly zeros), while during training only the masked
    # layer would see the zeros: refused by name rather than a silently different model
    ties = weight_ties(model, layers)
    if ties:
        name, others = next(iter(ties.items()))
        raise ConfigError(
            f"{name}.weight is the same tensor as {', '.join(others)}: a mask on one would change the other. "
            f"Leave {name} out with filter_fn, or untie them (give {name} its own copy of the weight)"
        )


def get_mask(module: nn.Module) -> torch.Tensor | None:
    """The mask attached to ``module.weight``, or ``None``."""
    mask = find_parametrization(module, Mask)
    return None if mask is None else mask.mask


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    existing = get_mask(module)
    mask = mask.to(device=stored_weight(module).device, dtype=stored_weight(module).dtype)
    if existing is not None:
        existing.copy_(mask)
    else:
        parametrize.register_parametrization(module, "weight", Mask(mask))


def _warn_nearly_empty(layers: dict[str, nn.Module]) -> None:
    """One warning naming every masked layer left with no non-zero weight or under 1% of them."""
    sparse = []
    for name, layer in layers.items():
        mask = get_mask(layer)
        if mask is None:
            continue
        kept, n = int(((stored_weight(layer) != 0) & (mask != 0)).sum()), mask.numel()
        if kept == 0 or kept < SPARSE_LAYER_DENSITY * n:
            sparse.append(f"{name} ({kept} of {n} weights non-zero)")
    if sparse:
        warnings.warn(
            f"prune_ left {len(sparse)} layer(s) with no or almost no weight, so their output is (nearly) "
            f"constant: {', '.join(sparse)}. Global magnitude ranking empties layers whose weights are small; "
            "use scope='lamp' (scale-free scores never empty a layer) or min_density=0.05 (a floor per layer)",
            stacklevel=3,
        )


def prune_(model: nn.Module, config: PruneConfig, filter_fn: FilterFn | None = None) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place by weight magnitude and return the masks by layer name.

    Masks already attached are respected: a weight once pruned is never revived. So a layer whose previous
    mask pruned more than ``config.sparsity`` asks for keeps its previous zeros and ends above the request.

    Warns (one warning each) about weight-like parameters no accepted layer covers (they stay dense; see
    :func:`torchshrink.layers.skipped_layers`) and about layers left with no or under 1% non-zero weights.

    Args:
        config: the sparsity (one fraction, or a dict per layer with ``scope="layer"``: layers not named keep
            their current mask), the scope of the ranking and a floor per layer (see :class:`PruneConfig`).
            ``min_density`` may leave the total sparsity a little under the request.
        filter_fn: ``(module, qualified_name) -> bool`` choosing the prunable layers (default: every conv and
            linear layer).

    Raises:
        ConfigError: not a :class:`PruneConfig`, an unknown layer name, or no prunable layer.

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> masks = prune_(model, PruneConfig(0.5))
    >>> sum(int((m == 0).sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    (12, 24)
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"prune_ takes a PruneConfig, not {type(config).__name__}: e.g. PruneConfig(sparsity=0.9)")
    filter_fn = filter_fn or default_filter
    layers = prunable_layers(model, filter_fn)
    if isinstance(config.sparsity, Mapping):
        unknown = sorted(set(config.sparsity) - set(layers))
        if unknown:
            raise ConfigError(f"no prunable layer named {unknown[0]!r}; prunable: {', '.join(layers)}")
        groups = [([name], amount) for name, amount in config.sparsity.items()]
    else:
        groups = [(list(layers), config.sparsity)]
    _check_untied(model, layers)
    warn_skipped(model, filter_fn, "prune_")
    with torch.no_grad():
        for names, amount in groups:
            weights = [stored_weight(layers[n]) for n in names]
            previous = [get_mask(layers[n]) for n in names]
            masks = MASKS[config.scope](weights, amount, previous)
            if config.min_density > 0:
                masks = min_density_masks(weights, masks, previous, config.min_density)
            for name, mask in zip(names, masks, strict=True):
                _set_mask(layers[name], mask)
        _warn_nearly_empty(layers)
    masks = {name: get_mask(module) for name, module in layers.items() if get_mask(module) is not None}
    _check_ranks_agree(masks)
    return masks


def _check_ranks_agree(masks: dict[str, torch.Tensor]) -> None:
    # under torchrun each rank computes its masks from its own copy of the weights, which DDP keeps identical;
    # a rank that drifted would silently train another network, so it is an error naming the layers
    if dist.is_distributed():
        dist.check_same_on_all_ranks(masks, "pruning masks")


@torch.no_grad()
def prune_from_zeros_(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, torch.Tensor]:
    """Attach masks that keep exactly the non-zero weights (to resume work on a saved pruned model)."""
    layers = prunable_layers(model, filter_fn)
    _check_untied(model, layers)
    for module in layers.values():
        _set_mask(module, (stored_weight(module) != 0).float())
    masks = {name: get_mask(module) for name, module in layers.items()}
    _check_ranks_agree(masks)
    return masks


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
