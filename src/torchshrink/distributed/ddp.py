"""Wrapping a model in PyTorch's DistributedDataParallel, and what DDP leaves to us: BatchNorm statistics.

Attach every parametrization (pruning masks, fake quant, codebooks) BEFORE wrapping: DDP reduces the
gradients of the parameters it saw when it was built, ``original`` and LSQ scales included. ``fit`` wraps the
model anew each time it is called, so pruning or quantizing between two calls is always seen.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchshrink.distributed.collectives import all_reduce_
from torchshrink.distributed.env import is_distributed, world_size

__all__ = ["wrap_ddp", "average_batchnorm_stats_"]


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP (a no-op returning ``model`` when not distributed).

    DDP broadcasts rank 0's parameters and buffers when it is built, so every rank starts from the same
    weights, masks and quantizer ranges. ``forward_sync_buffers=False``: it would otherwise re-send every buffer
    (masks included) before each forward; the BatchNorm running statistics, the only buffers training changes,
    are averaged by :func:`average_batchnorm_stats_` instead. ``static_graph=True``: the same parameters take
    part in every step, and DDP learns in the first one which never do (the ``original`` weight under a
    codebook, whose forward reads only the centroids) instead of waiting for their gradients forever.
    """
    if not is_distributed():
        return model
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False, static_graph=True)


@torch.no_grad()
def average_batchnorm_stats_(model: nn.Module) -> None:
    """Average every BatchNorm's running mean and variance over the ranks (each rank saw its own batches)."""
    if not is_distributed():
        return
    n = world_size()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            all_reduce_(m.running_mean).div_(n)
            all_reduce_(m.running_var).div_(n)
