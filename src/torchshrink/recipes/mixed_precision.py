"""Mixed precision for weight sharing: a codebook width per layer, chosen under a file-size budget from
each layer's measured sensitivity (validation loss with only that layer clustered) and its real encoded size
at each width (the same encoder the file uses, Huffman included).

The allocation is exact for that additive model: a multiple-choice knapsack (one width per layer, sizes in
small byte units rounded up, so the choice always fits) that minimises the summed loss increase. Validation
loss rather than accuracy, because at these sizes a layer's accuracy changes by a handful of images: noise
that a greedy narrowing follows into bad choices.

The allocation (:func:`allocate_bits`, :func:`plan_from_table`) and the fitting to the real file
(:func:`fit_plan_to_file`) take any such table: uniform weight widths (:mod:`.mixed_uniform`) and activation
widths (:mod:`.mixed_activations`) reuse them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from torchshrink.data.task import Task, as_task, take_samples
from torchshrink.errors import ConfigError
from torchshrink.layers import FilterFn, default_filter, prunable_layers
from torchshrink.pack.encode import encoded_weight_bytes
from torchshrink.pruning.apply import permanent_copy
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.primitives import check_bits
from torchshrink.quant.sharing import codebook_layers, codebook_quantize_
from torchshrink.recipes.train import evaluate

__all__ = [
    "LayerWidth",
    "MixedPlan",
    "codebook_width_table",
    "allocate_bits",
    "folded_copy",
    "fixed_bytes_estimate",
    "measured_fixed_bytes",
    "plan_from_table",
    "plan_mixed_precision",
    "fit_plan_to_file",
]

HEADER_ESTIMATE = 1500  # bytes: the compressed JSON header of a small model, measured 0.8-1.4 KB
FILE_MARGIN = 64  # bytes kept free when the real file is measured: fine-tuning moves floats the header prints


@dataclass(frozen=True)
class LayerWidth:
    """One layer clustered alone at one width: validation accuracy and loss, and the bytes its weights take."""

    layer: str
    bits: int
    val_accuracy: float
    bytes: int
    val_loss: float


@dataclass
class MixedPlan:
    """Chosen width per layer, the estimate it was chosen on, and the whole table."""

    bits: dict[str, int]
    budget_bytes: int
    estimated_bytes: int
    fixed_bytes: int  # biases and header: what no width changes
    float_val_accuracy: float
    estimated_val_drop: float  # sum of the chosen layers' accuracy drops, each measured alone
    table: list[LayerWidth] = field(default_factory=list)
    float_val_loss: float = 0.0
    estimated_val_loss_increase: float = 0.0  # what the allocation minimised: the summed loss increases

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def folded_copy(model: nn.Module) -> nn.Module:
    """A plain float copy of ``model`` on the CPU with masks made permanent and BatchNorm folded: the model
    whose layers the width tables quantize one at a time."""
    q = permanent_copy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    return fold_batchnorm(q)


@torch.no_grad()
def codebook_width_table(
    model: nn.Module,
    task: Task,
    candidates: tuple[int, ...] = (2, 3, 4, 5, 6),
    val_images: int | None = None,
    progress: bool = True,
    filter_fn: FilterFn = default_filter,
) -> tuple[float, float, list[LayerWidth]]:
    """For every layer ``filter_fn`` accepts and every width: validation metric and loss with only that layer
    clustered, and the layer's encoded bytes (codes, positions, float16 codebook). Returns the float model's
    metric and loss, and the table."""
    task = as_task(task)
    return _width_table(folded_copy(model), task, candidates, val_images, progress, filter_fn)


def validation_measure(
    task: Task, candidates: tuple[int, ...], val_images: int | None, what: str = "mixed precision"
) -> Callable[[nn.Module], tuple[float, float]]:
    """Check the candidate widths and return ``model -> (metric, loss)`` on the task's validation samples,
    taken once here because every width table evaluates them once per layer and width."""
    for b in candidates:
        check_bits(b)
    val = list(take_samples(task.need("val", what), val_images))

    def measure(m: nn.Module) -> tuple[float, float]:
        return evaluate(m, val, loss=task.loss, metric=task.metric)

    return measure


def _width_table(
    folded: nn.Module, task: Task, candidates: tuple[int, ...], val_images: int | None, progress: bool,
    filter_fn: FilterFn = default_filter,
) -> tuple[float, float, list[LayerWidth]]:  # fmt: skip
    measure = validation_measure(task, candidates, val_images)
    float_acc, float_loss = measure(folded)
    names = list(prunable_layers(folded, filter_fn))
    rows = []
    bar = tqdm(total=len(names) * len(candidates), desc="layer widths", leave=False, disable=None if progress else True)
    for name in names:
        for bits in candidates:
            trial = copy.deepcopy(folded)
            codebook_quantize_(trial, bits, filter_fn, only=name)
            acc, loss = measure(trial)
            cb = codebook_layers(trial)[name]
            values, indices = cb.export()
            size = encoded_weight_bytes(indices.numpy() + 1, bits) + 2 * values.numel()
            rows.append(LayerWidth(name, bits, acc, size, loss))
            bar.update()
    bar.close()
    return float_acc, float_loss, rows


def allocate_bits(table: list[LayerWidth], budget: int, fixed: int, units: int = 4096) -> dict[str, int]:
    """One width per layer minimising the summed validation-loss increase with ``fixed`` + weights <= budget.

    Multiple-choice knapsack by dynamic programming over the free bytes cut into about ``units`` units; each
    width's bytes are rounded up to whole units, so the choice fits the budget exactly, and is optimal up to
    that rounding. Equal losses go to the wider choice. Raises ``ConfigError`` when even the narrowest widths
    do not fit.
    """
    by_layer: dict[str, list[LayerWidth]] = {}
    for row in table:
        by_layer.setdefault(row.layer, []).append(row)
    smallest = fixed + sum(min(r.bytes for r in rows) for rows in by_layer.values())
    if smallest > budget:
        raise ConfigError(f"budget {budget:,} bytes: even the narrowest widths need about {smallest:,} bytes; "
                          f"raise the budget to at least that, or prune more")  # fmt: skip
    free = budget - fixed
    unit = max(1, -(-free // units))
    capacity = free // unit
    # best[c]: least summed loss of the layers so far within c units; a tiny reward per byte breaks ties wide
    best = np.zeros(capacity + 1)
    picks = []
    for rows in by_layer.values():
        new = np.full(capacity + 1, np.inf)
        pick = np.full(capacity + 1, -1)
        for k, row in enumerate(rows):
            size = -(-row.bytes // unit)
            if size > capacity:
                continue
            value = best[: capacity + 1 - size] + row.val_loss - 1e-12 * row.bytes
            slot = new[size:]
            better = value < slot
            slot[better] = value[better]
            pick[size:][better] = k
        best = new
        picks.append(pick)
    if not np.isfinite(best.min()):  # only the rounding to units can cause this, by a few units at most
        raise ConfigError(f"budget {budget:,} bytes: the narrowest widths need about {smallest:,} bytes; "
                          f"raise the budget a little")  # fmt: skip
    chosen: dict[str, int] = {}
    c = int(np.argmin(best))
    for (name, rows), pick in zip(reversed(list(by_layer.items())), reversed(picks), strict=True):
        row = rows[int(pick[c])]
        chosen[name] = row.bits
        c -= -(-row.bytes // unit)
    return {name: chosen[name] for name in by_layer}


def plan_mixed_precision(
    model: nn.Module,
    task: Task,
    budget_bytes: int,
    candidates: tuple[int, ...] = (2, 3, 4, 5, 6),
    val_images: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    filter_fn: FilterFn = default_filter,
) -> MixedPlan:
    """Measure the width table of a (pruned) model and allocate widths so the file fits ``budget_bytes``."""
    task = as_task(task)
    folded = folded_copy(model)
    float_acc, float_loss, table = _width_table(folded, task, candidates, val_images, progress, filter_fn)
    return plan_from_table(table, budget_bytes, fixed_bytes_estimate(folded, filter_fn), float_acc, float_loss, log)


def fixed_bytes_estimate(folded: nn.Module, filter_fn: FilterFn) -> int:
    """What no width changes, before the real file is measured: float16 biases and a typical header."""
    layers = prunable_layers(folded, filter_fn)
    biases = sum(b.numel() for w in layers.values() if w.attr == "weight"
                 and isinstance(b := getattr(w.module, "bias", None), torch.Tensor))  # fmt: skip
    return 2 * biases + HEADER_ESTIMATE


def measured_fixed_bytes(table: list[LayerWidth], file_bytes: Callable[[dict[str, int]], int]) -> int:
    """What no width changes, measured: the real file of the narrowest widths less its weights' table bytes.

    On a small model the typical header of :func:`fixed_bytes_estimate` is most of the file; a budget the
    real file meets would be refused on it."""
    narrowest: dict[str, LayerWidth] = {}
    for row in table:
        if row.layer not in narrowest or row.bytes < narrowest[row.layer].bytes:
            narrowest[row.layer] = row
    return file_bytes({n: r.bits for n, r in narrowest.items()}) - sum(r.bytes for r in narrowest.values())


def plan_from_table(
    table: list[LayerWidth],
    budget_bytes: int,
    fixed: int,
    float_val_accuracy: float,
    float_val_loss: float,
    log: Callable[[str], None] | None = print,
    what: str = "mixed precision",
) -> MixedPlan:
    """Allocate widths from a measured table (:func:`allocate_bits`) and sum the estimates of the choice.

    Args:
        fixed: the bytes of the budget no width changes (header, biases).
        what: how the log line names the plan.
    """
    bits = allocate_bits(table, budget_bytes, fixed)
    rows = {(r.layer, r.bits): r for r in table}
    estimated = fixed + sum(rows[(n, b)].bytes for n, b in bits.items())
    drop = sum(max(float_val_accuracy - rows[(n, b)].val_accuracy, 0.0) for n, b in bits.items())
    loss_up = sum(rows[(n, b)].val_loss - float_val_loss for n, b in bits.items())
    if log is not None:
        log(f"{what} under {budget_bytes:,} bytes: " + ", ".join(f"{n} {b}b" for n, b in bits.items())
            + f" (estimated {estimated:,} bytes)")  # fmt: skip
    return MixedPlan(bits, budget_bytes, estimated, fixed, float_val_accuracy, drop, table, float_val_loss, loss_up)


def fit_plan_to_file(
    plan: MixedPlan,
    file_bytes: Callable[[dict[str, int]], int],
    margin: int = FILE_MARGIN,
    rounds: int = 3,
    log: Callable[[str], None] | None = print,
) -> MixedPlan:
    """Replace the plan's estimate of what no width changes (header, biases) by the real file's.

    ``file_bytes(bits)`` returns the size of the real file with those widths. Each round measures the file of
    the current widths, takes ``real - weight bytes`` as the fixed part, and allocates again; it stops when
    the widths no longer change. The estimate is usually high by a few hundred bytes, so this spends them on
    wider codes; it also narrows the widths if the estimate was low. The returned plan's ``estimated_bytes``
    is the measured size of its widths whenever the allocation settled.
    """
    rows = {(r.layer, r.bits): r for r in plan.table}

    def weights(bits: dict[str, int]) -> int:
        return sum(rows[(n, b)].bytes for n, b in bits.items())

    for _ in range(rounds):
        real = file_bytes(plan.bits)
        fixed = real - weights(plan.bits)
        bits = allocate_bits(plan.table, plan.budget_bytes, fixed + margin)
        if bits == plan.bits:
            plan = replace(plan, estimated_bytes=real, fixed_bytes=fixed)
            break
        plan = replace(plan, bits=bits, estimated_bytes=fixed + weights(bits), fixed_bytes=fixed)
    drops = [max(plan.float_val_accuracy - rows[(n, b)].val_accuracy, 0.0) for n, b in plan.bits.items()]
    ups = [rows[(n, b)].val_loss - plan.float_val_loss for n, b in plan.bits.items()]
    plan = replace(plan, estimated_val_drop=sum(drops), estimated_val_loss_increase=sum(ups))
    if log is not None:
        log("widths fitted to the real file: " + ", ".join(f"{n} {b}b" for n, b in plan.bits.items())
            + f" ({plan.estimated_bytes:,} of {plan.budget_bytes:,} bytes)")  # fmt: skip
    return plan
