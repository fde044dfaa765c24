"""Gradual pruning during training (Zhu & Gupta 2017): the mask tightens every few optimizer steps along
the cubic schedule while the network keeps training, instead of prune -> retrain rounds.

The pruner is an ``after_step`` hook for :func:`torchshrink.recipes.train.fit`, so one training run (one learning
rate schedule, optionally distilled from the dense model) both prunes and recovers.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from torchshrink import distributed as dist
from torchshrink.data.task import Task, as_task
from torchshrink.errors import ConfigError, check_finite
from torchshrink.pruning.apply import FilterFn, default_filter, prunable_layers, prune_, prune_from_zeros_
from torchshrink.pruning.config import PruneConfig
from torchshrink.pruning.masks import check_amount
from torchshrink.pruning.schedules import agp_schedule
from torchshrink.recipes.prune import achieved_sparsity
from torchshrink.recipes.results import PruneResult, PruneStep
from torchshrink.recipes.train import TrainConfig, fit, val_metric

__all__ = ["GRADUAL_TRAIN", "GradualConfig", "GradualPruner", "gradual_prune"]


# the training of a gradual run, chosen on the validation split (benchmarks/pruning_recipes.py): 8 epochs at a
# peak rate of 0.05, distilled from the dense model (weight 0.7, the temperature TrainConfig's)
GRADUAL_TRAIN = TrainConfig(epochs=8, lr=0.05, distill=0.7)


@dataclass(frozen=True)
class GradualConfig:
    """A gradual pruning run: ``train`` trains the model while the mask tightens from its current sparsity to
    ``sparsity`` between the fractions ``start`` and ``end`` of the run; the rest of the run recovers.
    The defaults were chosen on the validation split; the command line and the study take theirs from here."""

    sparsity: float  # fraction of zeros at the end of the run
    train: TrainConfig = GRADUAL_TRAIN  # the run (epochs, learning rate, distillation from the dense model, ...)
    start: float = 0.0  # pruning starts at this fraction of the run ...
    end: float = 0.6  # ... and reaches the target here; the rest of the run recovers
    frequency: int = 50  # optimizer steps between mask updates
    scope: str = "global"  # how weights are ranked: "global", "lamp" or "layer" (see PruneConfig)

    def __post_init__(self) -> None:
        check_finite(self, "start", "end")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity={self.sparsity!r}: one fraction for the whole model, e.g. 0.9")
        PruneConfig(self.sparsity, self.scope)  # checks the sparsity and the scope
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train={self.train!r}: give a TrainConfig")
        if not 0 <= self.start < self.end <= 1:
            raise ConfigError(f"start={self.start}, end={self.end}: need 0 <= start < end <= 1 (fractions of the run)")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ConfigError(f"frequency={self.frequency!r}: must be a whole number, at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        prune_(model, PruneConfig(target, self.scope), self.filter_fn)
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
    config: GradualConfig,
    *,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn | None = None,
    log: Callable[[str], None] | None = print,
) -> PruneResult:
    """Train ``model`` (in place, where it is) for ``config.train.epochs`` epochs while pruning it from its
    current sparsity to ``config.sparsity`` between the fractions ``config.start`` and ``config.end`` of the run.

    With ``config.train.distill > 0`` (the default) the run learns from ``teacher``'s soft predictions; without a
    teacher, from a frozen copy of ``model`` as it was before the run (the dense model, usually).

    Returns one :class:`PruneStep` (validation accuracy before and after, per-layer sparsity).
    """
    task = as_task(task)
    filter_fn = filter_fn or default_filter
    if not prunable_layers(model, filter_fn):
        raise ConfigError("the model has no prunable layer")
    if config.train.distill > 0 and teacher is None:
        teacher = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    before = val_metric(model, task)
    prune_from_zeros_(model, filter_fn)  # masks exist before the optimizer sees the parameters
    initial, _ = achieved_sparsity(model, filter_fn)
    total = config.train.epochs * _batches_per_epoch(task)
    first = int(config.start * total)
    pruner = GradualPruner(config.sparsity, first, max(int(config.end * total), first + 1), config.frequency, initial,
                           config.scope, filter_fn)  # fmt: skip
    fit(model, task, config.train, after_step=pruner, teacher=teacher, log=log)
    after = val_metric(model, task)
    achieved, layers = achieved_sparsity(model, filter_fn)
    return PruneResult(model, [PruneStep(1, config.sparsity, achieved, before, after, time.perf_counter() - t0,
                                         layers)])  # fmt: skip
