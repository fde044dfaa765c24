"""Batches straight from in-memory tensors: the fastest way to feed a small dataset, and seedable, so that
a training run's shuffles and augmentations depend on its seed alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

__all__ = ["Transform", "TensorBatches"]

# (raw inputs of one batch, generator) -> model inputs; the generator draws any random augmentation
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TensorBatches:
    """Iterate ``(transform(x[idx]), y[idx])`` batches over tensors held in memory.

    Each iteration is one epoch; with ``shuffle`` the order is drawn from a generator that persists across
    epochs (epoch 2 continues its stream), and ``transform`` draws from the same one. ``seeded(seed)`` returns
    a copy with a fresh generator, which is what ``fit`` calls with its config's seed.

    Args:
        x: inputs, first dimension the samples.
        y: targets, same first dimension.
        batch_size: samples per batch; the last batch may be smaller.
        shuffle: a new random order every epoch.
        transform: applied to each batch (normalisation, augmentation).
        seed: seeds the generator.
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
    ):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.transform, self.seed = shuffle, transform, seed
        self.generator = torch.Generator().manual_seed(seed)

    def seeded(self, seed: int) -> TensorBatches:
        """The same batches with a generator seeded by ``seed``."""
        return TensorBatches(self.x, self.y, self.batch_size, shuffle=self.shuffle, transform=self.transform, seed=seed)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

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
            yield xb, yb
