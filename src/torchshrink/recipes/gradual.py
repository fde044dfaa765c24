"""Gradual pruning during training (Zhu & Gupta 2017): the mask tightens every few optimizer steps along
the cubic schedule while the network keeps training, instead of prune -> retrain rounds.

The pruner is an ``after_step`` hook for :func:`torchshrink.recipes.train.fit`, so one training run (one learning
rate schedule, optionally distilled from the dense model) both prunes and recovers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from torchshrink import distributed as dist
from torchshrink.data.task import Task, as_task
from torchshrink.errors import ConfigError, check_finite
from torchshrink.pruning.apply import FilterFn, default_filter, prunable_layers, prune_, prune_from_zeros_
from torchshrink.pruning.masks import check_amount
from torchshrink.pruning.schedules import agp_schedule
from torchshrink.recipes.prune import PruneStep, achieved_sparsity
from torchshrink.recipes.train import TrainConfig, fit, val_metric

__all__ = ["GradualConfig", "GradualPruner", "gradual_prune"]


@dataclass(frozen=True)
class GradualConfig:
    """How a gradual pruning run trains. The defaults were chosen on the validation split
    (``benchmarks/pruning_recipes.py``); the command line and the study take theirs from here."""

    epochs: int = 8  # epochs of the run
    lr: float = 0.05  # peak learning rate
    distill: float = 0.7  # weight of the dense model's soft predictions in the loss (0: labels only)
    temperature: float = 2.0  # softmax temperature of those predictions (chosen on validation among 2 and 4)
    start: float = 0.0  # pruning starts at this fraction of the run ...
    end: float = 0.6  # ... and reaches the target here; the rest of the run recovers
    frequency: int = 50  # optimizer steps between mask updates

    def __post_init__(self) -> None:
        check_finite(self, "lr", "distill", "temperature", "start", "end")
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: must be positive")
        if not 0 <= self.distill <= 1:
            raise ConfigError(f"distill={self.distill}: must be in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: must be positive")
        if not 0 <= self.start < self.end <= 1:
            raise ConfigError(f"start={self.start}, end={self.end}: need 0 <= start < end <= 1 (fractions of the run)")
        if self.frequency < 1:
            raise ConfigError(f"frequency={self.frequency}: must be at least 1")


@dataclass
class GradualPruner:
    """Call after every optimizer step: between ``start_step`` and ``end_step`` it prunes to the cubic
    schedule's sparsity every ``frequency`` steps (and at ``end_step``, which reaches ``final``)."""

    final: float
    start_step: int
    end_step: int
    frequency: int = 50
    initial: float = 0.0
    scope: str = "global"
    filter_fn: FilterFn = default_filter
    step: int = 0
    updates: list[tuple[int, float]] = field(default_factory=list)  # (step, sparsity) of every mask update

    def __post_init__(self) -> None:
        check_amount(self.final)
        if not 0 <= self.start_step < self.end_step:
            raise ConfigError(f"pruning window {self.start_step}..{self.end_step}: need 0 <= start < end")
        if self.frequency < 1:
            raise ConfigError(f"frequency={self.frequency}: must be at least 1")
        rounds = math.ceil((self.end_step - self.start_step) / self.frequency)
        self._schedule = agp_schedule(self.final, rounds, self.initial)
        self._rounds = rounds

    def sparsity_at(self, step: int) -> float:
        """The schedule's sparsity after optimizer step ``step``."""
        done = min(max(step - self.start_step, 0), self.end_step - self.start_step)
        return self._schedule(math.ceil(done / self.frequency))

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        if self.step < self.start_step or self.step > self.end_step:
            return
        if (self.step - self.start_step) % self.frequency and self.step != self.end_step:
            return
        target = self.sparsity_at(self.step)
        prune_(model, target, self.scope, self.filter_fn)
        self.updates.append((self.step, target))


def _batches_per_epoch(task: Task) -> int:
    train = task.need("train", "gradual pruning")
    try:
        return len(dist.training_shard(train))  # what fit steps through: this rank's share under torchrun
    except TypeError:
        raise ConfigError("gradual pruning needs training batches with a len(): pass a DataLoader or a list") from None


def gradual_prune(
    model: nn.Module,
    task: Task,
    sparsity: float,
    train: TrainConfig,
    start: float = GradualConfig.start,
    end: float = GradualConfig.end,
    frequency: int = GradualConfig.frequency,
    scope: str = "global",
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    filter_fn: FilterFn = default_filter,
    log: Callable[[str], None] | None = print,
) -> PruneStep:
    """Train ``model`` for ``train.epochs`` epochs while pruning it from its current sparsity to ``sparsity``
    between the fractions ``start`` and ``end`` of the run; the rest of the run recovers at the final mask.

    Returns one :class:`PruneStep` (validation accuracy before and after, per-layer sparsity).
    """
    task = as_task(task)
    if not 0 <= start < end <= 1:
        raise ConfigError(f"pruning window {start}..{end}: need 0 <= start < end <= 1 (fractions of the run)")
    if not prunable_layers(model, filter_fn):
        raise ConfigError("the model has no prunable layer")
    t0 = time.perf_counter()
    before = val_metric(model, task, device)
    prune_from_zeros_(model, filter_fn)  # masks exist before the optimizer sees the parameters
    initial, _ = achieved_sparsity(model, filter_fn)
    total = train.epochs * _batches_per_epoch(task)
    pruner = GradualPruner(sparsity, int(start * total), max(int(end * total), int(start * total) + 1),
                           frequency, initial, scope, filter_fn)  # fmt: skip
    fit(model, task, train, device, after_step=pruner, teacher=teacher, log=log)
    after = val_metric(model, task, device)
    achieved, layers = achieved_sparsity(model, filter_fn)
    return PruneStep(1, sparsity, achieved, before, after, time.perf_counter() - t0, layers)
