"""The combined pipeline: step-by-step pruning, then quantization-aware training (or weight sharing) with the
masks kept, then a real compressed file, loaded back and evaluated."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchshrink.data.task import Batches, Task, as_task
from torchshrink.errors import ConfigError, check_finite
from torchshrink.layers import FilterFn, default_filter
from torchshrink.models import fp32_bytes
from torchshrink.pack import encode_compressed, inspect_compressed, load_compressed, save_compressed
from torchshrink.pruning import make_permanent
from torchshrink.pruning.masks import check_amount
from torchshrink.quant import QuantConfig, snap_floats_
from torchshrink.quant.primitives import check_bits
from torchshrink.recipes.gradual import gradual_prune
from torchshrink.recipes.mixed_activations import plan_activation_widths
from torchshrink.recipes.mixed_precision import FILE_MARGIN, fit_plan_to_file, plan_mixed_precision
from torchshrink.recipes.mixed_uniform import plan_uniform_mixed_precision
from torchshrink.recipes.prune import iterative_prune
from torchshrink.recipes.quantize import codebook, ptq, qat
from torchshrink.recipes.train import PRECISIONS, TrainConfig, evaluate

__all__ = ["CompressConfig", "compress_model", "write_and_verify"]


@dataclass(frozen=True)
class CompressConfig:
    """One point of the compression frontier."""

    sparsity: float = 0.0  # fraction of weights pruned (global magnitude)
    bits: int = 8  # weight bits (uniform codes, or log2 of the codebook size; the widest with a budget)
    act_bits: int | None = None  # activation bits (None: same as bits)
    prune_method: str = "iterative"  # "iterative": prune -> retrain rounds; "gradual": pruning during training
    steps: int = 4  # iterative: pruning steps (AGP schedule)
    prune_epochs: int = 1  # iterative: retraining epochs after each step; gradual: epochs of the whole run
    prune_lr: float = 0.02  # peak learning rate of the pruning's retraining
    qat_epochs: int = 2  # QAT / codebook fine-tuning epochs (0: post-training only)
    lr: float = 0.01  # peak learning rate of the fine-tuning
    distill: float = 0.0  # weight of the dense model's soft predictions in every retraining loss (0: off)
    temperature: float = TrainConfig.temperature  # softmax temperature of those predictions
    budget_bytes: int | None = None  # file size to fit with a weight width per layer, 2..bits (mixed precision)
    act_budget_bytes: int | None = None  # uniform only: one sample's layer inputs in these bytes, widths 2..act_bits
    codebook: bool = False  # k-means weight sharing instead of uniform levels
    keep_first_last_8bit: bool = False  # first/last layers at 8 bits
    float16: bool = True  # round biases and centroids to float16 values: the file stores them in half the bytes
    full_range_weights: bool = False  # uniform only: every signed weight code (4 levels at 2 bits, not ternary)
    precision: str = "fp32"  # of every (re)training forward pass: "fp32" or "bf16" (see TrainConfig.precision)

    def __post_init__(self) -> None:
        check_finite(self, "sparsity", "prune_lr", "lr", "distill", "temperature")
        check_amount(self.sparsity)
        check_bits(self.bits)
        if self.act_bits is not None:
            check_bits(self.act_bits)
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps}: must be at least 1")
        if self.prune_method not in ("iterative", "gradual"):
            raise ConfigError(f"prune_method={self.prune_method!r}: choose 'iterative' or 'gradual'")
        if self.budget_bytes is not None and self.keep_first_last_8bit and not self.codebook:
            raise ConfigError("keep_first_last_8bit with a size budget: the budget chooses every layer's width, the "
                              "first and last included; drop one of them")  # fmt: skip
        if self.act_budget_bytes is not None and self.codebook:
            raise ConfigError("act_budget_bytes chooses the input widths of uniform quantization; codebook weight "
                              "sharing takes one act_bits: drop one of them")  # fmt: skip
        if not isinstance(self.full_range_weights, bool):
            raise ConfigError(f"full_range_weights={self.full_range_weights!r}: must be True or False")
        if self.full_range_weights and self.codebook:
            raise ConfigError("full_range_weights sets the range of uniform weight codes; codebook weight sharing "
                              "has no such range: drop one of them")  # fmt: skip
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: must be positive")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not (self.prune_lr > 0 and self.lr > 0 and 0 <= self.distill <= 1):
            raise ConfigError(f"prune_lr={self.prune_lr}, lr={self.lr}, distill={self.distill}: need positive learning "
                              "rates and distill in [0, 1]")  # fmt: skip
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ConfigError(f"budget_bytes={self.budget_bytes}: must be positive")
        if self.act_budget_bytes is not None and self.act_budget_bytes < 1:
            raise ConfigError(f"act_budget_bytes={self.act_budget_bytes}: must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compress_model(
    base: nn.Module,
    task: Task,
    cfg: CompressConfig,
    device: str | torch.device | None = None,
    log: Callable[[str], None] | None = print,
    pruned: nn.Module | None = None,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
    filter_fn: FilterFn = default_filter,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune (unless ``pruned`` is given: an already-pruned model to reuse) and quantize a copy of ``base``.

    With a size budget the per-layer weight widths are fitted to the real file's size rather than to an
    estimate of its header (``record["mixed_precision"]``); ``model_name`` and ``model_args`` are what the file
    will carry (a registered architecture), or ``None`` for a model of your own. With an activation budget
    (uniform only) the per-layer input widths are planned first (``record["activation_precision"]``).
    """
    task = as_task(task) if task is not None else None
    record: dict[str, Any] = {"config": cfg.to_dict()}
    teacher = base if cfg.distill else None
    start = time.perf_counter()
    if pruned is None:
        pruned = copy.deepcopy(base)
        if cfg.sparsity > 0:
            prune_cfg = TrainConfig(epochs=cfg.prune_epochs, lr=cfg.prune_lr, distill=cfg.distill,
                                    temperature=cfg.temperature, precision=cfg.precision)  # fmt: skip
            if cfg.prune_method == "gradual":
                steps = [gradual_prune(pruned, task, cfg.sparsity, prune_cfg, teacher=teacher, device=device, log=log,
                                       filter_fn=filter_fn)]
            else:
                steps = iterative_prune(pruned, task, cfg.sparsity, cfg.steps, prune_cfg, device=device, log=log,
                                        teacher=teacher, filter_fn=filter_fn)  # fmt: skip
            record["prune_steps"] = [s.to_dict() for s in steps]
        make_permanent(pruned)
    record["prune_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    act_bits = cfg.act_bits if cfg.act_bits is not None else cfg.bits
    train = (TrainConfig(epochs=cfg.qat_epochs, lr=cfg.lr, distill=cfg.distill, temperature=cfg.temperature,
                         precision=cfg.precision) if cfg.qat_epochs else None)  # fmt: skip
    if cfg.codebook:
        bits: int | dict[str, int] = cfg.bits
        if cfg.budget_bytes is not None:
            plan = plan_mixed_precision(pruned, task, cfg.budget_bytes, tuple(range(2, cfg.bits + 1)), log=log,
                                        filter_fn=filter_fn)

            def clustered_file(b: dict[str, int]) -> int:  # before fine-tuning, which keeps the indices
                model = codebook(pruned, task, b, act_bits, None, "cpu", log=None, filter_fn=filter_fn)
                return _file_bytes(model, cfg, model_name, model_args)

            plan = fit_plan_to_file(plan, clustered_file, log=log)
            bits = plan.bits
            record["mixed_precision"] = plan.to_dict()
        model = codebook(pruned, task, bits, act_bits, train, device, log=log, teacher=teacher, filter_fn=filter_fn)
    else:
        qcfg = QuantConfig(bits=cfg.bits, act_bits=act_bits, keep_first_last_8bit=cfg.keep_first_last_8bit,
                           full_range_weights=cfg.full_range_weights)  # fmt: skip
        if cfg.act_budget_bytes is not None:  # first: the file measured for the weights holds these input widths
            acts = plan_activation_widths(pruned, task, cfg.act_budget_bytes, tuple(range(2, act_bits + 1)), log=log,
                                          filter_fn=filter_fn)  # fmt: skip
            qcfg = replace(qcfg, layer_act_bits=acts.bits)
            record["activation_precision"] = acts.to_dict()
        if cfg.budget_bytes is not None:

            def quantized_file(b: dict[str, int]) -> int:  # after PTQ, before QAT
                model = ptq(pruned, task, replace(qcfg, layer_bits=b), filter_fn=filter_fn)
                return _file_bytes(model, cfg, model_name, model_args)

            plan = plan_uniform_mixed_precision(pruned, task, cfg.budget_bytes, tuple(range(2, cfg.bits + 1)), log=log,
                                                filter_fn=filter_fn, file_bytes=quantized_file,
                                                full_range=cfg.full_range_weights)  # fmt: skip
            plan = fit_plan_to_file(plan, quantized_file, margin=_margin(cfg), log=log)
            qcfg = replace(qcfg, layer_bits=plan.bits)
            record["mixed_precision"] = plan.to_dict()
        if train:
            model = qat(pruned, task, qcfg, train, device, log=log, teacher=teacher, filter_fn=filter_fn)[0]
        else:
            model = ptq(pruned, task, qcfg, filter_fn=filter_fn)
    if cfg.float16:
        snap_floats_(model)
    record["quant_seconds"] = time.perf_counter() - start
    model = model.cpu().eval()
    if cfg.budget_bytes is not None and log is not None:
        size = _file_bytes(model, cfg, model_name, model_args)
        if size > cfg.budget_bytes:  # fine-tuning moved more codes (uniform) or header floats than the margin allows
            log(f"warning: the fine-tuned file takes {size:,} bytes, over the budget of {cfg.budget_bytes:,}")
    return model, record


def _file_bytes(
    model: nn.Module, cfg: CompressConfig, model_name: str | None, model_args: dict[str, Any] | None
) -> int:
    """Size of the file of a quantized model, its floats snapped as ``compress_model`` snaps them.

    Codebook fine-tuning keeps the indices, so the file it leaves is this size up to the floats the header
    prints; QAT moves uniform codes too (see :func:`_margin`)."""
    if cfg.float16:
        snap_floats_(model)
    return len(encode_compressed(model, model_name, model_args)[0])


def _margin(cfg: CompressConfig) -> int:
    """Bytes of the budget kept free when uniform widths are fitted to the PTQ file.

    QAT moves weights and step sizes, so codes change and their Huffman-coded size with them: by 0.1-0.2% of
    the file on a small CNN (measured: +4 and +8 bytes on 3.5 and 4.3 KB); 0.5% of the budget covers that.
    """
    return FILE_MARGIN + (cfg.budget_bytes or 0) // 200 if cfg.qat_epochs else FILE_MARGIN


def write_and_verify(
    model: nn.Module,
    base: nn.Module,
    batches: Batches,
    path: str | os.PathLike[str],
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
    compression: str = "auto",
    entropy: bool = True,
) -> dict[str, Any]:
    """Write the file, load it back, and measure what matters from the file itself on ``batches`` (the test
    set, for reported figures): the metric (``test_accuracy``) and loss of the loaded model and of ``model``."""
    path = Path(path)
    header = save_compressed(model, path, model_name, model_args, compression, entropy)
    # a registered architecture is rebuilt from the file; a model of your own is filled into a copy of ``base``
    loaded = load_compressed(path) if model_name is not None else load_compressed(path, model=copy.deepcopy(base))
    acc, loss = evaluate(loaded, batches)
    fq_acc, _ = evaluate(model, batches)
    _, rows = inspect_compressed(path)
    weights = [r for r in rows if r.encoding in ("uniform", "codebook")]
    params = sum(math.prod(r.shape) for r in weights)
    nonzeros = sum(round((1 - r.sparsity) * math.prod(r.shape)) for r in weights)
    # bits x non-zero codes: what the weights would take with free positions and no scales, biases, header
    theoretical = sum(r.bits * round((1 - r.sparsity) * math.prod(r.shape)) for r in weights) / 8
    size = path.stat().st_size
    return {
        "file": str(path), "file_bytes": size, "fp32_bytes": fp32_bytes(base), "ratio": fp32_bytes(base) / size,
        "test_accuracy": acc, "test_loss": loss, "fake_quant_test_accuracy": fq_acc,
        "weight_params": params, "nonzeros": nonzeros, "sparsity": 1 - nonzeros / params,
        "theoretical_weight_bytes": theoretical, "compression": header["compression"], "huffman": entropy,
        "bits": sorted({r.bits for r in weights}),
    }  # fmt: skip
