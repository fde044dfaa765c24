"""The few exchanges between ranks that torchshrink needs besides DDP's gradient all-reduce: sums, minima and
maxima, gathering tensors of different lengths, and checking that a tensor is the same on every rank.

Each one is collective: every rank must call it, in the same order, with tensors of the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist

from torchshrink.distributed.env import can_exchange, comm_device, is_distributed, world_size
from torchshrink.errors import DistributedError

__all__ = ["all_reduce_", "all_gather_varlen", "check_same_on_all_ranks"]

_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``t`` in place over all ranks with ``"sum"``, ``"min"`` or ``"max"``; returns ``t``.

    A tensor the backend cannot exchange where it lives (a CUDA tensor under gloo alone, a CPU one under NCCL
    alone) is copied to :func:`comm_device` and back. A no-op when not distributed.
    """
    if not is_distributed():
        return t
    if can_exchange(t.device):
        dist.all_reduce(t.detach(), op=_OPS[op])  # detach() shares t's storage: reduced in place
        return t
    buf = t.detach().to(comm_device())
    dist.all_reduce(buf, op=_OPS[op])
    t.detach().copy_(buf)
    return t


def all_gather_varlen(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's 1-D tensor ``t``, in rank order; the lengths may differ between ranks.

    Padded to the longest length for the exchange (gloo gathers equal sizes only) and cut back after.

    >>> [x.tolist() for x in all_gather_varlen(torch.tensor([1.0, 2.0]))]  # one process: itself
    [[1.0, 2.0]]
    """
    if not is_distributed():
        return [t]
    where = comm_device()
    n = torch.tensor([t.numel()], device=where)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=t.dtype, device=where)
    padded[: t.numel()] = t.detach().flatten().to(where)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [p[: int(s)].to(t.device) for p, s in zip(parts, sizes, strict=True)]


def check_same_on_all_ranks(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`DistributedError` on every rank, naming the entries, when any tensor differs from rank 0's.

    Rank 0's copy is broadcast and compared exactly (shapes first), then one flag per entry is reduced, so all
    ranks agree on the outcome and raise together instead of leaving one waiting for the others.

    Args:
        tensors: name (e.g. a layer's qualified name) -> tensor, the same names in the same order on every rank.
        what: what the tensors are, for the message (e.g. ``"pruning masks"``).
    """
    if not is_distributed() or not tensors:
        return
    where = comm_device()
    # (entries, 2): this rank's numel per entry, as min and max over ranks, so shapes are compared first
    sizes = torch.tensor([[t.numel(), t.numel()] for t in tensors.values()], dtype=torch.float64, device=where)
    low, high = sizes[:, 0].clone(), sizes[:, 1].clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differs = torch.zeros(len(tensors), device=where)
    for i, t in enumerate(tensors.values()):
        if low[i] != high[i]:
            differs[i] = 1
            continue
        mine = t.detach().to(where)
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        differs[i] = float(not torch.equal(reference, mine))
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    bad = [name for name, flag in zip(tensors, differs.tolist(), strict=True) if flag]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise DistributedError(
            f"{what} differ between ranks for {shown}: the ranks no longer hold the same model (non-deterministic "
            "kernels, or a rank whose data or random seed differs); rerun with the same seed on every rank"
        )
