"""Structured pruning: remove whole conv channels and rebuild the layers, so the model really shrinks.

The model is traced with torch.fx and its channels are split into groups that must be removed together
(:mod:`torchshrink.pruning.dependency`): a conv's filters with its BatchNorm, depthwise convs and the input
channels of the layers reading them; both sides of a residual addition; the slices of a concatenation.
Each group is ranked by the L1 norm of the *effective* filters of its producer convs: with a BatchNorm
right after a conv, each filter is scaled by ``|gamma| / sqrt(running_var + eps)``, which is the filter the
layer computes once BatchNorm is folded in. Groups are pruned one after another in forward order (a
conv's score sees the input channels already removed upstream), lowest scores first; the kept channels
compute exactly what they computed before.

Groups whose channels reach something not understood (LayerNorm, a reshape, the model output...) are left
alone; :func:`structured_report` says which and why, and :func:`structured_prune_` warns about them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.layers import FilterFn
from torchshrink.pruning.config import StructuredConfig
from torchshrink.pruning.dependency import channel_graph
from torchshrink.pruning.groups import ChannelGraph, ChannelGroup
from torchshrink.pruning.rebuild import kept_positions, replace_layer, shrink_layer

__all__ = ["ChannelGroup", "filter_scores", "group_scores", "structured_report", "kept_channels", "structured_prune_",
           "check_group_names"]


def check_group_names(names: Iterable[str], prunable: list[str], where: str) -> None:
    """Refuse ``names`` that are not among the ``prunable`` channel groups' labels, listing those groups."""
    unknown = [name for name in names if name not in prunable]
    if unknown:
        raise ConfigError(f"{where}: {', '.join(map(repr, unknown))} is not a prunable channel group; its groups are "
                          f"{', '.join(prunable)}")  # fmt: skip


@torch.no_grad()
def filter_scores(conv: nn.Module, bn: nn.Module | None = None) -> torch.Tensor:
    """L1 norm of each output filter after folding ``bn`` (the BatchNorm right after ``conv``, if any).

    Returns:
        shape ``(out_channels,)``.

    Example:
        >>> conv = nn.Conv2d(1, 2, 1, bias=False); conv.weight.data[:] = 1.0
        >>> filter_scores(conv).tolist()
        [1.0, 1.0]
    """
    norms = conv.weight.abs().sum(dim=tuple(range(1, conv.weight.dim())))  # (out, in, *k) -> (out,)
    if bn is not None:
        gamma = bn.weight.abs() if bn.weight is not None else 1.0
        norms = norms * gamma / torch.sqrt(bn.running_var + bn.eps) if bn.running_var is not None else norms * gamma
    return norms


def group_scores(model: nn.Module, graph: ChannelGraph, group: ChannelGroup) -> torch.Tensor:
    """Sum over the group's producer convs of :func:`filter_scores`: shape ``(channels,)``."""
    scores = None
    for name in group.producers:
        bn_name = graph.bn_after.get(name)
        s = filter_scores(model.get_submodule(name), model.get_submodule(bn_name) if bn_name else None)
        scores = s if scores is None else scores + s.to(scores.device)
    assert scores is not None  # every group has a producer
    return scores


def structured_report(model: nn.Module) -> list[ChannelGroup]:
    """Every channel group of ``model`` in forward order, prunable or not (read only).

    A group's ``label`` is its first producer conv, ``layers`` the layers it would shrink, and ``reasons``
    why it cannot be pruned (empty when it can), e.g. ``["reaches the model output (its channels must all
    stay)"]``.

    Raises:
        ConfigError: the model cannot be traced with torch.fx, or a grouped conv reads prunable channels.
    """
    return channel_graph(model).groups


def kept_channels(before: int, amount: float, min_channels: int = 1, multiple_of: int = 1) -> int:
    """How many of ``before`` channels stay: ``before - round(amount * before)``, then rounded to the nearest
    multiple of ``multiple_of`` (halves up), at least ``max(min_channels, multiple_of)`` and at most ``before``.

    Rounding to a multiple of the CPU's vector width (16 fp32 lanes with AVX-512, 8 with AVX2) matters more
    for speed than a few channels: oneDNN's convolutions work on channel blocks of that size, and a last,
    partial block costs nearly a whole one.
    """
    n = before - round(amount * before)
    if multiple_of > 1:
        n = max(multiple_of, multiple_of * int(n / multiple_of + 0.5))
    return min(before, max(min_channels, n))


def structured_prune_(
    model: nn.Module, config: StructuredConfig, filter_fn: FilterFn | None = None
) -> dict[str, tuple[int, int]]:
    """Remove ``round(config.sparsity * C)`` of the C channels of every prunable group, lowest scores first.

    Args:
        model: changed in place: the affected layers are replaced by smaller ones of the same type.
        config: the fraction removed (one for every group, or one per group in ``layer_sparsity``), a floor on
            the channels kept and the multiple they are rounded to (see :class:`StructuredConfig`).
        filter_fn: ``(module, qualified_name) -> bool``: a group is pruned only if the filter accepts each of its
            producer convs (the layers whose filters would go; their consumers shrink with them); the groups it
            rejects are kept whole (default: every group may be pruned).

    Returns:
        ``{label: (channels_before, channels_after)}`` for each pruned group, labelled by its first
        producer conv (``"features.conv1"``). Groups that cannot be pruned are left out and named in a warning.

    Raises:
        ConfigError: not a :class:`StructuredConfig`, the model cannot be traced, a ``layer_sparsity`` name is
            not a prunable group, or no group can be pruned (the message lists each group and why).
    """
    if not isinstance(config, StructuredConfig):
        raise ConfigError(f"structured_prune_ takes a StructuredConfig, not {type(config).__name__}: e.g. "
                          "StructuredConfig(sparsity=0.5)")  # fmt: skip
    graph = channel_graph(model)
    if not graph.groups:
        raise ConfigError("structured pruning found no Conv1d/Conv2d/Conv3d layer (groups=1) in the model")
    chosen = [g for g in graph.groups
              if filter_fn is None or all(filter_fn(model.get_submodule(n), n) for n in g.producers)]  # fmt: skip
    check_group_names(config.layer_sparsity, [g.label for g in chosen if g.prunable], "layer_sparsity")
    skipped = [g for g in chosen if not g.prunable]
    if len(skipped) == len(chosen):
        why = _describe(skipped) or "filter_fn accepts no group"
        raise ConfigError(f"structured pruning found no prunable channels: {why}")
    if skipped:
        warnings.warn(
            f"structured pruning left {len(skipped)} channel group(s) whole: {_describe(skipped)}", stacklevel=2
        )
    sizes = [g.channels for g in graph.groups]
    changes = {}
    for group in chosen:
        if not group.prunable:
            continue
        before = sizes[group.index]
        amount = config.layer_sparsity.get(group.label, config.sparsity)
        n_keep = kept_channels(before, amount, config.min_channels, config.multiple_of)
        changes[group.label] = (before, n_keep)
        if n_keep == before:
            continue
        keep = torch.topk(group_scores(model, graph, group), n_keep, sorted=False).indices.sort().values.cpu()
        for slot in graph.slots_of(group.index):
            layer = shrink_layer(
                model.get_submodule(slot.layer), slot.axis, kept_positions(slot, group.index, keep, sizes)
            )
            replace_layer(model, slot.layer, layer)
        sizes[group.index] = n_keep
    return changes


def _describe(groups: list[ChannelGroup]) -> str:
    return "; ".join(f"{g.label} ({g.channels} channels): {', '.join(g.reasons)}" for g in groups)
