"""Batches straight from in-memory tensors: the fastest way to feed a small dataset, and seedable, so that
a training run's shuffles and augmentations depend on its seed alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from torchshrink.distributed.shard import slice_bounds
from torchshrink.errors import ConfigError

__all__ = ["Transform", "TensorBatches"]

# (raw inputs of one batch, generator) -> model inputs; the generator draws any random augmentation
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorBatches:
    """Iterate ``(transform(x[idx]), y[idx])`` batches over tensors held in memory.

    Each iteration is one epoch; with ``shuffle`` the order is drawn from a generator that persists across
    epochs (epoch 2 continues its stream), and ``transform`` draws from the same one. ``seeded(seed)`` returns
    a copy with a fresh generator, which is what ``fit`` calls with its config's seed.

    ``shard(rank, world)`` gives one rank of a multi-process run its share: the same global batches in the same
    order, each transformed whole (so the augmentation draws match one process's) and then cut to the rank's
    contiguous slice; a last batch with fewer samples than ranks is skipped on every rank.

    Args:
        x: inputs, first dimension the samples.
        y: targets, same first dimension.
        batch_size: samples per batch; the last batch may be smaller.
        shuffle: a new random order every epoch.
        transform: applied to each batch (normalisation, augmentation).
        seed: seeds the generator.
        rank: which slice of each batch this copy yields (see ``shard``) ...
        world: ... out of how many (1: whole batches).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        transform: Transform | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        if len(x) != len(y):
            raise ConfigError(f"{len(x)} inputs but {len(y)} targets: give one target per input")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be at least 1")
        if not 0 <= rank < world:
            raise ConfigError(f"rank={rank}, world={world}: need 0 <= rank < world")
        if world > batch_size:
            raise ConfigError(f"batch_size={batch_size} is smaller than the {world} ranks sharing each batch: give a "
                              "batch size of at least the number of processes")  # fmt: skip
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.transform, self.seed = shuffle, transform, seed
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)

    def seeded(self, seed: int) -> TensorBatches:
        """The same batches with a generator seeded by ``seed``."""
        return TensorBatches(self.x, self.y, self.batch_size, shuffle=self.shuffle, transform=self.transform, seed=seed,
                             rank=self.rank, world=self.world)  # fmt: skip

    def shard(self, rank: int, world: int) -> TensorBatches:
        """Rank ``rank``'s share of these batches out of ``world`` ranks, with a fresh generator."""
        return TensorBatches(self.x, self.y, self.batch_size, shuffle=self.shuffle, transform=self.transform,
                             seed=self.seed, rank=rank, world=world)  # fmt: skip

    def __len__(self) -> int:
        if self.world == 1:
            return math.ceil(len(self.y) / self.batch_size)
        full, last = divmod(len(self.y), self.batch_size)
        return full + (1 if last >= self.world else 0)

    @property
    def samples(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator).to(self.x.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                xb, yb = self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                xb, yb = self.x[idx], self.y[idx]
            if self.transform is not None:
                xb = self.transform(xb, self.generator)
            if self.world > 1:
                if len(yb) < self.world:
                    continue  # a rank would get no sample: every rank skips it
                lo, hi = slice_bounds(len(yb), self.rank, self.world)
                xb, yb = xb[lo:hi], yb[lo:hi]
            yield xb, yb
