"""Post-training quantization (PTQ) and quantization-aware training (QAT with LSQ step sizes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchshrink import distributed as dist
from torchshrink.data.task import Task, as_task, calibration_inputs
from torchshrink.errors import ConfigError
from torchshrink.layers import FilterFn, default_filter
from torchshrink.pruning.apply import permanent_copy, prune_from_zeros_
from torchshrink.quant.apply import (
    QuantConfig,
    attach_input_quant_,
    calibrate_,
    input_skip_reason,
    quantize_,
    set_scales_trainable,
)
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.sharing import codebook_layers, codebook_quantize_
from torchshrink.recipes.train import EpochStats, TrainConfig, fit, model_device

__all__ = ["Calibration", "prepare_quantized", "ptq", "qat", "codebook"]

# where activation ranges come from: a Task (its calibration batches, else its first training batches), or
# any iterable of input tensors or (inputs, targets) batches, e.g. a DataLoader
Calibration = Task | Iterable[Any] | None


def _plain_copy(model: nn.Module) -> nn.Module:
    # contiguous (not channels_last) weights: a model loaded from a file then computes bit-identical outputs
    return permanent_copy(model).cpu().eval().to(memory_format=torch.contiguous_format)


def prepare_quantized(
    model: nn.Module, config: QuantConfig, keep_sparsity: bool = True, filter_fn: FilterFn = default_filter
) -> nn.Module:
    """A quantizable copy of ``model``: masks made permanent, BatchNorm folded, masks re-attached from the
    zeros (so pruned weights stay exact zeros through QAT), fake quant attached to the layers ``filter_fn``
    accepts. The original is untouched.
    """
    q = _plain_copy(model)
    fold_batchnorm(q)
    if keep_sparsity and any(bool((p == 0).any()) for p in q.parameters() if p.ndim > 1):
        prune_from_zeros_(q, filter_fn)
    return quantize_(q, config, filter_fn)


def ptq(
    model: nn.Module,
    calibration: Calibration,
    config: QuantConfig,
    calibration_samples: int | None = None,
    filter_fn: FilterFn = default_filter,
) -> nn.Module:
    """Post-training quantization: a quantized copy whose activation ranges are calibrated on ``calibration``
    (at most ``calibration_samples`` samples of it; ``None`` may be given for weight-only quantization).
    ``filter_fn(module, name)`` chooses the layers to quantize (default: every conv and linear layer)."""
    q = prepare_quantized(model, config, filter_fn=filter_fn)
    if config.quantize_inputs:
        calibrate_(q, calibration_inputs(calibration, calibration_samples), config.act_calibration)
    return q


def qat(
    model: nn.Module,
    task: Task,
    config: QuantConfig,
    train: TrainConfig,
    device: str | torch.device | None = None,
    calibration_samples: int | None = None,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn = default_filter,
) -> tuple[nn.Module, list[EpochStats]]:
    """Quantization-aware training: start from PTQ, then fine-tune weights and LSQ step sizes together
    with fake quant in the loop (straight-through rounding), distilled from ``teacher`` if ``train.distill``."""
    task = as_task(task)
    device = device if device is not None else model_device(model)
    q = ptq(model, task, config, calibration_samples, filter_fn)
    set_scales_trainable(q, True)
    history = fit(q, task, train, device, log=log, progress=progress, teacher=teacher)
    set_scales_trainable(q, False)
    return q.eval().to(memory_format=torch.contiguous_format), history


def codebook(
    model: nn.Module,
    task: Task | None,
    bits: int | dict[str, int],
    act_bits: int | None = None,
    train: TrainConfig | None = None,
    device: str | torch.device | None = None,
    calibration_samples: int | None = None,
    log: Callable[[str], None] | None = print,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn = default_filter,
) -> nn.Module:
    """Weight sharing: a copy of ``model`` with BatchNorm folded, each layer's weights clustered into a
    ``bits``-bit codebook (or per-layer widths from a dict; pruned zeros kept exact), inputs quantized at ``act_bits`` (none if ``None``; the
    first layer's input at 8 bits, as in :func:`quantize_`), then the centroids fine-tuned if ``train``
    (distilled from ``teacher`` if ``train.distill``).
    """
    task = as_task(task) if task is not None else None
    device = device if device is not None else model_device(model)
    q = _plain_copy(model)
    fold_batchnorm(q)
    codebook_quantize_(q, bits, filter_fn)
    if dist.is_distributed():  # k-means on each rank's copy of the weights: the assignments must agree
        dist.check_same_on_all_ranks({n: cb.indices for n, cb in codebook_layers(q).items()}, "codebook assignments")
    if act_bits is not None:
        layers = list(codebook_layers(q))
        modules = dict(q.named_modules())
        for i, name in enumerate(layers):
            if input_skip_reason(q, name) is None:  # e.g. attention's out_proj: weight shared, input left in float
                attach_input_quant_(modules[name], 8 if i == 0 else act_bits)
        calibrate_(q, calibration_inputs(task, calibration_samples))
    if train is not None:
        if task is None:
            raise ConfigError("fine-tuning the codebooks needs a Task with training batches")
        set_scales_trainable(q, True)
        fit(q, task, train, device, log=log, teacher=teacher)
        set_scales_trainable(q, False)
    return q.eval().to(memory_format=torch.contiguous_format)
