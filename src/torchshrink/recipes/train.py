"""Training and evaluation loops on any model and any batches (a :class:`torchshrink.data.Task`).

``fit`` is deterministic for a given seed on CPU when the training batches are seedable (the Fashion-MNIST
adapter's are): their shuffles and augmentations draw from one generator seeded by the config's seed.

Under ``torchrun`` (a process group of several ranks, see :mod:`torchshrink.distributed`) ``fit`` trains
through DistributedDataParallel on each rank's share of every batch, and :func:`validate` reduces the metric
over the ranks' shares of the validation batches; :func:`evaluate` on batches given explicitly stays local to
the process that calls it (so rank 0 alone may evaluate what it writes). In a single process nothing of this
runs: no collective, no extra sync, the same random draws.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from torchshrink import distributed as dist
from torchshrink.data.task import Batches, LossFn, MetricFn, Seedable, Task, as_task, top1_correct
from torchshrink.errors import ConfigError, check_finite
from torchshrink.recipes.ema import WeightAverage

__all__ = [
    "TrainConfig",
    "EpochStats",
    "fit",
    "evaluate",
    "validate",
    "val_metric",
    "model_device",
    "pick_device",
    "make_optimizer",
    "make_scheduler",
    "distillation_loss",
    "PRECISIONS",
    "native_bf16",
]


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the baseline recipe, chosen on the validation split."""

    epochs: int = 15  # passes over the training split
    lr: float = 0.1  # peak learning rate of the schedule
    weight_decay: float = 5e-4  # L2 penalty (decoupled for AdamW)
    momentum: float = 0.9  # SGD Nesterov momentum
    optimizer: str = "sgd"  # "sgd" (Nesterov) or "adamw"
    schedule: str = "onecycle"  # "onecycle" or "cosine"
    warmup: float = 0.25  # share of the steps spent warming up (one-cycle)
    label_smoothing: float = 0.1  # soft targets regularise the logits
    seed: int = 0  # shuffles and augmentation of seedable batches (the model's init is the caller's)
    channels_last: bool = True  # 4-D inputs and weights in channels-last memory order: measured faster on CPU
    distill: float = 0.0  # weight of the teacher's soft targets in the loss (0: plain labels); needs a teacher
    # softmax temperature of the distillation targets: 2.0 chosen on validation among 2 and 4 for gradual pruning
    # (benchmarks/pruning_recipes.py), the default of every recipe, the command line and the study's pruning stages
    temperature: float = 2.0
    ema: float = 0.0  # decay of a moving average of the weights, validated and kept at the end (0: off)
    # "bf16": forward passes under bfloat16 autocast (weights, gradients, optimizer and evaluation stay fp32;
    # fake quantizers and codebooks pick their codes in fp32): 1.6-1.9x faster training on a CPU with AVX-512
    # BF16, slower where it is emulated. Over four seeds it scored 0.22 lower on validation than fp32 here
    # (benchmarks/baseline_recipes.py), within the seeds' spread: fp32 stays the library's default
    precision: str = "fp32"
    fp32_final_epochs: int = 0  # with precision "bf16": the last N epochs (the low learning rates) in fp32

    def __post_init__(self) -> None:
        check_finite(
            self, "lr", "weight_decay", "momentum", "warmup", "label_smoothing", "distill", "temperature", "ema"
        )
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: must be at least 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: must be positive")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}: choose 'sgd' or 'adamw'")
        if self.schedule not in ("onecycle", "cosine"):
            raise ConfigError(f"schedule={self.schedule!r}: choose 'onecycle' or 'cosine'")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing}: must be in [0, 1)")
        if not 0 <= self.distill <= 1:
            raise ConfigError(f"distill={self.distill}: must be in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: must be positive")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not 0 <= self.fp32_final_epochs <= self.epochs:
            raise ConfigError(f"fp32_final_epochs={self.fp32_final_epochs}: must be from 0 to epochs ({self.epochs})")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema={self.ema}: the decay must be in [0, 1) (0: no average)")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 < self.warmup < 1:
            raise ConfigError(f"weight_decay={self.weight_decay}, momentum={self.momentum}, warmup={self.warmup}: "
                              "need weight_decay >= 0, 0 <= momentum < 1, 0 < warmup < 1")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochStats:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    val_accuracy: float
    seconds: float
    images_per_second: float
    extra: dict[str, float] = field(default_factory=dict)


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else (``None`` or ``"auto"``) CUDA when present, else CPU. Under torchrun, ``cuda``
    is this rank's own GPU, ``cuda:LOCAL_RANK``."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; use --device cpu")
    return dist.rank_device(device)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on biases and normalisation parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle (warm up to ``lr``, anneal to ~0) or cosine decay from ``lr``, stepped once per batch.

    Runs too short for a warm-up phase (under 10 steps) use cosine decay.
    """
    if cfg.schedule == "cosine" or total_steps < 10:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.warmup, anneal_strategy="cos"
    )


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) live; CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Batches,
    *,
    loss: LossFn | None = None,
    metric: MetricFn | None = None,
    device: torch.device | str | None = None,
    channels_last: bool = True,
) -> tuple[float, float]:
    """The metric (top-1 accuracy by default, 0..1) and mean loss (cross-entropy by default) of ``model`` in
    eval mode over ``batches`` of ``(inputs, targets)``, on ``device`` (default: the model's).

    With ``channels_last`` (the default, as in :class:`TrainConfig`) 4-D inputs and weights go to channels-last
    memory order while it runs: a default CNN loaded from disk scores 10,000 images in 1.0 s instead of 2.0 s on
    2 CPU cores (measured). The model's tensors get back the memory format they had; values are untouched.

    Local to the calling process, even under torchrun (see :func:`validate` for the reduced one)."""
    score, loss_sum, n = _sums(model, batches, loss, metric, device, channels_last)
    n = max(n, 1)
    return score / n, loss_sum / n


@torch.no_grad()
def _sums(
    model: nn.Module,
    batches: Batches,
    loss: LossFn | None,
    metric: MetricFn | None,
    device: torch.device | str | None,
    channels_last: bool,
) -> tuple[float, float, int]:
    """Summed metric, summed loss and sample count of ``model`` over ``batches``."""
    device = torch.device(device) if device is not None else model_device(model)
    metric = metric if metric is not None else top1_correct
    was_training = model.training
    model.eval()
    score, loss_sum, n = 0.0, 0.0, 0
    with _channels_last(model, channels_last):  # channels-last inputs alone do not switch the convs' layout
        for xb, yb in batches:
            yb = yb.to(device, non_blocking=True)
            outputs = model(_to(xb, device, channels_last))
            count = len(yb)
            if loss is None:
                loss_sum += float(F.cross_entropy(outputs, yb, reduction="sum"))
            else:
                loss_sum += float(loss(outputs, yb)) * count
            score += float(metric(outputs, yb))
            n += count
    model.train(was_training)
    return score, loss_sum, n


@contextlib.contextmanager
def _channels_last(model: nn.Module, on: bool) -> Iterator[None]:
    """Run the body with the model's 4-D tensors in channels-last order, then give back to each the layout it
    had: a caller's model is not left in another memory format by an evaluation."""
    if not on:
        yield
        return
    def plain(t: torch.Tensor | None) -> bool:
        return t is not None and t.ndim == 4 and t.is_contiguous() and not t.is_contiguous(
            memory_format=torch.channels_last)

    # parameters keep their objects through .to() (only .data changes); buffers are replaced in their module
    params = [p for p in model.parameters() if plain(p)]
    buffers = [(m, k) for m in model.modules() for k, b in m._buffers.items() if plain(b)]
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for p in params:
            p.data = p.data.contiguous()
        for m, k in buffers:
            m._buffers[k] = m._buffers[k].contiguous()


def validate(
    model: nn.Module, task: Task, device: torch.device | str | None = None, channels_last: bool = True
) -> tuple[float, float] | None:
    """:func:`evaluate` on the task's validation batches with its loss and metric; ``None`` without them.

    Under torchrun every rank must call it: each evaluates its share of the batches and the sums are reduced,
    so all ranks get the same figures, those of the whole validation set (and take the same decisions on them).
    """
    task = as_task(task)
    if task.val is None:
        return None
    if not dist.is_distributed():
        return evaluate(model, task.val, loss=task.loss, metric=task.metric, device=device,
                        channels_last=channels_last)  # fmt: skip
    sums = _sums(model, dist.evaluation_shard(task.val), task.loss, task.metric, device, channels_last)
    score, loss_sum, n = dist.all_reduce_(torch.tensor(sums, dtype=torch.float64)).tolist()
    n = max(n, 1)
    return score / n, loss_sum / n


def val_metric(model: nn.Module, task: Task, device: torch.device | str | None = None) -> float | None:
    """The validation metric alone (``None`` without validation batches)."""
    result = validate(model, task, device)
    return None if result is None else result[0]


StepHook = Callable[[nn.Module], None]


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    hard_loss: LossFn | None = None,
) -> torch.Tensor:
    """``(1 - distill) * hard + distill * T^2 * KL(teacher_T || student_T)`` (Hinton et al. 2015), where
    ``hard`` is ``hard_loss`` (default: cross-entropy with the config's label smoothing); classes on dim 1.

    The ``T^2`` factor keeps the soft-target gradients on the scale of the hard-label ones.
    """
    if logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"distillation: the model's outputs {tuple(logits.shape)} and the teacher's "
            f"{tuple(teacher_logits.shape)} differ; distillation needs logits of the same shape"
        )
    if hard_loss is None:
        hard = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    else:
        hard = hard_loss(logits, labels)
    t = cfg.temperature
    logits, teacher_logits = logits.float(), teacher_logits.float()  # bf16 logits: divide by T in fp32 (no-op in fp32)
    soft = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                    log_target=True)  # fmt: skip
    return (1 - cfg.distill) * hard + cfg.distill * t * t * soft


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matmuls natively (a CUDA GPU that supports it; a CPU with AVX-512
    BF16 or AMX). Elsewhere bf16 is emulated and slower than fp32. Unknown (an older torch): assumed native."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    known = [check for check in checks if check is not None]
    return not known or any(check() for check in known)


