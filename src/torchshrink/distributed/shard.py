"""Each rank's share of the data: the contiguous slice ``rank`` of every global batch.

Every rank walks the same global batches in the same order (same seed, same shuffle, same augmentation draws)
and keeps its slice of each, so two ranks with halves of a batch of B see exactly the samples one process sees
in its batch of B, and DDP's averaged gradient is that one process's gradient.

A global batch with fewer samples than ranks (a tiny last batch) is skipped on every rank: a rank with no
sample could not take a step, and all ranks must take the same number of steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from torchshrink.distributed.env import is_distributed, rank, world_size
from torchshrink.errors import ConfigError

__all__ = ["Shardable", "slice_bounds", "shard_batch", "BatchSlices", "training_shard", "evaluation_shard", "set_epoch"]


@runtime_checkable
class Shardable(Protocol):
    """Batches that know how to give one rank its share (:class:`torchshrink.data.TensorBatches` do)."""

    def shard(self, rank: int, world: int) -> Iterable[Any]: ...


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous slice of ``n`` samples; the first ``n % world`` ranks
    take one more (``torch.tensor_split``'s rule).

    >>> [slice_bounds(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(first, torch.Tensor):
        raise ConfigError(f"a batch of {type(first).__name__}: expected a tensor or an (inputs, targets) tuple")
    return len(first)


def shard_batch(batch: Any, rank: int, world: int) -> Any:
    """Rank ``rank``'s slice of a tensor or of each tensor of an ``(inputs, targets, ...)`` batch."""
    start, stop = slice_bounds(_size(batch), rank, world)
    if isinstance(batch, (tuple, list)):
        return type(batch)(t[start:stop] if isinstance(t, torch.Tensor) else t for t in batch)
    return batch[start:stop]


class BatchSlices:
    """A list of batches seen through one rank's slice of each (global batches smaller than ``world`` skipped)."""

    def __init__(self, batches: Sequence[Any], rank: int, world: int):
        self.batches = [b for b in batches if _size(b) >= world]
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield shard_batch(batch, self.rank, self.world)


def _sampler(batches: Any) -> Any:
    return getattr(batches, "sampler", None) if isinstance(batches, torch.utils.data.DataLoader) else None


def training_shard(batches: Iterable[Any]) -> Iterable[Any]:
    """This rank's training batches: the batches themselves when not distributed.

    Shardable batches and lists of batches are split as described above; a ``DataLoader`` must already draw
    through a ``DistributedSampler`` (its sampler then gives each rank its share). Anything else cannot be split
    without knowing how it was made, and is refused.

    Raises:
        ConfigError: batches of a kind that cannot be split, named with the fix.
    """
    if not is_distributed():
        return batches
    if isinstance(batches, Shardable):
        return batches.shard(rank(), world_size())
    if isinstance(batches, torch.utils.data.DataLoader):
        if isinstance(_sampler(batches), torch.utils.data.distributed.DistributedSampler):
            return batches
        raise ConfigError(
            f"a DataLoader without a DistributedSampler under {world_size()} ranks: every rank would train on all "
            "the data; build it with sampler=torch.utils.data.distributed.DistributedSampler(dataset, "
            "shuffle=True, seed=SEED) (torchshrink calls set_epoch on it every epoch)"
        )
    if isinstance(batches, (list, tuple)):
        return BatchSlices(batches, rank(), world_size())
    raise ConfigError(
        f"training batches of type {type(batches).__name__} cannot be split between {world_size()} ranks: pass "
        "torchshrink.data.TensorBatches, a list of batches, or a DataLoader with a DistributedSampler"
    )


def evaluation_shard(batches: Iterable[Any]) -> Iterable[Any]:
    """This rank's evaluation batches. Shardable batches and lists are split; anything else (a
    ``DataLoader``, split by its sampler or not) is evaluated as it comes. Summed scores reduced over the ranks
    then give the metric over all the data either way: shards add up to the data, and W whole copies
    divide out with W times the sample count."""
    if not is_distributed():
        return batches
    if isinstance(batches, Shardable):
        return batches.shard(rank(), world_size())
    if isinstance(batches, (list, tuple)):
        return BatchSlices(batches, rank(), world_size())
    return batches


def set_epoch(batches: Iterable[Any], epoch: int) -> None:
    """Reshuffle a ``DistributedSampler`` for ``epoch`` (it repeats epoch 0's order otherwise)."""
    sampler = _sampler(batches)
    if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
        sampler.set_epoch(epoch)
