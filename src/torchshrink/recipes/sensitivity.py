"""Sensitivity analysis: how much each layer alone tolerates pruning, with no retraining."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from tqdm.auto import tqdm

from torchshrink.data.task import Task, as_task
from torchshrink.pruning.apply import FilterFn, default_filter, prunable_layers, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.recipes.train import evaluate

__all__ = ["DEFAULT_SPARSITIES", "layer_sensitivity", "sensitivity_table", "sparsities_for_tolerance"]

DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def layer_sensitivity(
    model: nn.Module,
    task: Task,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    filter_fn: FilterFn | None = None,
    progress: bool = True,
) -> dict[str, dict[float, float]]:
    """The validation metric (top-1 accuracy by default) after pruning one layer at a time to each sparsity,
    the others untouched, where the model is.

    Returns ``{layer: {sparsity: metric}}``; sparsity 0.0 is the unpruned model's.
    """
    task = as_task(task)
    val = task.need("val", "layer sensitivity")

    def measure(m: nn.Module) -> float:
        return evaluate(m, val, loss=task.loss, metric=task.metric)[0]

    base = measure(model)
    names = list(prunable_layers(model, filter_fn or default_filter))
    result: dict[str, dict[float, float]] = {}
    bar = tqdm(total=len(names) * len(sparsities), desc="sensitivity", leave=False, disable=None if progress else True)
    for name in names:
        curve = {0.0: base}
        for s in sparsities:
            trial = copy.deepcopy(model)
            prune_(trial, PruneConfig({name: s}, scope="layer"), filter_fn)
            curve[float(s)] = measure(trial)
            bar.update()
        result[name] = curve
    bar.close()
    return result


def sensitivity_table(curves: dict[str, dict[float, float]]) -> str:
    """A plain-text table: one row per layer, one column per sparsity, accuracies in percent."""
    sparsities = sorted({s for curve in curves.values() for s in curve})
    width = max(len(n) for n in curves)
    head = f"{'layer':<{width}} " + " ".join(f"{100 * s:>6.0f}%" for s in sparsities)
    rows = [f"{n:<{width}} " + " ".join(f"{100 * c[s]:>6.2f} " for s in sparsities) for n, c in curves.items()]
    return "\n".join([head, *rows])


def sparsities_for_tolerance(curves: dict[str, dict[float, float]], max_drop: float) -> dict[str, float]:
    """Per layer, the highest measured sparsity whose accuracy stays within ``max_drop`` of the unpruned one."""
    plan = {}
    for name, curve in curves.items():
        ok = [s for s, acc in curve.items() if acc >= curve[0.0] - max_drop]
        plan[name] = max(ok)
    return plan
