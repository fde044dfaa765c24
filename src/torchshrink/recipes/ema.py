"""An exponential moving average of a model's weights during training (Polyak averaging).

The average follows the trained parameters and BatchNorm running statistics; it is what ``fit`` validates
each epoch and leaves in the model at the end when ``TrainConfig.ema`` is set. Other buffers (pruning masks,
quantizer observations) are never averaged: a mask averaged over its updates would no longer be a mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["WeightAverage"]


def _averaged_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The trained parameters, then the running mean and variance of every BatchNorm layer."""
    tensors = [p for p in model.parameters() if p.requires_grad]
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            tensors += [m.running_mean, m.running_var]
    return tensors


class WeightAverage:
    """``avg <- d * avg + (1 - d) * w`` after every step, with ``d = min(decay, (1 + t) / (10 + t))`` at step
    ``t`` so that the first steps, far from the end of training, weigh little for long (as in TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self._live = _averaged_tensors(model)
        self._avg = [t.detach().clone() for t in self._live]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(self._avg, [t.detach() for t in self._live], 1 - d)

    @torch.no_grad()
    def _swap(self) -> None:
        for live, avg in zip(self._live, self._avg, strict=True):
            tmp = live.detach().clone()
            live.copy_(avg)
            avg.copy_(tmp)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model inside the block, the trained ones back after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Leave the averaged weights in the model (the end of training)."""
        for live, avg in zip(self._live, self._avg, strict=True):
            live.copy_(avg)
