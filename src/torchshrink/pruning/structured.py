"""Structured pruning: remove whole conv filters and rebuild the layers, so the model really shrinks.

Works on models whose Conv2d layers form a chain (each conv's output feeds, through an optional
BatchNorm2d, ReLU and pooling, into the next conv, and the last one into a Linear layer, directly after
global pooling or flattened). Filters are ranked by the L1 norm of the *effective* filter: with a
BatchNorm after the conv, each filter is scaled by ``|gamma| / sqrt(running_var + eps)``, which is the
filter the layer computes once BatchNorm is folded in. The conv, its BatchNorm and the consumer's input
channels are rebuilt smaller; the kept channels compute exactly what they computed before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["ChainLink", "conv_chain", "filter_scores", "prune_channels_", "structured_prune_"]


@dataclass
class ChainLink:
    """A conv, the BatchNorm right after it (if any), and the layer consuming its channels."""

    conv_name: str
    conv: nn.Conv2d
    bn_name: str | None
    bn: nn.BatchNorm2d | None
    consumer_name: str
    consumer: nn.Conv2d | nn.Linear


def conv_chain(model: nn.Module) -> list[ChainLink]:
    """Find the conv chain in module registration order (which is forward order for sequential models)."""
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    links: list[ChainLink] = []
    for i, (name, module) in enumerate(modules):
        if not isinstance(module, nn.Conv2d):
            continue
        if module.groups != 1:
            raise ConfigError(f"{name}: grouped convolutions are not supported by structured pruning")
        bn_name, bn, rest = None, None, modules[i + 1 :]
        if rest and isinstance(rest[0][1], nn.BatchNorm2d):
            (bn_name, bn), rest = rest[0], rest[1:]
        if not rest or isinstance(rest[0][1], nn.BatchNorm2d):
            raise ConfigError(f"{name}: no Conv2d or Linear consumes its output; structured pruning needs a chain")
        consumer_name, consumer = rest[0]
        width = consumer.in_channels if isinstance(consumer, nn.Conv2d) else consumer.in_features
        if width % module.out_channels:
            raise ConfigError(f"{name}: {module.out_channels} channels do not divide {consumer_name}'s {width} inputs")
        links.append(ChainLink(name, module, bn_name, bn, consumer_name, consumer))
    if not links:
        raise ConfigError("structured pruning found no Conv2d layer in the model")
    return links


@torch.no_grad()
def filter_scores(link: ChainLink) -> torch.Tensor:
    """L1 norm of each output filter after BatchNorm folding: shape ``(out_channels,)``."""
    norms = link.conv.weight.abs().sum(dim=(1, 2, 3))
    if link.bn is not None:
        norms = norms * link.bn.weight.abs() / torch.sqrt(link.bn.running_var + link.bn.eps)
    return norms


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    module.train(model.get_submodule(name).training)  # a rebuilt BatchNorm must keep eval mode
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def prune_channels_(model: nn.Module, link: ChainLink, keep: torch.Tensor) -> None:
    """Keep only output channels ``keep`` (sorted indices) of ``link.conv``; rebuild its BatchNorm and consumer."""
    keep = keep.sort().values
    conv = link.conv
    new_conv = nn.Conv2d(
        conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)  # fmt: skip
    new_conv.weight.copy_(conv.weight[keep])
    if conv.bias is not None:
        new_conv.bias.copy_(conv.bias[keep])
    _set(model, link.conv_name, new_conv)
    if link.bn is not None:
        bn = link.bn
        new_bn = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new_bn.to(bn.running_mean.device)
        if bn.affine:
            new_bn.weight.copy_(bn.weight[keep])
            new_bn.bias.copy_(bn.bias[keep])
        new_bn.running_mean.copy_(bn.running_mean[keep])
        new_bn.running_var.copy_(bn.running_var[keep])
        new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        _set(model, link.bn_name, new_bn)
    consumer = link.consumer
    if isinstance(consumer, nn.Conv2d):
        new = nn.Conv2d(
            len(keep), consumer.out_channels, consumer.kernel_size, consumer.stride, consumer.padding,
            consumer.dilation, bias=consumer.bias is not None, padding_mode=consumer.padding_mode,
        )  # fmt: skip
        new.weight.copy_(consumer.weight[:, keep])
    else:
        # a flattened (C, H, W) input: each channel owns a contiguous block of H*W features
        block = consumer.in_features // conv.out_channels
        cols = (keep[:, None] * block + torch.arange(block, device=keep.device)).flatten()
        new = nn.Linear(len(cols), consumer.out_features, bias=consumer.bias is not None)
        new.weight.copy_(consumer.weight[:, cols])
    new.to(consumer.weight.device, consumer.weight.dtype)
    if consumer.bias is not None:
        new.bias.copy_(consumer.bias)
    _set(model, link.consumer_name, new)


def structured_prune_(model: nn.Module, amount: float, min_channels: int = 1) -> dict[str, tuple[int, int]]:
    """Remove the fraction ``amount`` of output channels of every conv in the chain, lowest norms first.

    Returns ``{conv_name: (channels_before, channels_after)}``. The model is modified in place.
    """
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"sparsity {amount}: the fraction of channels to remove must be in [0, 1)")
    changes = {}
    for name in [link.conv_name for link in conv_chain(model)]:
        link = next(ln for ln in conv_chain(model) if ln.conv_name == name)  # re-read: consumers were rebuilt
        before = link.conv.out_channels
        n_keep = max(min_channels, before - round(amount * before))
        keep = torch.topk(filter_scores(link), n_keep, sorted=False).indices
        prune_channels_(model, link, keep)
        changes[name] = (before, n_keep)
    return changes
