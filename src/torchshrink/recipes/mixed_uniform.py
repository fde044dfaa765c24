"""Mixed precision for uniform quantization: a weight width per layer (2..8 bits), chosen under a file-size
budget from each layer's measured sensitivity (validation loss with only that layer's weight quantized,
per output channel and MSE-calibrated, as :func:`torchshrink.quant.quantize_` does) and the bytes its codes,
positions and scales really take in the file (the file's own encoder, Huffman included).

The table has the codebook's shape, so the allocation and the fitting to the real file are the codebook's
(:mod:`.mixed_precision`). Only weights change the file; activation widths have a budget of their own
(:mod:`.mixed_activations`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from torchshrink.data.task import Task, as_task
from torchshrink.layers import FilterFn, default_filter, prunable_layers
from torchshrink.pack.encode import encoded_uniform_bytes
from torchshrink.quant.apply import calibrated_weight_quantizer
from torchshrink.quant.fake_quant import FakeQuant
from torchshrink.quant.primitives import quantize
from torchshrink.recipes.mixed_precision import (
    LayerWidth,
    MixedPlan,
    fixed_bytes_estimate,
    folded_copy,
    measured_fixed_bytes,
    plan_from_table,
    validation_measure,
)

__all__ = ["UNIFORM_WIDTHS", "uniform_weight_bytes", "uniform_width_table", "plan_uniform_mixed_precision"]

UNIFORM_WIDTHS = (2, 3, 4, 5, 6, 7, 8)  # every width a uniform code can take


@torch.no_grad()
def uniform_weight_bytes(weight: torch.Tensor, fq: FakeQuant) -> int:
    """Bytes the file spends on ``weight`` quantized by the weight quantizer ``fq``: codes (dense or only the
    non-zero ones plus their positions, packed or Huffman-coded, whichever is smaller) and scales."""
    spec = fq.spec
    scale, zero = fq.effective_scale, fq.zero_point
    if not spec.per_channel:
        scale, zero = scale[0], zero[0]
    codes = quantize(weight, scale, zero, spec.qmin, spec.qmax, spec.axis)  # what the writer exports
    return encoded_uniform_bytes(codes.numpy(), fq.effective_scale.numpy(), spec.bits, spec.qmin)


@torch.no_grad()
def uniform_width_table(
    model: nn.Module,
    task: Task,
    candidates: tuple[int, ...] = UNIFORM_WIDTHS,
    val_images: int | None = None,
    progress: bool = True,
    filter_fn: FilterFn = default_filter,
    per_channel: bool = True,
    calibration: str = "mse",
    full_range: bool = False,
) -> tuple[float, float, list[LayerWidth]]:
    """For every layer ``filter_fn`` accepts and every width: validation metric and loss with only that layer's
    weight quantized, and the bytes it takes in the file (codes, positions, scales). Returns the float
    model's metric and loss, and the table. ``per_channel``, ``calibration`` and ``full_range`` are the
    ``per_channel``, ``weight_calibration`` and ``full_range_weights`` of the
    :class:`torchshrink.quant.QuantConfig` the plan will be applied with."""
    task = as_task(task)
    return _width_table(folded_copy(model), task, candidates, val_images, progress, filter_fn, per_channel,
                        calibration, full_range)  # fmt: skip


@torch.no_grad()
def _width_table(
    folded: nn.Module, task: Task, candidates: tuple[int, ...], val_images: int | None, progress: bool,
    filter_fn: FilterFn, per_channel: bool, calibration: str, full_range: bool = False,
) -> tuple[float, float, list[LayerWidth]]:  # fmt: skip
    measure = validation_measure(task, candidates, val_images)
    float_acc, float_loss = measure(folded)
    layers = prunable_layers(folded, filter_fn)
    rows = []
    bar = tqdm(
        total=len(layers) * len(candidates), desc="layer widths", leave=False, disable=None if progress else True
    )
    for name, w in layers.items():
        weight = w.tensor  # a plain parameter here: nothing is parametrized yet
        original = weight.detach().clone()  # pruned zeros included: they stay exact zero codes
        for bits in candidates:
            fq = calibrated_weight_quantizer(original, bits, per_channel, calibration, full_range=full_range)
            # the quantized weight in place of the float one, for this measurement only: no copy of the model
            weight.copy_(fq(original))
            try:
                acc, loss = measure(folded)
            finally:
                weight.copy_(original)
            rows.append(LayerWidth(name, bits, acc, uniform_weight_bytes(original, fq), loss))
            bar.update()
    bar.close()
    return float_acc, float_loss, rows


def plan_uniform_mixed_precision(
    model: nn.Module,
    task: Task,
    budget_bytes: int,
    candidates: tuple[int, ...] = UNIFORM_WIDTHS,
    val_images: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    filter_fn: FilterFn = default_filter,
    per_channel: bool = True,
    calibration: str = "mse",
    file_bytes: Callable[[dict[str, int]], int] | None = None,
    full_range: bool = False,
) -> MixedPlan:
    """Measure the uniform width table of a (pruned) model and allocate a weight width per layer so the file
    fits ``budget_bytes``; fit it to the real file with :func:`fit_plan_to_file`, then quantize with
    ``QuantConfig(layer_bits=plan.bits)``.

    Args:
        file_bytes: the size of the real file with the given widths (as for :func:`fit_plan_to_file`): the
            header and biases are then measured on the file of the narrowest widths rather than estimated.
        full_range: the plan is for ``QuantConfig(full_range_weights=True)``: each width is measured (loss and
            bytes) with full-range codes, as it will be applied.

    Example::

        plan = plan_uniform_mixed_precision(pruned, task, 30_000)
        q = ptq(pruned, task, QuantConfig(bits=8, act_bits=8, layer_bits=plan.bits)).model
    """
    task = as_task(task)
    folded = folded_copy(model)
    float_acc, float_loss, table = _width_table(folded, task, candidates, val_images, progress, filter_fn,
                                                per_channel, calibration, full_range)  # fmt: skip
    fixed = fixed_bytes_estimate(folded, filter_fn) if file_bytes is None else measured_fixed_bytes(table, file_bytes)
    return plan_from_table(table, budget_bytes, fixed, float_acc, float_loss, log, "uniform mixed precision")
