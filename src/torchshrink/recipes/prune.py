"""One-shot and step-by-step (iterative) magnitude pruning with retraining, and lottery-ticket rewinding."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from torchshrink.data.task import Task, as_task
from torchshrink.pruning.apply import FilterFn, default_filter, get_mask, prunable_layers, prune_, sparsity_report
from torchshrink.pruning.schedules import make_schedule
from torchshrink.recipes.train import TrainConfig, fit, val_metric

__all__ = ["PruneStep", "oneshot_prune", "iterative_prune", "rewind_"]


@dataclass
class PruneStep:
    """One pruning step: target and achieved sparsity, validation accuracy right after pruning and after
    retraining, and the per-layer sparsity once the step is done."""

    step: int
    target: float
    achieved: float
    val_acc_pruned: float | None  # the task's metric on its validation batches (None: no validation batches)
    val_acc_retrained: float | None
    seconds: float
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    for name, module in layers.items():
        if get_mask(module) is not None:
            module.parametrizations.weight.original.copy_(state[f"{name}.weight"])
    masked = {f"{n}.weight" for n, m in layers.items() if get_mask(m) is not None}
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    for key, value in state.items():
        if key not in masked and key in own:
            own[key].copy_(value)


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:6.2f}%"


def oneshot_prune(
    model: nn.Module,
    task: Task,
    sparsity: float,
    scope: str = "global",
    finetune: TrainConfig | None = None,
    device: str | torch.device | None = None,
    filter_fn: FilterFn = default_filter,
    log: Callable[[str], None] | None = print,
    teacher: nn.Module | None = None,
) -> PruneStep:
    """Reach ``sparsity`` in one step; evaluate, and optionally fine-tune with the masks held fixed (distilled
    from ``teacher`` when ``finetune.distill > 0``)."""
    task = as_task(task)
    start = time.perf_counter()
    prune_(model, sparsity, scope, filter_fn)
    pruned_acc = val_metric(model, task, device)
    retrained = None
    if finetune is not None:
        fit(model, task, finetune, device, log=log, teacher=teacher)
        retrained = val_metric(model, task, device)
    achieved, layers = achieved_sparsity(model, filter_fn)
    return PruneStep(1, sparsity, achieved, pruned_acc, retrained, time.perf_counter() - start, layers)


def iterative_prune(
    model: nn.Module,
    task: Task,
    sparsity: float,
    steps: int,
    finetune: TrainConfig,
    schedule: str = "agp",
    scope: str = "global",
    rewind_state: dict[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    filter_fn: FilterFn = default_filter,
    log: Callable[[str], None] | None = print,
    initial: float = 0.0,
    final: TrainConfig | None = None,
    teacher: nn.Module | None = None,
) -> list[PruneStep]:
    """Reach ``sparsity`` over ``steps`` prune -> retrain rounds following ``schedule`` (``agp`` or ``linear``).

    Each round prunes to ``sparsity_at(step)`` of the total (already-pruned weights stay pruned), optionally
    rewinds the survivors to ``rewind_state``, then retrains for ``finetune.epochs`` epochs. ``initial`` is
    the sparsity the schedule starts from, to continue from an already-pruned model. ``final`` adds one
    longer fine-tune after the last step (recorded as a step with no new pruning); ``teacher`` (usually the
    dense model) guides every retraining by distillation when the configs set ``distill > 0``.
    """
    task = as_task(task)
    sparsity_at = make_schedule(schedule, sparsity, steps, initial)
    history = []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        target = sparsity_at(step)
        prune_(model, target, scope, filter_fn)
        pruned_acc = val_metric(model, task, device)
        if rewind_state is not None:
            rewind_(model, rewind_state, filter_fn)
        cfg = TrainConfig(**{**finetune.to_dict(), "seed": finetune.seed + step})
        fit(model, task, cfg, device, log=None, teacher=teacher)
        retrained = val_metric(model, task, device)
        achieved, layers = achieved_sparsity(model, filter_fn)
        history.append(PruneStep(step, target, achieved, pruned_acc, retrained, time.perf_counter() - start, layers))
        if log is not None:
            log(
                f"step {step}/{steps}  sparsity {100 * achieved:5.1f}%  val pruned {_pct(pruned_acc)}"
                f"  retrained {_pct(retrained)}  {history[-1].seconds:5.1f}s"
            )
    if final is not None:
        start = time.perf_counter()
        before = val_metric(model, task, device)
        fit(model, task, final, device, log=log, teacher=teacher)
        after = val_metric(model, task, device)
        achieved, layers = achieved_sparsity(model, filter_fn)
        history.append(PruneStep(steps + 1, sparsity, achieved, before, after, time.perf_counter() - start, layers))
        if log is not None:
            log(
                f"final fine-tune  sparsity {100 * achieved:5.1f}%  val {_pct(before)} -> {_pct(after)}"
            )
    return history
