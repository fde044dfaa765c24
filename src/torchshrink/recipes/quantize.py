"""Post-training quantization (PTQ) and quantization-aware training (QAT with LSQ step sizes)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink import distributed as dist
from torchshrink.data.task import Task, as_task, calibration_inputs
from torchshrink.errors import ConfigError
from torchshrink.layers import FilterFn, default_filter, module_weights
from torchshrink.pruning.apply import independent_copy, permanent_copy, prune_from_zeros_
from torchshrink.quant.adds import has_join_quant
from torchshrink.quant.apply import (
    QuantConfig,
    attach_input_quant_,
    calibrate_,
    detach_input_quant_,
    input_skip_reason,
    quantize_,
    set_scales_trainable,
)
from torchshrink.quant.fake_quant import FakeQuant
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.primitives import check_bits
from torchshrink.quant.sharing import Codebook, codebook_layers, codebook_quantize_
from torchshrink.recipes.results import QuantResult
from torchshrink.recipes.train import EpochStats, TrainConfig, fit, model_device

__all__ = ["Calibration", "FINETUNE", "CodebookConfig", "prepare_quantized", "ptq", "qat", "codebook",
           "dequantized_copy"]

# where activation ranges come from: a Task (its calibration batches, else its first training batches), or
# any iterable of input tensors or (inputs, targets) batches, e.g. a DataLoader
Calibration = Task | Iterable[Any] | None


def _plain_copy(model: nn.Module) -> nn.Module:
    # contiguous (not channels_last) weights: a model loaded from a file then computes bit-identical outputs
    return permanent_copy(model).cpu().eval().to(memory_format=torch.contiguous_format)


@torch.no_grad()
def dequantized_copy(model: nn.Module) -> nn.Module:
    """A copy of a fake-quantized model (:func:`ptq`, :func:`qat`) with its quantizers removed: each weight is
    its latent float tensor (masked zeros kept, masks dropped), inputs are no longer quantized. The starting
    point of QAT at another width from a trained one (e.g. 2 bits from 4); ``model`` itself is untouched.

    Raises:
        ConfigError: a codebook layer (its float weights are gone), or quantized residual adds.
    """
    if has_join_quant(model):
        raise ConfigError("dequantized_copy: the model quantizes its residual adds and concatenations; "
                          "start from one quantized without QuantConfig(quantize_joins=True)")  # fmt: skip
    clone = independent_copy(model)
    for name, module in clone.named_modules():
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                chain = module.parametrizations[attr]
                if any(isinstance(p, Codebook) for p in chain):
                    raise ConfigError(f"{name}.{attr}: a codebook layer keeps no float weights to start from")
                value = chain.original
                for p in chain:  # the masks (and any other non-quantizing parametrization), in order
                    if not isinstance(p, FakeQuant):
                        value = p(value)
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
                getattr(module, attr).copy_(value)
        detach_input_quant_(module)
    return clone


# the fine-tuning of QAT and of codebooks where none is given: two epochs at a peak rate of 0.01
FINETUNE = TrainConfig(epochs=2, lr=0.01)


@dataclass(frozen=True)
class CodebookConfig:
    """k-means weight sharing (:func:`codebook`): each layer's weights clustered into ``2^bits - 1`` shared
    values plus the exact zero of pruned weights.

    >>> CodebookConfig(bits={"fc": 3}).bits
    {'fc': 3}
    """

    bits: int | Mapping[str, int] = 4  # log2 of the codebook size: one for every layer, or one per layer name
    act_bits: int | None = None  # input code width of each layer (None: inputs stay float); the first layer's is 8

    def __post_init__(self) -> None:
        if isinstance(self.bits, Mapping):
            object.__setattr__(self, "bits", dict(self.bits))
            for width in self.bits.values():
                check_bits(width)
        else:
            check_bits(self.bits)
        if self.act_bits is not None:
            check_bits(self.act_bits)

    def to_dict(self) -> dict[str, Any]:
        return {"bits": dict(self.bits) if isinstance(self.bits, Mapping) else self.bits, "act_bits": self.act_bits}


def prepare_quantized(
    model: nn.Module, config: QuantConfig, keep_sparsity: bool = True, filter_fn: FilterFn | None = None
) -> nn.Module:
    """A quantizable copy of ``model``: masks made permanent, BatchNorm folded, masks re-attached from the
    zeros (so pruned weights stay exact zeros through QAT), fake quant attached to the layers ``filter_fn``
    accepts. The original is untouched.
    """
    filter_fn = filter_fn or default_filter
    q = _plain_copy(model)
    fold_batchnorm(q)
    if keep_sparsity and any(bool((p == 0).any()) for p in q.parameters() if p.ndim > 1):
        prune_from_zeros_(q, filter_fn)
    return quantize_(q, config, filter_fn)


def ptq(
    model: nn.Module,
    calibration: Calibration,
    config: QuantConfig,
    *,
    calibration_samples: int | None = None,
    filter_fn: FilterFn | None = None,
) -> QuantResult:
    """Post-training quantization: a quantized copy (on the CPU) whose activation ranges are calibrated on
    ``calibration`` (a Task, a DataLoader or a list of batches; at most ``calibration_samples`` samples of it;
    ``None`` for weight-only quantization). ``filter_fn(module, name)`` chooses the layers to quantize
    (default: every layer of a known kind, :mod:`torchshrink.kinds`)."""
    q = prepare_quantized(model, config, filter_fn=filter_fn)
    if config.quantize_inputs:
        calibrate_(q, calibration_inputs(calibration, calibration_samples), config.act_calibration)
    return QuantResult(q)


def qat(
    model: nn.Module,
    task: Task,
    config: QuantConfig,
    *,
    train: TrainConfig = FINETUNE,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn | None = None,
    log: Callable[[str], None] | None = print,
    calibration_samples: int | None = None,
    progress: bool = True,
) -> QuantResult:
    """Quantization-aware training: start from PTQ, then fine-tune weights and LSQ step sizes together with
    fake quant in the loop (straight-through rounding), distilled from ``teacher`` if ``train.distill``.
    Trains where ``model`` is; the original is untouched."""
    task = as_task(task)
    device = model_device(model)
    q = ptq(model, task, config, calibration_samples=calibration_samples, filter_fn=filter_fn).model.to(device)
    set_scales_trainable(q, True)
    history = fit(q, task, train, log=log, progress=progress, teacher=teacher)
    set_scales_trainable(q, False)
    return QuantResult(q.eval().to(memory_format=torch.contiguous_format), history)


def codebook(
    model: nn.Module,
    task: Task | None,
    config: CodebookConfig,
    *,
    train: TrainConfig | None = FINETUNE,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn | None = None,
    log: Callable[[str], None] | None = print,
    calibration_samples: int | None = None,
) -> QuantResult:
    """Weight sharing: a copy of ``model`` with BatchNorm folded, each layer's weights clustered into a
    ``config.bits``-bit codebook (pruned zeros kept exact), inputs quantized at ``config.act_bits`` (the first
    layer's input at 8 bits, as in :func:`quantize_`), then the centroids fine-tuned with ``train`` (``None``:
    no fine-tuning; distilled from ``teacher`` if ``train.distill``). Fine-tunes where ``model`` is.
    """
    task = as_task(task) if task is not None else None
    filter_fn = filter_fn or default_filter
    device = model_device(model)
    q = _plain_copy(model)
    fold_batchnorm(q)
    codebook_quantize_(q, config.bits, filter_fn)
    if dist.is_distributed():  # k-means on each rank's copy of the weights: the assignments must agree
        dist.check_same_on_all_ranks({n: cb.indices for n, cb in codebook_layers(q).items()}, "codebook assignments")
    if config.act_bits is not None:
        weights = module_weights(q)
        modules = list(dict.fromkeys(weights[n].module_name for n in codebook_layers(q)))  # one input each
        for i, name in enumerate(modules):
            if input_skip_reason(q, name) is None:  # e.g. attention's out_proj: weight shared, input left in float
                attach_input_quant_(q.get_submodule(name), 8 if i == 0 else config.act_bits)
        calibrate_(q, calibration_inputs(task, calibration_samples))
    history: list[EpochStats] = []
    if train is not None:
        if task is None:
            raise ConfigError("fine-tuning the codebooks needs a Task with training batches (or train=None)")
        q.to(device)
        set_scales_trainable(q, True)
        history = fit(q, task, train, log=log, teacher=teacher)
        set_scales_trainable(q, False)
    return QuantResult(q.eval().to(memory_format=torch.contiguous_format), history)
