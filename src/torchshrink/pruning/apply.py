"""Attach pruning masks to a model so the zeros stick, and take them off again.

A mask is a parametrization (``torch.nn.utils.parametrize``): a layer's weight is computed as
``original * mask`` on every access. Whatever an optimizer does to ``original`` (momentum, weight decay,
AdamW's moments), the weight the layer uses stays exactly zero where the mask is zero, and the gradient
reaching a pruned entry is zero. :func:`make_permanent` bakes the zeros in and removes the machinery.

Tied weights (a language model's head sharing its embedding's tensor) get one mask, ranked once, attached to
both: both uses read the same pruned values during training, after ``make_permanent`` and in the file.
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
    LayerWeight,
    check_untied,
    default_filter,
    find_parametrization,
    prunable_layers,
    tie_groups,
    warn_skipped,
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
    "independent_copy",
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


def get_mask(module: nn.Module, attr: str = "weight") -> torch.Tensor | None:
    """The mask attached to ``module.<attr>``, or ``None``."""
    mask = find_parametrization(module, Mask, attr)
    return None if mask is None else mask.mask


def _set_mask(weights: list[LayerWeight], mask: torch.Tensor) -> None:
    """Attach ``mask`` to every weight of one tie group: one ``Mask`` module shared by all of them."""
    first = weights[0]
    existing = find_parametrization(first.module, Mask, first.attr)
    mask = mask.to(device=first.stored.device, dtype=first.stored.dtype)
    if existing is not None:
        existing.mask.copy_(mask)
    else:
        existing = Mask(mask)
    for w in weights:
        if find_parametrization(w.module, Mask, w.attr) is not existing:
            parametrize.register_parametrization(w.module, w.attr, existing)


def _warn_nearly_empty(layers: dict[str, LayerWeight]) -> None:
    """One warning naming every masked weight left with no non-zero entry or under 1% of them."""
    sparse = []
    for name, w in layers.items():
        mask = get_mask(w.module, w.attr)
        if mask is None:
            continue
        kept, n = int(((w.stored != 0) & (mask != 0)).sum()), mask.numel()
        if kept == 0 or kept < SPARSE_LAYER_DENSITY * n:
            sparse.append(f"{name} ({kept} of {n} weights non-zero)")
    if sparse:
        warnings.warn(
            f"prune_ left {len(sparse)} layer(s) with no or almost no weight, so their output is (nearly) "
            f"constant: {', '.join(sparse)}. Global magnitude ranking empties layers whose weights are small; "
            "use scope='lamp' (scale-free scores never empty a layer) or min_density=0.05 (a floor per layer)",
            stacklevel=3,
        )


def _masks(layers: dict[str, LayerWeight]) -> dict[str, torch.Tensor]:
    return {name: m for name, w in layers.items() if (m := get_mask(w.module, w.attr)) is not None}


def _tied(layers: dict[str, LayerWeight]) -> dict[str, list[LayerWeight]]:
    """Each tie group under its first name (a weight that is not tied is a group of one)."""
    return {group[0]: [layers[n] for n in group] for group in tie_groups(layers)}


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
        filter_fn: ``(module, qualified_name) -> bool`` choosing the prunable layers (default: every layer of
            a known kind, :mod:`torchshrink.kinds`).

    Raises:
        ConfigError: not a :class:`PruneConfig`, an unknown layer name, no prunable layer, or a weight also held
            by a module that is not pruned (a head tied to an embedding the filter leaves out).

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> masks = prune_(model, PruneConfig(0.5))
    >>> sum(int((m == 0).sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
    (12, 24)
    """
    if not isinstance(config, PruneConfig):
        raise ConfigError(f"prune_ takes a PruneConfig, not {type(config).__name__}: e.g. PruneConfig(sparsity=0.9)")
    filter_fn = filter_fn or default_filter
    layers = prunable_layers(model, filter_fn)
    groups = _tied(layers)  # one mask per stored tensor: tied weights are ranked once
    if isinstance(config.sparsity, Mapping):
        unknown = sorted(set(config.sparsity) - set(layers))
        if unknown:
            raise ConfigError(f"no prunable layer named {unknown[0]!r}; prunable: {', '.join(layers)}")
        lead = {n: first for first, group in groups.items() for n in (w.name for w in group)}
        steps = [([lead[name]], amount) for name, amount in config.sparsity.items()]
    else:
        steps = [(list(groups), config.sparsity)]
    check_untied(model, layers, "prune_")
    warn_skipped(model, filter_fn, "prune_")
    with torch.no_grad():
        for names, amount in steps:
            weights = [groups[n][0].stored for n in names]
            previous = [get_mask(groups[n][0].module, groups[n][0].attr) for n in names]
            masks = MASKS[config.scope](weights, amount, previous)
            if config.min_density > 0:
                masks = min_density_masks(weights, masks, previous, config.min_density)
            for name, mask in zip(names, masks, strict=True):
                _set_mask(groups[name], mask)
        _warn_nearly_empty(layers)
    masks = _masks(layers)
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
    check_untied(model, layers, "prune_from_zeros_")
    for group in _tied(layers).values():
        _set_mask(group, (group[0].stored != 0).float())
    masks = _masks(layers)
    _check_ranks_agree(masks)
    return masks


@torch.no_grad()
def make_permanent(model: nn.Module) -> nn.Module:
    """Replace every masked weight by the plain tensor ``original * mask`` and drop the masks.

    The result is written into the stored tensor itself, so tied weights stay one tensor."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                if get_mask(module, attr) is not None:
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def permanent_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with masks made permanent; ``model`` itself keeps its masks.

    ``copy.deepcopy`` shares torch's generated ``Parametrized*`` classes between original and copy, and
    removing a parametrization edits that class, which would strip the original's ``weight``. So each copied
    module first gets a class of its own.
    """
    return make_permanent(independent_copy(model))


def independent_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` whose parametrized modules have classes of their own, so that removing a
    parametrization from the copy leaves the original as it is."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            cls = module.__class__
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, body)
    return clone


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
    """Per prunable weight: parameters and non-zeros of the weight the layer actually uses."""
    return [
        LayerSparsity(name, w.tensor.numel(), int((w.tensor != 0).sum()))
        for name, w in prunable_layers(model, filter_fn).items()
    ]
