"""The combined pipeline: step-by-step pruning, then quantization-aware training (or weight sharing) with the
masks kept, then a real compressed file, loaded back and evaluated."""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchshrink.data.task import Batches, Task, as_task
from torchshrink.errors import ConfigError
from torchshrink.layers import FilterFn, default_filter
from torchshrink.models import fp32_bytes
from torchshrink.pack import encode_compressed, inspect_compressed, load_compressed, save_compressed
from torchshrink.pack.format import MAGIC
from torchshrink.pruning import make_permanent
from torchshrink.quant import QuantConfig, snap_floats_
from torchshrink.recipes.gradual import GradualConfig, gradual_prune
from torchshrink.recipes.mixed_activations import plan_activation_widths
from torchshrink.recipes.mixed_precision import FILE_MARGIN, fit_plan_to_file, folded_copy, plan_mixed_precision
from torchshrink.recipes.mixed_uniform import plan_uniform_mixed_precision
from torchshrink.recipes.prune import IterativeConfig, iterative_prune
from torchshrink.recipes.quantize import FINETUNE, CodebookConfig, codebook, ptq, qat
from torchshrink.recipes.results import CompressResult
from torchshrink.recipes.train import TrainConfig, evaluate

__all__ = ["CompressConfig", "compress_model", "smallest_file_bytes", "write_and_verify"]


@dataclass(frozen=True)
class CompressConfig:
    """One point of the compression frontier: how to prune, how to quantize, how to fine-tune, what budget.

    >>> cfg = CompressConfig(prune=GradualConfig(0.9), quant=QuantConfig(bits=4, act_bits=8))
    >>> cfg.sparsity, cfg.quant.bits, cfg.finetune.epochs
    (0.9, 4, 2)
    """

    prune: IterativeConfig | GradualConfig | None = None  # how weights are pruned first (None: not pruned here)
    quant: QuantConfig = QuantConfig()  # widths of weights and inputs (with codebook: bits is log2 of its size)
    codebook: bool = False  # k-means weight sharing at quant.bits (inputs at quant.act_bits) instead of uniform codes
    finetune: TrainConfig | None = FINETUNE  # QAT / codebook fine-tuning with the masks kept (None: post-training)
    budget_bytes: int | None = None  # file size to fit with a weight width per layer, 2..quant.bits (mixed precision)
    act_budget_bytes: int | None = None  # uniform only: one sample's layer inputs in these bytes, widths 2..act_bits
    float16: bool = True  # round biases and centroids to float16 values: the file stores them in half the bytes

    def __post_init__(self) -> None:
        if self.prune is not None and not isinstance(self.prune, (IterativeConfig, GradualConfig)):
            raise ConfigError(f"prune={self.prune!r}: give an IterativeConfig, a GradualConfig or None")
        if not isinstance(self.quant, QuantConfig):
            raise ConfigError(f"quant={self.quant!r}: give a QuantConfig")
        if self.finetune is not None and not isinstance(self.finetune, TrainConfig):
            raise ConfigError(f"finetune={self.finetune!r}: give a TrainConfig or None (post-training only)")
        if self.budget_bytes is not None and self.quant.keep_first_last_8bit and not self.codebook:
            raise ConfigError("keep_first_last_8bit with a size budget: the budget chooses every layer's width, the "
                              "first and last included; drop one of them")  # fmt: skip
        if self.act_budget_bytes is not None and self.codebook:
            raise ConfigError("act_budget_bytes chooses the input widths of uniform quantization; codebook weight "
                              "sharing takes one act_bits: drop one of them")  # fmt: skip
        if self.quant.full_range_weights and self.codebook:
            raise ConfigError("full_range_weights sets the range of uniform weight codes; codebook weight sharing "
                              "has no such range: drop one of them")  # fmt: skip
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise ConfigError(f"budget_bytes={self.budget_bytes}: must be positive")
        if self.act_budget_bytes is not None and self.act_budget_bytes < 1:
            raise ConfigError(f"act_budget_bytes={self.act_budget_bytes}: must be positive")

    @property
    def sparsity(self) -> float:
        """The sparsity the pruning reaches (0.0 without pruning)."""
        return 0.0 if self.prune is None else self.prune.sparsity

    def to_dict(self) -> dict[str, Any]:
        method = {IterativeConfig: "iterative", GradualConfig: "gradual"}.get(type(self.prune))
        prune = None if self.prune is None else {"method": method, **self.prune.to_dict()}
        return {"prune": prune, "quant": self.quant.to_dict(), "codebook": self.codebook,
                "finetune": None if self.finetune is None else self.finetune.to_dict(),
                "budget_bytes": self.budget_bytes, "act_budget_bytes": self.act_budget_bytes,
                "float16": self.float16}  # fmt: skip


