"""One-shot and step-by-step (iterative) magnitude pruning with retraining, and lottery-ticket rewinding."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from torchshrink.data.task import Task, as_task
from torchshrink.errors import ConfigError
from torchshrink.pruning.apply import FilterFn, default_filter, get_mask, prunable_layers, prune_, sparsity_report
from torchshrink.pruning.config import PruneConfig
from torchshrink.pruning.masks import check_amount
from torchshrink.pruning.schedules import SCHEDULES, make_schedule
from torchshrink.recipes.results import PruneResult, PruneStep
from torchshrink.recipes.train import TrainConfig, fit, val_metric

__all__ = ["PruneStep", "IterativeConfig", "STRUCTURED_FINETUNE", "oneshot_prune", "iterative_prune", "rewind_",
           "achieved_sparsity"]


def achieved_sparsity(model: nn.Module, filter_fn: FilterFn = default_filter) -> tuple[float, list[dict[str, Any]]]:
    """Overall sparsity of the prunable layers, and their per-layer rows."""
    rows = sparsity_report(model, filter_fn)
    params = sum(r.params for r in rows)
    return 1 - sum(r.nonzeros for r in rows) / params, [r.to_dict() for r in rows]


@torch.no_grad()
def rewind_(model: nn.Module, state: dict[str, torch.Tensor], filter_fn: FilterFn = default_filter) -> None:
    """Reset the surviving weights (and every other parameter and buffer) to ``state``, keeping the masks.

    ``state`` is a plain ``state_dict`` of the unpruned model saved early in training (lottery-ticket
    rewinding, Frankle et al. 2020).
    """
    layers = prunable_layers(model, filter_fn)
    masked = {w.key for w in layers.values() if get_mask(w.module, w.attr) is not None}
    for w in layers.values():
        if w.key in masked:
            w.stored.copy_(state[w.key])
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    for key, value in state.items():
        if key not in masked and key in own:
            own[key].copy_(value)


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}%"


@dataclass(frozen=True)
class IterativeConfig:
    """Step-by-step pruning: ``steps`` prune -> retrain rounds along ``schedule`` up to ``sparsity``."""

    sparsity: float  # fraction of zeros reached by the last round
    steps: int = 4  # prune -> retrain rounds
    finetune: TrainConfig = TrainConfig(epochs=1, lr=0.02)  # the retraining after each round
    schedule: str = "agp"  # "agp" (cubic, Zhu & Gupta: big steps first) or "linear"
    scope: str = "global"  # how weights are ranked: "global", "lamp" or "layer" (see PruneConfig)
    initial: float = 0.0  # the sparsity the schedule starts from, to continue from an already-pruned model
    final: TrainConfig | None = None  # one longer fine-tune after the last round (None: none)

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"sparsity={self.sparsity!r}: one fraction for the whole model, e.g. 0.9")
        PruneConfig(self.sparsity, self.scope)  # checks the sparsity and the scope
        if not check_amount(self.initial) <= self.sparsity:
            raise ConfigError(f"initial={self.initial}: the schedule starts at or below its target {self.sparsity}")
        if not isinstance(self.finetune, TrainConfig) or not isinstance(self.final, (TrainConfig, type(None))):
            raise ConfigError("finetune (and final, if given) must be TrainConfigs")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps={self.steps!r}: must be a whole number, at least 1")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r}: choose one of {', '.join(map(repr, SCHEDULES))}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# the fine-tuning after one-shot or structured pruning where the command line asks for one (the library's
# oneshot_prune fine-tunes only when given a TrainConfig)
STRUCTURED_FINETUNE = TrainConfig(epochs=3, lr=0.02)


def oneshot_prune(
    model: nn.Module,
    task: Task,
    config: PruneConfig,
    *,
    finetune: TrainConfig | None = None,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn | None = None,
    log: Callable[[str], None] | None = print,
) -> PruneResult:
    """Reach ``config.sparsity`` in one step; evaluate, and optionally fine-tune with the masks held fixed
    (distilled from ``teacher`` when ``finetune.distill > 0``). Runs where the model is."""
    task = as_task(task)
    filter_fn = filter_fn or default_filter
    start = time.perf_counter()
    prune_(model, config, filter_fn)
    pruned_acc = val_metric(model, task)
    retrained = None
    if finetune is not None:
        fit(model, task, finetune, log=log, teacher=teacher)
        retrained = val_metric(model, task)
    achieved, layers = achieved_sparsity(model, filter_fn)
    target = achieved if isinstance(config.sparsity, Mapping) else config.sparsity  # per layer: no one target
    return PruneResult(model, [PruneStep(1, target, achieved, pruned_acc, retrained, time.perf_counter() - start,
                                         layers)])  # fmt: skip


def iterative_prune(
    model: nn.Module,
    task: Task,
    config: IterativeConfig,
    *,
    rewind_state: dict[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn | None = None,
    log: Callable[[str], None] | None = print,
) -> PruneResult:
    """Reach ``config.sparsity`` over ``config.steps`` prune -> retrain rounds following ``config.schedule``.

    Each round prunes to ``sparsity_at(step)`` of the total (already-pruned weights stay pruned), optionally
    rewinds the survivors to ``rewind_state`` (lottery ticket), then retrains for ``config.finetune.epochs``
    epochs. ``config.final`` adds one longer fine-tune after the last round (recorded as a step with no new
    pruning); ``teacher`` (usually the dense model) guides every retraining by distillation when the configs
    set ``distill > 0``. Runs where the model is.
    """
    task = as_task(task)
    filter_fn = filter_fn or default_filter
    c = config
    sparsity_at = make_schedule(c.schedule, c.sparsity, c.steps, c.initial)
    history = []
    for step in range(1, c.steps + 1):
        start = time.perf_counter()
        target = sparsity_at(step)
        prune_(model, PruneConfig(target, c.scope), filter_fn)
        pruned_acc = val_metric(model, task)
        if rewind_state is not None:
            rewind_(model, rewind_state, filter_fn)
        fit(model, task, replace(c.finetune, seed=c.finetune.seed + step), log=None, teacher=teacher)
        retrained = val_metric(model, task)
        achieved, layers = achieved_sparsity(model, filter_fn)
        history.append(PruneStep(step, target, achieved, pruned_acc, retrained, time.perf_counter() - start, layers))
        if log is not None:
            log(
                f"step {step}/{c.steps}  sparsity {100 * achieved:5.1f}%  val pruned {_pct(pruned_acc)}"
                f"  retrained {_pct(retrained)}  {history[-1].seconds:5.1f}s"
            )
    if c.final is not None:
        start = time.perf_counter()
        before = val_metric(model, task)
        fit(model, task, c.final, log=log, teacher=teacher)
        after = val_metric(model, task)
        achieved, layers = achieved_sparsity(model, filter_fn)
        history.append(PruneStep(c.steps + 1, c.sparsity, achieved, before, after, time.perf_counter() - start,
                                 layers))  # fmt: skip
        if log is not None:
            log(f"final fine-tune  sparsity {100 * achieved:5.1f}%  val {_pct(before)} -> {_pct(after)}")
    return PruneResult(model, history)
