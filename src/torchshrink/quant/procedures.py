"""Post-training quantization (PTQ) and quantization-aware training (QAT with LSQ step sizes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from torchshrink.data import FashionMNIST, normalize
from torchshrink.pruning.apply import permanent_copy, prune_from_zeros_
from torchshrink.quant.apply import QuantConfig, attach_input_quant_, calibrate_, quantize_, set_scales_trainable
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.sharing import codebook_layers, codebook_quantize_
from torchshrink.train import EpochStats, TrainConfig, fit

__all__ = ["calibration_batches", "prepare_quantized", "ptq", "qat", "codebook"]


def _plain_copy(model: nn.Module) -> nn.Module:
    # contiguous (not channels_last) weights: a model loaded from a file then computes bit-identical outputs
    return permanent_copy(model).cpu().eval().to(memory_format=torch.contiguous_format)


def calibration_batches(data: FashionMNIST, images: int = 512, batch_size: int = 256) -> list[torch.Tensor]:
    """The first ``images`` training images (the split is already shuffled), normalised, in batches."""
    x = data.train_x[:images]
    return [normalize(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def prepare_quantized(model: nn.Module, config: QuantConfig, keep_sparsity: bool = True) -> nn.Module:
    """A quantizable copy of ``model``: masks made permanent, BatchNorm folded, masks re-attached from the
    zeros (so pruned weights stay exact zeros through QAT), fake quant attached. The original is untouched.
    """
    q = _plain_copy(model)
    fold_batchnorm(q)
    if keep_sparsity and any(bool((p == 0).any()) for p in q.parameters() if p.ndim > 1):
        prune_from_zeros_(q)
    return quantize_(q, config)


def ptq(
    model: nn.Module,
    data: FashionMNIST | None,
    config: QuantConfig,
    calibration_images: int = 512,
) -> nn.Module:
    """Post-training quantization: a quantized copy whose activation ranges are calibrated on training images."""
    q = prepare_quantized(model, config)
    if config.quantize_inputs:
        calibrate_(q, calibration_batches(data, calibration_images), config.act_calibration)
    return q


def qat(
    model: nn.Module,
    data: FashionMNIST,
    config: QuantConfig,
    train: TrainConfig,
    device: str | torch.device = "cpu",
    calibration_images: int = 512,
    log: Callable[[str], None] | None = print,
    progress: bool = True,
    teacher: nn.Module | None = None,
) -> tuple[nn.Module, list[EpochStats]]:
    """Quantization-aware training: start from PTQ, then fine-tune weights and LSQ step sizes together
    with fake quant in the loop (straight-through rounding), distilled from ``teacher`` if ``train.distill``."""
    q = ptq(model, data, config, calibration_images)
    set_scales_trainable(q, True)
    history = fit(q, data, train, device, log=log, progress=progress, teacher=teacher)
    set_scales_trainable(q, False)
    return q.eval().to(memory_format=torch.contiguous_format), history


def codebook(
    model: nn.Module,
    data: FashionMNIST,
    bits: int | dict[str, int],
    act_bits: int | None = None,
    train: TrainConfig | None = None,
    device: str | torch.device = "cpu",
    calibration_images: int = 512,
    log: Callable[[str], None] | None = print,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Weight sharing: a copy of ``model`` with BatchNorm folded, each layer's weights clustered into a
    ``bits``-bit codebook (or per-layer widths from a dict; pruned zeros kept exact), inputs quantized at ``act_bits`` (none if ``None``; the
    first layer's input at 8 bits, as in :func:`quantize_`), then the centroids fine-tuned if ``train``
    (distilled from ``teacher`` if ``train.distill``).
    """
    q = _plain_copy(model)
    fold_batchnorm(q)
    codebook_quantize_(q, bits)
    if act_bits is not None:
        layers = list(codebook_layers(q))
        modules = dict(q.named_modules())
        for i, name in enumerate(layers):
            attach_input_quant_(modules[name], 8 if i == 0 else act_bits)
        calibrate_(q, calibration_batches(data, calibration_images))
    if train is not None:
        set_scales_trainable(q, True)
        fit(q, data, train, device, log=log, teacher=teacher)
        set_scales_trainable(q, False)
    return q.eval().to(memory_format=torch.contiguous_format)
