"""Rebuild a layer with fewer channels, copying the kept slices of its weights.

The new layer has the old one's type, hyper-parameters (stride, padding, padding_mode, eps, ...), bias
presence, device, dtype, ``requires_grad`` flags and training flag; only the channel count changes.

    >>> conv = nn.Conv2d(3, 8, 3)
    >>> shrink_layer(conv, "out", torch.tensor([0, 2, 5])).weight.shape
    torch.Size([3, 3, 3, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.layers import CONV_TRANSPOSES, CONVS, NORMS
from torchshrink.pruning.groups import LayerSlot

__all__ = ["kept_positions", "shrink_layer", "replace_layer"]


def kept_positions(slot: LayerSlot, group: int, keep: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Indices along ``slot``'s axis that survive when ``group`` keeps channels ``keep`` (sorted).

    Args:
        slot: the layer axis, made of segments of groups laid side by side.
        group: the group being pruned; the other groups keep all their channels.
        keep: kept channel indices within ``group``.
        sizes: the current channel count of every group.

    Example: segments (A: 4, B: 2), keep A's channels [1, 3] -> positions [1, 3, 4, 5]; with block 2
    (a Linear after flatten) -> [2, 3, 6, 7, 8, 9, 10, 11].
    """
    parts, offset = [], 0
    for g in slot.groups:
        parts.append(offset + (keep if g == group else torch.arange(sizes[g])))
        offset += sizes[g]
    channels = torch.cat(parts)
    if slot.block == 1:
        return channels
    return (channels[:, None] * slot.block + torch.arange(slot.block)).flatten()  # (kept, block) -> features


@torch.no_grad()
def shrink_layer(layer: nn.Module, axis: str, keep: torch.Tensor) -> nn.Module:
    """A copy of ``layer`` keeping only positions ``keep`` along ``axis`` (see :class:`LayerSlot`)."""
    kind, n = type(layer), len(keep)
    tensors = [*layer.parameters(), *(b for b in layer.buffers() if b.is_floating_point())]
    keep = keep.to(tensors[0].device if tensors else "cpu")
    factory = {"device": keep.device, "dtype": tensors[0].dtype if tensors else torch.get_default_dtype()}
    if kind in CONVS:
        depthwise = layer.groups > 1  # the graph only lets depthwise convs (groups == in == out) through
        cin = n if axis == "in" or depthwise else layer.in_channels
        cout = n if axis == "out" else layer.out_channels
        new = torch.nn.utils.skip_init(
            kind, cin, cout, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            n if depthwise else 1, layer.bias is not None, layer.padding_mode, **factory,
        )  # fmt: skip
        _copy(new.weight, layer.weight, keep if axis == "out" else (slice(None), keep))
        _copy(new.bias, layer.bias, keep if axis == "out" else slice(None))
    elif kind in CONV_TRANSPOSES and axis == "in":  # weight: (in, out / groups, *kernel)
        new = torch.nn.utils.skip_init(
            kind, n, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.output_padding,
            layer.groups, layer.bias is not None, layer.dilation, layer.padding_mode, **factory,
        )  # fmt: skip
        _copy(new.weight, layer.weight, keep)
        _copy(new.bias, layer.bias, slice(None))
    elif kind in NORMS and axis == "out":
        if kind is nn.SyncBatchNorm:
            factory["process_group"] = layer.process_group
        new = torch.nn.utils.skip_init(
            kind, n, layer.eps, layer.momentum, layer.affine, layer.track_running_stats, **factory
        )
        for name in ("weight", "bias", "running_mean", "running_var"):
            _copy(getattr(new, name), getattr(layer, name), keep)
        _copy(new.num_batches_tracked, layer.num_batches_tracked, ...)
    elif kind is nn.Linear and axis == "in":
        new = torch.nn.utils.skip_init(nn.Linear, n, layer.out_features, layer.bias is not None, **factory)
        _copy(new.weight, layer.weight, (slice(None), keep))
        _copy(new.bias, layer.bias, slice(None))
    else:
        raise TypeError(f"cannot shrink the {axis} axis of a {kind.__name__}")  # the graph never asks this
    return new.train(layer.training)


def replace_layer(model: nn.Module, name: str, layer: nn.Module) -> None:
    """Put ``layer`` at qualified ``name`` in ``model``, keeping the user's module tree and names."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def _copy(dst: torch.Tensor | None, src: torch.Tensor | None, index: object) -> None:
    if dst is None or src is None:  # no bias, no affine, no running stats
        return
    dst.copy_(src[index])
    if isinstance(dst, nn.Parameter):
        dst.requires_grad_(src.requires_grad)