def _warn_if_emulated(device: torch.device, precision: str) -> None:
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(
            f"precision='bf16' on {device.type}: this device has no native bfloat16 arithmetic (no AVX-512 BF16 or "
            "AMX on a CPU), so autocast emulates it, slower than fp32; use precision='fp32' (study: precision: fp32)",
            stacklevel=3,
        )


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _epoch_batches(train: Batches, seed: int) -> Batches:
    return train.seeded(seed) if isinstance(train, Seedable) else train


def _end_epoch_on_ranks(model: nn.Module, loss_sum: torch.Tensor, seen: int) -> tuple[torch.Tensor, int]:
    """Average BatchNorm statistics over the ranks; the summed training loss and sample count of all ranks."""
    dist.average_batchnorm_stats_(model)
    totals = dist.all_reduce_(torch.stack([loss_sum.double(), loss_sum.new_tensor(seen, dtype=torch.float64)]))
    return totals[0], int(totals[1])


def _share(local: int, device: torch.device) -> torch.Tensor:
    """The factor ``local * world / global`` on this rank's mean loss: DDP averages the ranks' gradients,
    which is the gradient of the global batch's mean loss only when every rank holds as many samples; with
    this factor it is that gradient whatever the split (a last batch of 5 on 2 ranks: 3 and 2)."""
    counts = dist.all_reduce_(torch.tensor(float(local), device=device))
    return local * dist.world_size() / counts


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    *,
    device: torch.device | str | None = None,
    after_step: StepHook | None = None,
    after_epoch: Callable[[int, nn.Module], None] | None = None,
    teacher: nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[EpochStats]:
    """Train ``model`` in place on ``task.train``, reporting the validation metric after each epoch.

    Args:
        task: training batches (re-iterated every epoch; seedable ones are re-seeded with ``cfg.seed``),
            optional validation batches, loss and metric.
        device: where to train (default: where the model is); batches are moved there one at a time.
        after_step: called with the model after every optimizer step.
        after_epoch: called with the epoch number and the model after every epoch (e.g. to keep a rewind point).
        teacher: a trained model whose soft predictions guide the training when ``cfg.distill > 0``; it is
            evaluated in eval mode and never updated. Its outputs and the model's must be logits ``(N, C, ...)``.
        progress: show a tqdm bar per epoch (hidden automatically when stderr is not a terminal).
        log: receives the one-line summary of each epoch; ``None`` to stay silent.

    Under torchrun every rank calls ``fit`` with the same arguments: the model is wrapped in
    DistributedDataParallel (after its masks and quantizers are attached, which is why the caller attaches
    them first), each rank trains on its share of every batch (:func:`torchshrink.distributed.training_shard`),
    the loss is weighted so that the averaged gradient is the gradient over the whole global batch, and
    BatchNorm statistics are averaged at the end of every epoch. Hooks run on every rank with the unwrapped
    model; only rank 0 shows progress and logs. The statistics returned are over all ranks.
    """
    task = as_task(task)
    device = pick_device(str(device)) if device is not None else model_device(model)
    if cfg.distill > 0 and teacher is None:
        raise ConfigError(f"distill={cfg.distill} needs a teacher model")
    distributed = dist.is_distributed()
    train = task.need("train", "training")
    if distributed:
        train = dist.training_shard(train)
    try:
        steps_per_epoch = len(train)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"training batches of type {type(train).__name__} have no len(): the learning-rate schedule needs "
            "the number of batches per epoch; pass a DataLoader or a list"
        ) from None
    if steps_per_epoch < 1:
        raise ConfigError("the training batches are empty")
    _warn_if_emulated(device, cfg.precision)
    model.to(device)
    if teacher is not None and cfg.distill > 0:
        teacher = teacher.to(device).eval()
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
    else:
        teacher = None
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = task.loss_or_default(cfg.label_smoothing)
    batches = _epoch_batches(train, cfg.seed)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, cfg.epochs * steps_per_epoch)
    net = dist.wrap_ddp(model, device) if distributed else model  # the forward that reduces gradients
    # after the memory-format change above, which replaces buffers the average must follow
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    show = progress and dist.is_main()
    history: list[EpochStats] = []
    with dist.failures_as_errors("training"):  # a dead rank: one clear error, not a bare gloo/NCCL one
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            precision = "fp32" if epoch > cfg.epochs - cfg.fp32_final_epochs else cfg.precision
            if distributed:
                dist.set_epoch(batches, epoch)
            start = time.perf_counter()
            loss_sum, seen = torch.zeros((), device=device), 0
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                       disable=None if show else True)  # fmt: skip
            for i, (xb, yb) in enumerate(batches):
                xb, yb = _to(xb, device, cfg.channels_last), yb.to(device, non_blocking=True)
                with _autocast(device, precision):  # torch's losses (softmax, log, exp) autocast back to fp32
                    if teacher is None:
                        loss = loss_fn(net(xb), yb)
                    else:
                        with torch.no_grad():
                            teacher_logits = teacher(xb)
                        loss = distillation_loss(net(xb), teacher_logits, yb, cfg, loss_fn)
                opt.zero_grad(set_to_none=True)
                (loss * _share(len(yb), device) if distributed else loss).backward()
                opt.step()
                sched.step()
                if average is not None:
                    average.update()
                if after_step is not None:
                    after_step(model)
                loss_sum += loss.detach() * len(yb)  # stays on device: no sync per step
                seen += len(yb)
                bar.update()
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.close()
            if distributed:
                loss_sum, seen = _end_epoch_on_ranks(model, loss_sum, seen)
            seconds = time.perf_counter() - start
            with average.applied() if average is not None else contextlib.nullcontext():
                val = validate(model, task, device, cfg.channels_last)
            val_acc = val[0] if val is not None else float("nan")
            stats = EpochStats(epoch, float(loss_sum) / max(seen, 1), val_acc, seconds, seen / seconds)
            history.append(stats)
            if after_epoch is not None:
                after_epoch(epoch, model)
            if log is not None and dist.is_main():
                log(
                    f"epoch {epoch:>3}/{cfg.epochs}  train loss {stats.train_loss:.4f}  val {100 * val_acc:6.2f}%  "
                    f"{seconds:5.1f}s  {stats.images_per_second:6.0f} samples/s"
                )
    if average is not None:
        average.copy_to_model()
    return history
