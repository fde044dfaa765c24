"""The study's stages. Each is a function ``(context, folder) -> result dict`` whose files go in ``folder``;
the runner caches results by the stage's settings and upstream keys."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchshrink.checkpoint import load_checkpoint, save_checkpoint
from torchshrink.data import FashionMNIST, Task
from torchshrink.measure import count_macs, latency
from torchshrink.models import build_model, fp32_bytes, layer_table, parameter_count
from torchshrink.pruning import (
    PruneConfig,
    StructuredConfig,
    permanent_copy,
    prune_,
    sparsity_report,
    structured_prune_,
    structured_report,
)
from torchshrink.pruning.structured import check_group_names
from torchshrink.quant import QuantConfig, storage_report
from torchshrink.recipes import (
    CompressConfig,
    GradualConfig,
    IterativeConfig,
    TrainConfig,
    compress_model,
    dequantized_copy,
    evaluate,
    fit,
    gradual_prune,
    iterative_prune,
    layer_sensitivity,
    ptq,
    qat,
    val_metric,
    write_and_verify,
)
from torchshrink.recipes.teacher import MemoTeacher
from torchshrink.study.config import CombinedPoint, ContinuedStep, QuantPoint, StudyConfig

__all__ = ["Context", "baseline", "oneshot", "sensitivity", "iterative_step", "gradual", "continued", "quantize_width",
           "quant_point", "combined_point", "point_file", "check_structured", "structured"]  # fmt: skip


@dataclass
class Context:
    """What every stage needs: settings, data, device, a logger."""

    cfg: StudyConfig
    data: FashionMNIST
    device: torch.device
    log: Callable[[str], None]

    @property
    def task(self) -> Task:
        """The training, validation and calibration batches every procedure takes (default batch size)."""
        return self.data.task(calibration_images=self.cfg.data.calibration_images)

    memo: MemoTeacher | None = None

    def teacher(self, base: nn.Module) -> nn.Module:
        """``base`` as a distillation teacher: one :class:`MemoTeacher` for the whole run, so the stages that
        distil from it over the same seeded batches compute its logits once (the values are the same)."""
        if self.memo is None or self.memo.model is not base:
            self.memo = MemoTeacher(base)
        return self.memo

    def test(self, model: nn.Module) -> float:
        return evaluate(model, self.data.test_batches(), device=self.device)[0]


def _model_args(model: nn.Module) -> dict[str, Any]:
    return model.arguments() if hasattr(model, "arguments") else {}


def baseline(ctx: Context, folder: Path) -> dict[str, Any]:
    b = ctx.cfg.baseline
    torch.manual_seed(ctx.cfg.seed)
    model = build_model(b.model)
    train = TrainConfig(epochs=b.epochs, lr=b.lr, seed=ctx.cfg.seed, ema=b.ema, precision=ctx.cfg.precision)
    task = ctx.data.task(batch_size=b.batch_size, crop_padding=b.crop_padding, erase=b.erase)
    start = time.perf_counter()
    history = fit(model.to(ctx.device), task, train, log=ctx.log)
    seconds = time.perf_counter() - start
    acc = ctx.test(model)
    save_checkpoint(folder / "model", model, b.model, _model_args(model), metrics={"test_accuracy": acc})
    return {
        "test_accuracy": acc, "val_accuracy": history[-1].val_accuracy, "train_seconds": seconds, "parameters": parameter_count(model),
        "fp32_bytes": fp32_bytes(model), "layers": [r.__dict__ for r in layer_table(model)],
        "history": [h.__dict__ for h in history],
        "train_config": {**train.to_dict(), "batch_size": b.batch_size, "crop_padding": b.crop_padding,
                         "erase": b.erase},
    }  # fmt: skip


def load_model(folder: Path, device: torch.device) -> nn.Module:
    return load_checkpoint(folder / "model", device=device).model


def oneshot(ctx: Context, base: nn.Module) -> dict[str, Any]:
    curves: dict[str, dict[str, float]] = {}
    for scope in ("layer", "global"):
        curves[scope] = {}
        for s in ctx.cfg.oneshot.sparsities:
            model = copy.deepcopy(base)
            prune_(model, PruneConfig(s, scope))
            curves[scope][str(s)] = ctx.test(model)
    return {"test_accuracy": curves}


def sensitivity(ctx: Context, base: nn.Module) -> dict[str, Any]:
    curves = layer_sensitivity(base, ctx.task, ctx.cfg.sensitivity.sparsities, progress=False)
    return {"val_accuracy": {n: {str(s): a for s, a in c.items()} for n, c in curves.items()}}


def iterative_step(ctx: Context, model: nn.Module, start: float, target: float, folder: Path) -> dict[str, Any]:
    """Continue step-by-step pruning of ``model`` (in place) from sparsity ``start`` to ``target``."""
    it = ctx.cfg.iterative
    t0 = time.perf_counter()
    finetune = TrainConfig(epochs=it.epochs_per_step, lr=it.lr, seed=ctx.cfg.seed, precision=ctx.cfg.precision)
    config = IterativeConfig(target, it.steps_per_target, finetune, initial=start)
    steps = iterative_prune(model, ctx.task, config, log=ctx.log).steps
    seconds = time.perf_counter() - t0
    plain = permanent_copy(model)
    rows = sparsity_report(plain)
    achieved = 1 - sum(r.nonzeros for r in rows) / sum(r.params for r in rows)
    acc = ctx.test(plain)
    save_checkpoint(folder / "model", plain, ctx.cfg.baseline.model, _model_args(plain), metrics={"test_accuracy": acc})
    return {
        "target": target, "sparsity": achieved, "test_accuracy": acc, "seconds": seconds,
        "nonzeros": sum(r.nonzeros for r in rows), "params": sum(r.params for r in rows),
        "layers": [r.to_dict() for r in rows], "steps": [s.to_dict() for s in steps],
    }  # fmt: skip


def gradual(ctx: Context, base: nn.Module, folder: Path) -> dict[str, Any]:
    """Prune a copy of the dense baseline during one training run, distilled from the baseline."""
    config = ctx.cfg.gradual.recipe(ctx.cfg.seed, ctx.cfg.precision)
    return _gradual_run(ctx, copy.deepcopy(base), base, config, folder)


def continued(
    ctx: Context, base: nn.Module, pruned: nn.Module, folder: Path, step: ContinuedStep | None = None
) -> dict[str, Any]:
    """Prune the gradual stage's model (or, for a ``step`` of ``continued.more``, the model of the run before)
    further in a shorter run, still distilled from the baseline."""
    c, first = step or ctx.cfg.continued, ctx.cfg.gradual.recipe(ctx.cfg.seed, ctx.cfg.precision)
    assert c.sparsity is not None
    train = replace(first.train, epochs=c.epochs, lr=c.lr)
    return _gradual_run(ctx, pruned, base, replace(first, sparsity=c.sparsity, train=train, start=0.0, end=c.end), folder)


def _gradual_run(ctx: Context, model: nn.Module, base: nn.Module, config: GradualConfig, folder: Path) -> dict[str, Any]:
    teacher = ctx.teacher(base) if config.train.distill else None
    step = gradual_prune(model, ctx.task, config, teacher=teacher, log=ctx.log).steps[0]
    plain = permanent_copy(model)
    rows = sparsity_report(plain)
    acc = ctx.test(plain)
    save_checkpoint(folder / "model", plain, ctx.cfg.baseline.model, _model_args(plain), metrics={"test_accuracy": acc})
    return {
        "target": config.sparsity, "sparsity": step.achieved, "test_accuracy": acc, "val_accuracy": step.val_acc_retrained,
        "seconds": step.seconds, "nonzeros": sum(r.nonzeros for r in rows), "params": sum(r.params for r in rows),
        "layers": [r.to_dict() for r in rows], "train_config": config.train.to_dict(),
    }  # fmt: skip


def quantize_width(ctx: Context, base: nn.Module, bits: int, first_last_8bit: bool) -> dict[str, Any]:
    q = ctx.cfg.quantization
    config = QuantConfig(bits=bits, act_calibration=q.calibration, keep_first_last_8bit=first_last_8bit,
                         full_range_weights=bits in q.full_range_bits)  # fmt: skip
    model = ptq(base, ctx.task, config).model
    ptq_acc = ctx.test(model)
    storage = sum(r.total_bytes for r in storage_report(model))
    t0 = time.perf_counter()
    qat_acc, seconds = None, 0.0
    if q.qat_epochs:
        train = TrainConfig(epochs=q.qat_epochs, lr=q.lr, seed=ctx.cfg.seed, precision=ctx.cfg.precision)
        model = qat(base, ctx.task, config, train=train, log=ctx.log).model
        qat_acc, seconds = ctx.test(model), time.perf_counter() - t0
        qat_val = val_metric(model, ctx.task)
    return {"bits": bits, "act_bits": bits, "first_last_8bit": first_last_8bit,
            "full_range": config.full_range_weights, "ptq_test_accuracy": ptq_acc,
            "qat_test_accuracy": qat_acc, "qat_seconds": seconds, "weight_bytes": storage,
            **({"qat_val_accuracy": qat_val} if q.qat_epochs else {})}  # fmt: skip


def quant_point(ctx: Context, base: nn.Module, point: QuantPoint) -> dict[str, Any]:
    """A longer QAT run at ``point.bits``, distilled from the baseline, after QAT at each wider width of
    ``point.steps`` (each run starting from the latent float weights of the one before)."""
    q = ctx.cfg.quantization
    teacher = ctx.teacher(base) if point.distill else None
    t0 = time.perf_counter()
    model, history = base, []
    for bits in (*point.steps, point.bits):
        config = QuantConfig(bits=bits, act_calibration=q.calibration, keep_first_last_8bit=point.first_last_8bit,
                             full_range_weights=bits in q.full_range_bits)  # fmt: skip
        epochs = point.epochs if bits == point.bits else point.step_epochs
        train = TrainConfig(epochs=epochs, lr=point.lr, distill=point.distill, temperature=point.temperature,
                            seed=ctx.cfg.seed, precision=ctx.cfg.precision)  # fmt: skip
        start = model if model is base else dequantized_copy(model).to(ctx.device)
        done = qat(start, ctx.task, config, train=train, teacher=teacher, log=ctx.log)
        model = done.model
        history += [{"bits": bits, **h.__dict__} for h in done.history]
    storage = sum(r.total_bytes for r in storage_report(model))
    return {"bits": point.bits, "act_bits": point.bits, "first_last_8bit": point.first_last_8bit,
            "full_range": bits in q.full_range_bits, "label": point.label, "steps": list(point.steps),
            "epochs": point.epochs, "step_epochs": point.step_epochs, "distill": point.distill,
            "test_accuracy": ctx.test(model), "val_accuracy": val_metric(model, ctx.task), "weight_bytes": storage,
            "seconds": time.perf_counter() - t0, "history": history}  # fmt: skip


def combined_point(
    ctx: Context, base: nn.Module, pruned: nn.Module, point: CombinedPoint, folder: Path
) -> dict[str, Any]:
    c = ctx.cfg.combined
    finetune = TrainConfig(epochs=c.qat_epochs, lr=c.lr, distill=c.distill, temperature=c.temperature,
                           precision=ctx.cfg.precision) if c.qat_epochs else None  # fmt: skip
    cfg = CompressConfig(quant=QuantConfig(bits=point.bits, act_bits=point.act_bits), codebook=point.codebook,
                         finetune=finetune, budget_bytes=point.budget_bytes)  # fmt: skip
    name, args = ctx.cfg.baseline.model, _model_args(base)
    done = compress_model(base, ctx.task, cfg, log=ctx.log, pruned=pruned, model_name=name, model_args=args,
                          teacher=ctx.teacher(base))  # fmt: skip
    model, record = done.model, done.record
    result = write_and_verify(model, base, ctx.data.test_batches(), folder / point_file(point), name, args)
    result["file"] = point_file(point)
    result["val_accuracy"] = val_metric(model, ctx.task)  # the model written (its file scores the same)
    extra = {"mixed_precision": record["mixed_precision"]} if "mixed_precision" in record else {}
    return {"label": point.label, "role": point.role, "source": point.source, "config": cfg.to_dict(), **result, **extra,
            "seconds": record["quant_seconds"]}  # fmt: skip


def point_file(point: CombinedPoint) -> str:
    """The file name of a combined point, e.g. ``gradual-s0.9-w4a8-codebook-budget32000.tshrink``."""
    kind = "codebook" if point.codebook else "uniform"
    budget = f"-budget{point.budget_bytes}" if point.budget_bytes else ""
    return f"{point.source}-s{point.sparsity:g}-w{point.bits}a{point.act_bits}-{kind}{budget}.tshrink"


def check_structured(cfg: StudyConfig) -> None:
    """Refuse, before any work, ``structured.layer_amounts`` naming no channel group of the baseline model."""
    if cfg.structured.layer_amounts:
        groups = [g.label for g in structured_report(build_model(cfg.baseline.model)) if g.prunable]
        check_group_names(cfg.structured.layer_amounts, groups, f"structured.layer_amounts of {cfg.baseline.model!r}")


def structured(ctx: Context, base: nn.Module) -> dict[str, Any]:
    s = ctx.cfg.structured
    small = copy.deepcopy(base)
    channels = structured_prune_(small, StructuredConfig(s.amount, layer_sparsity=s.layer_amounts))
    pruned_acc = ctx.test(small)
    if s.finetune_epochs:
        train = TrainConfig(epochs=s.finetune_epochs, lr=s.lr, distill=s.distill, temperature=s.temperature,
                            seed=ctx.cfg.seed, precision=ctx.cfg.precision)  # fmt: skip
        fit(small, ctx.task, train, log=ctx.log, teacher=ctx.teacher(base) if s.distill else None)
    acc, val = ctx.test(small), val_metric(small, ctx.task)
    base_cpu, small_cpu = copy.deepcopy(base).cpu(), copy.deepcopy(small).cpu()
    lat = {}
    for batch in (256, 1):
        dense_t, small_t = [], []
        for _ in range(3):  # interleaved: both see the same machine load
            dense_t.append(latency(base_cpu, batch, repeats=5 if batch == 256 else 50))
            small_t.append(latency(small_cpu, batch, repeats=5 if batch == 256 else 50))
        lat[str(batch)] = {"dense_s": min(dense_t), "pruned_s": min(small_t), "speedup": min(dense_t) / min(small_t)}
    return {
        "amount": s.amount, "layer_amounts": dict(s.layer_amounts), "channels": {k: list(v) for k, v in channels.items()},
        "params_before": parameter_count(base), "params_after": parameter_count(small),
        "macs_before": count_macs(base_cpu), "macs_after": count_macs(small_cpu),
        "test_accuracy_pruned": pruned_acc, "test_accuracy": acc, "val_accuracy": val, "latency": lat,
    }  # fmt: skip
