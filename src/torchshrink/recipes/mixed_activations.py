"""Mixed precision for activations: an input width per quantized layer, chosen under a budget on the bytes
that one sample's quantized layer inputs take, from each layer's measured sensitivity (validation loss with
only that layer's input quantized, calibrated as :func:`torchshrink.quant.calibrate_` does).

Activation widths do not change the file (its header holds one scale per input whatever the width), so they
cannot share the weights' file budget. Their cost is what an integer kernel holds in memory: the layers'
inputs for one sample at those widths. The allocation is the weights' knapsack (:mod:`.mixed_precision`).

The first layer's input is the model's input (8-bit data by nature, see :mod:`torchshrink.quant.apply`): it
stays at 8 bits, counted in the budget, unless ``include_first`` lets the plan choose it too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from torchshrink.data.task import Task, as_task, calibration_inputs
from torchshrink.errors import ConfigError
from torchshrink.layers import FilterFn, default_filter, prunable_layers
from torchshrink.quant.apply import attach_input_quant_, calibrate_, input_skip_reason
from torchshrink.recipes.mixed_precision import LayerWidth, MixedPlan, folded_copy, plan_from_table, validation_measure
from torchshrink.recipes.mixed_uniform import UNIFORM_WIDTHS

__all__ = ["input_elements", "activation_width_table", "plan_activation_widths"]


@torch.no_grad()
def input_elements(model: nn.Module, inputs: torch.Tensor, names: list[str]) -> dict[str, int]:
    """Elements of each named layer's input per sample, measured on one batch with forward pre-hooks.

    A layer called several times per forward (shared) counts every call. ``inputs``: a batch, dim 0 = samples.
    """
    counts = dict.fromkeys(names, 0)

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def count(_module: nn.Module, args: tuple[Any, ...]) -> None:
            counts[name] += args[0].numel()

        return count

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unseen = [n for n, c in counts.items() if c == 0]
    if unseen:
        raise ConfigError(f"activation widths: the input of {', '.join(map(repr, unseen))} was never seen: its "
                          "forward is not called; exclude it with filter_fn")  # fmt: skip
    return {n: math.ceil(c / len(inputs)) for n, c in counts.items()}


def _input_layers(folded: nn.Module, filter_fn: FilterFn) -> list[str]:
    # the layers whose input quantize_ quantizes (one per module): not attention's out_proj, which no input
    # hook reaches, nor an embedding, whose input is indices
    modules = dict.fromkeys(w.module_name for w in prunable_layers(folded, filter_fn).values())
    return [n for n in modules if input_skip_reason(folded, n) is None]


def _bytes(elements: int, bits: int) -> int:
    return -(-elements * bits // 8)


@torch.no_grad()
def activation_width_table(
    model: nn.Module,
    task: Task,
    candidates: tuple[int, ...] = UNIFORM_WIDTHS,
    include_first: bool = False,
    val_images: int | None = None,
    calibration_samples: int | None = None,
    method: str = "percentile",
    progress: bool = True,
    filter_fn: FilterFn = default_filter,
) -> tuple[float, float, list[LayerWidth]]:
    """For every layer whose input is quantized (the first only with ``include_first``) and every width:
    validation metric and loss with only that input quantized (weights in float), calibrated on the task's
    calibration inputs with ``method``, and the bytes that input of one sample takes at that width. Returns
    the float model's metric and loss, and the table."""
    float_acc, float_loss, table, _ = _measure(model, as_task(task), candidates, include_first, val_images,
                                               calibration_samples, method, progress, filter_fn)  # fmt: skip
    return float_acc, float_loss, table


def _measure(
    model: nn.Module, task: Task, candidates: tuple[int, ...], include_first: bool, val_images: int | None,
    calibration_samples: int | None, method: str, progress: bool, filter_fn: FilterFn,
) -> tuple[float, float, list[LayerWidth], int]:  # fmt: skip
    """The table, and the bytes of the first layer's input at 8 bits when the plan leaves it out."""
    folded = folded_copy(model)
    names = _input_layers(folded, filter_fn)
    calibration = calibration_inputs(task, calibration_samples)
    elements = input_elements(folded, calibration[0], names)
    first = next(iter(prunable_layers(folded, filter_fn).values())).module_name
    planned = names if include_first else [n for n in names if n != first]
    fixed = _bytes(elements[first], 8) if first in names and first not in planned else 0
    return (*_width_table(folded, task, planned, elements, calibration, candidates, val_images, method, progress),
            fixed)  # fmt: skip


@torch.no_grad()
def _width_table(
    folded: nn.Module, task: Task, names: list[str], elements: dict[str, int], calibration: list[torch.Tensor],
    candidates: tuple[int, ...], val_images: int | None, method: str, progress: bool,
) -> tuple[float, float, list[LayerWidth]]:  # fmt: skip
    measure = validation_measure(task, candidates, val_images, "activation widths")
    float_acc, float_loss = measure(folded)
    rows = []
    bar = tqdm(total=len(names) * len(candidates), desc="input widths", leave=False, disable=None if progress else True)
    for name in names:
        for bits in candidates:
            trial = copy.deepcopy(folded)  # the input hook cannot be taken off again: a fresh copy per trial
            attach_input_quant_(trial.get_submodule(name), bits)
            calibrate_(trial, calibration, method)
            acc, loss = measure(trial)
            rows.append(LayerWidth(name, bits, acc, _bytes(elements[name], bits), loss))
            bar.update()
    bar.close()
    return float_acc, float_loss, rows


def plan_activation_widths(
    model: nn.Module,
    task: Task,
    budget_bytes: int,
    candidates: tuple[int, ...] = UNIFORM_WIDTHS,
    include_first: bool = False,
    val_images: int | None = None,
    calibration_samples: int | None = None,
    method: str = "percentile",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    filter_fn: FilterFn = default_filter,
) -> MixedPlan:
    """Allocate an input width per quantized layer so that one sample's quantized inputs take at most
    ``budget_bytes`` (the first layer's at 8 bits included, unless ``include_first``); apply it with
    ``QuantConfig(layer_act_bits=plan.bits)``. The plan's ``fixed_bytes`` is that first input.

    Example::

        acts = plan_activation_widths(pruned, task, 40_000)
        q = ptq(pruned, task, QuantConfig(bits=4, layer_act_bits=acts.bits)).model
    """
    float_acc, float_loss, table, fixed = _measure(model, as_task(task), candidates, include_first, val_images,
                                                   calibration_samples, method, progress, filter_fn)  # fmt: skip
    return plan_from_table(table, budget_bytes, fixed, float_acc, float_loss, log, "activation widths")