def compress_model(
    base: nn.Module,
    task: Task,
    config: CompressConfig,
    *,
    pruned: nn.Module | None = None,
    teacher: nn.Module | None = None,
    filter_fn: FilterFn | None = None,
    log: Callable[[str], None] | None = print,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> CompressResult:
    """Prune (unless ``pruned`` is given: an already-pruned model to reuse) and quantize a copy of ``base``,
    where ``base`` is.

    Every retraining whose config sets ``distill > 0`` learns from ``teacher`` (default: ``base``). With a size
    budget the per-layer weight widths are fitted to the real file's size rather than to an estimate of its
    header (``record["mixed_precision"]``); ``model_name`` and ``model_args`` are what the file will carry (a
    registered architecture), or ``None`` for a model of your own. With an activation budget (uniform only) the
    per-layer input widths are planned first (``record["activation_precision"]``).
    """
    task = as_task(task) if task is not None else None
    filter_fn = filter_fn or default_filter
    cfg = config
    if cfg.budget_bytes is not None:  # before any pruning: a budget no file can meet is refused at once
        floor = smallest_file_bytes(base, cfg, model_name, model_args, filter_fn=filter_fn)
        if cfg.budget_bytes < floor:
            raise ConfigError(f"budget_bytes={cfg.budget_bytes:,}: {_below_floor(floor)}")
    record: dict[str, Any] = {"config": cfg.to_dict()}
    teacher = (teacher if teacher is not None else base) if any(t.distill > 0 for t in _trainings(cfg)) else None
    start = time.perf_counter()
    if pruned is None:
        pruned = copy.deepcopy(base)
        if cfg.prune is not None and cfg.prune.sparsity > 0:
            if isinstance(cfg.prune, GradualConfig):
                result = gradual_prune(pruned, task, cfg.prune, teacher=teacher, log=log, filter_fn=filter_fn)
            else:
                result = iterative_prune(pruned, task, cfg.prune, log=log, teacher=teacher, filter_fn=filter_fn)
            record["prune_steps"] = [s.to_dict() for s in result.steps]
        make_permanent(pruned)
    record["prune_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    q = cfg.quant
    widths = tuple(range(2, q.bits + 1))
    if cfg.codebook:
        bits: int | dict[str, int] = q.bits
        if cfg.budget_bytes is not None:
            plan = plan_mixed_precision(pruned, task, cfg.budget_bytes, widths, log=log, filter_fn=filter_fn)

            def clustered_file(b: dict[str, int]) -> int:  # before fine-tuning, which keeps the indices
                model = codebook(pruned, task, CodebookConfig(b, q.activation_bits), train=None, log=None,
                                 filter_fn=filter_fn).model  # fmt: skip
                return _file_bytes(model, cfg, model_name, model_args)

            plan = fit_plan_to_file(plan, clustered_file, log=log)
            bits = plan.bits
            record["mixed_precision"] = plan.to_dict()
        model = codebook(pruned, task, CodebookConfig(bits, q.activation_bits), train=cfg.finetune, log=log,
                         teacher=teacher, filter_fn=filter_fn).model  # fmt: skip
    else:
        if cfg.act_budget_bytes is not None:  # first: the file measured for the weights holds these input widths
            acts = plan_activation_widths(pruned, task, cfg.act_budget_bytes, tuple(range(2, q.activation_bits + 1)),
                                          log=log, filter_fn=filter_fn)  # fmt: skip
            q = replace(q, layer_act_bits=acts.bits)
            record["activation_precision"] = acts.to_dict()
        if cfg.budget_bytes is not None:

            def quantized_file(b: dict[str, int]) -> int:  # after PTQ, before QAT
                model = ptq(pruned, task, replace(q, layer_bits=b), filter_fn=filter_fn).model
                return _file_bytes(model, cfg, model_name, model_args)

            plan = plan_uniform_mixed_precision(pruned, task, cfg.budget_bytes, widths, log=log, filter_fn=filter_fn,
                                                file_bytes=quantized_file, full_range=q.full_range_weights)  # fmt: skip
            plan = fit_plan_to_file(plan, quantized_file, margin=_margin(cfg), log=log)
            q = replace(q, layer_bits=plan.bits)
            record["mixed_precision"] = plan.to_dict()
        if cfg.finetune is not None:
            model = qat(pruned, task, q, train=cfg.finetune, log=log, teacher=teacher, filter_fn=filter_fn).model
        else:
            model = ptq(pruned, task, q, filter_fn=filter_fn).model
    if cfg.float16:
        snap_floats_(model)
    record["quant_seconds"] = time.perf_counter() - start
    model = model.cpu().eval()
    if cfg.budget_bytes is not None and log is not None:
        size = _file_bytes(model, cfg, model_name, model_args)
        if size > cfg.budget_bytes:  # fine-tuning moved more codes (uniform) or header floats than the margin allows
            log(f"warning: the fine-tuned file takes {size:,} bytes, over the budget of {cfg.budget_bytes:,}")
    return CompressResult(model, record)


# what every tensor entry of a file's header holds whatever its weights are: the fields a file's storage choices
# (dense or sparse, packed or Huffman-coded) add, and the sections' offsets, depend on the weights and are left out
_ENTRY_FIELDS = ("name", "shape", "encoding", "dtype", "bits", "code_offset", "scale_count", "scale_dtype",
                 "codebook_size", "codebook_dtype")  # fmt: skip


def smallest_file_bytes(
    model: nn.Module,
    config: CompressConfig,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
    compression: str = "auto",
    filter_fn: FilterFn | None = None,
) -> int:
    """A lower bound of the size of every file :func:`compress_model` can write for ``model`` under ``config``,
    computed before any work (well under a second): what a file holds whatever its weights are.

    That is the 8-byte magic and the header length, and a header naming every tensor with its shape, encoding
    and widths (the narrowest, 2 bits): the header of the same model with every weight and float zero and
    stored at 2 bits, less every field that depends on the weights' values, compressed as the writer
    compresses it. With ``compression="none"`` the payload adds 2 bytes (float16) per float value and per
    uniform scale. Weight codes count for nothing: a QAT step size may round a whole layer to zero codes, and
    the payload's entropy stage may shrink the rest. So the bound is safe, not tight: 426 bytes for a
    ``cnn_tiny`` whose smallest real file (98% pruned, 2-bit codebook) takes 1,085.

    Args:
        model: the model before pruning, as given to :func:`compress_model`.
        config: the run's settings; only ``codebook`` (which encoding the weights take) matters.
        model_name, model_args: what the file will name (``None``: a model of your own).
        compression: the payload's entropy stage, as for :func:`write_and_verify`.
        filter_fn: the layers to quantize, as for :func:`compress_model`.
    """
    # a probe: the random initialisation of the model the writer rebuilds must not move the run's random stream,
    # and the warnings quantizing it gives (e.g. layers left in float) are the real run's to give
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, header = encode_compressed(_empty_copy(model, config, filter_fn or default_filter), model_name,
                                      model_args, compression)  # fmt: skip
    entries = [{k: entry[k] for k in _ENTRY_FIELDS if k in entry} for entry in header["tensors"]]
    skeleton = json.dumps({**header, "payload_bytes": 0, "raw_payload_bytes": 0, "tensors": entries},
                          separators=(",", ":")).encode()  # fmt: skip
    head = min(len(skeleton), len(zlib.compress(skeleton, 9)))  # the writer stores the smaller, zlib at level 9
    payload = 0
    if compression == "none":  # stored as is: every float value and uniform scale takes 2 bytes at least
        payload = sum(2 * (math.prod(e["shape"]) if e["encoding"] == "float" else e.get("scale_count", 0))
                      for e in header["tensors"])  # fmt: skip
    return len(MAGIC) + 8 + head + payload


def _empty_copy(model: nn.Module, config: CompressConfig, filter_fn: FilterFn) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded, every parameter zero, quantized at 2 bits as ``config`` quantizes
    (uniform or codebook) with no input quantizers: the least any of its files can hold."""
    copy_ = folded_copy(model)
    with torch.no_grad():
        for p in copy_.parameters():
            p.zero_()
    if config.codebook:
        return codebook(copy_, None, CodebookConfig(2), train=None, log=None, filter_fn=filter_fn).model
    quant = QuantConfig(bits=2, quantize_inputs=False, weight_calibration="minmax")  # zeros: no search needed
    return ptq(copy_, None, quant, filter_fn=filter_fn).model


def _below_floor(floor: int) -> str:
    return (f"no file of this model can be that small: whatever the weights, it takes at least {floor:,} bytes "
            f"(the header naming every tensor); give a budget of at least {floor:,} bytes")  # fmt: skip


def _trainings(cfg: CompressConfig) -> list[TrainConfig]:
    """Every training the config runs: the pruning's (rounds and final fine-tune, or the gradual run), then QAT's."""
    if isinstance(cfg.prune, GradualConfig):
        pruning = [cfg.prune.train]
    else:
        pruning = [] if cfg.prune is None else [cfg.prune.finetune, cfg.prune.final]
    return [t for t in (*pruning, cfg.finetune) if t is not None]


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
    return FILE_MARGIN + (cfg.budget_bytes or 0) // 200 if cfg.finetune is not None else FILE_MARGIN


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
