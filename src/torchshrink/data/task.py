"""The one interface every procedure takes its data through: a :class:`Task`.

A task is training batches ``(inputs, targets)`` (a ``torch.utils.data.DataLoader`` works as is), evaluation
batches the same way, calibration inputs, a loss and a metric. Nothing here knows about images: inputs are
whatever the model takes. Fashion-MNIST is one adapter that builds a task (:meth:`FashionMNIST.task`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from torchshrink.errors import ConfigError

__all__ = [
    "Batch",
    "Batches",
    "LossFn",
    "MetricFn",
    "Seedable",
    "Task",
    "as_task",
    "top1_correct",
    "inputs_of",
    "calibration_inputs",
    "take_samples",
    "DEFAULT_CALIBRATION_SAMPLES",
]

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets)
Batches = Iterable[Batch]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> mean loss of the batch
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> SUM over the batch

DEFAULT_CALIBRATION_SAMPLES = 512  # inputs observed to calibrate activation ranges when a task names none


@runtime_checkable
class Seedable(Protocol):
    """Training batches whose order and augmentation a seed fixes: ``fit`` re-seeds them with its own seed,
    so a run depends only on its config. (A ``DataLoader`` is not seedable this way: its own generator rules.)"""

    def seeded(self, seed: int) -> Iterable[Batch]: ...


def top1_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of each sample, summed over the batch (the default metric; evaluation divides the sum by
    the number of samples).

    Classification: outputs ``(N, C)`` and class indices ``(N,)``, the number of samples whose highest output is
    the target class. Dense prediction (a segmentation's ``(N, C, H, W)``): targets ``(N, H, W)``, and each sample
    scores the fraction of its positions that are right, so the mean over samples is the pixel accuracy, in
    [0, 1] like the classifier's. Targets of any other shape (one-hot, soft labels) would broadcast against the
    predictions into a meaningless count, so they are refused.

    >>> top1_correct(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    tensor(1)
    >>> scores = torch.tensor([[[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]])  # (1 sample, 2 classes, 4 positions)
    >>> top1_correct(scores, torch.tensor([[1, 1, 0, 0]]))  # 3 of its 4 positions right
    tensor(0.7500)
    """
    if outputs.dim() < 2 or targets.shape != outputs.shape[:1] + outputs.shape[2:]:
        raise ConfigError(
            f"top-1 accuracy needs outputs (N, C, ...) and class-index targets (N, ...), got outputs "
            f"{tuple(outputs.shape)} and targets {tuple(targets.shape)}: pass the score that fits your model as "
            "Task(metric=...), a function (outputs, targets) -> the score summed over the batch's samples"
        )
    right = outputs.argmax(1) == targets  # (N, *positions)
    if right.dim() == 1:
        return right.sum()
    return right.flatten(1).float().mean(1).sum()  # each sample's fraction of right positions


@dataclass
class Task:
    """What a procedure needs to train, evaluate and calibrate a model.

    Args:
        train: batches ``(inputs, targets)``, iterated once per epoch; ``len(train)`` (batches per epoch) sizes
            the learning-rate schedule. A ``DataLoader`` works as is.
        val: held-out batches for choosing settings and reporting progress (never the test set).
        calibration: inputs (or ``(inputs, targets)`` batches) that set activation ranges; ``None`` takes the
            inputs of the first training batches, up to ``DEFAULT_CALIBRATION_SAMPLES`` samples.
        loss: ``(outputs, targets) -> mean loss``; ``None`` is cross-entropy (with the training config's label
            smoothing while training).
        metric: ``(outputs, targets) -> summed score`` of a batch, divided by the number of samples when
            evaluating; ``None`` is top-1 accuracy.
    """

    train: Batches | None = None
    val: Batches | None = None
    calibration: Iterable[Any] | None = None
    loss: LossFn | None = None
    metric: MetricFn | None = None

    def __post_init__(self) -> None:
        for name in ("train", "val", "calibration"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, torch.Tensor) or not isinstance(value, Iterable)):
                raise ConfigError(
                    f"Task.{name}: {type(value).__name__} is not an iterable of batches; "
                    "pass a DataLoader or a list of (inputs, targets) tuples"
                )

    def need(self, field: str, procedure: str) -> Any:
        """The named field, or a ``ConfigError`` saying which procedure needs it."""
        value = getattr(self, field)
        if value is None:
            raise ConfigError(f"{procedure} needs {field} batches: pass Task({field}=...)")
        return value

    def loss_or_default(self, label_smoothing: float = 0.0) -> LossFn:
        if self.loss is not None:
            return self.loss
        return lambda outputs, targets: F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    def metric_or_default(self) -> MetricFn:
        return self.metric if self.metric is not None else top1_correct


def as_task(data: Any) -> Task:
    """``data`` itself if it is a :class:`Task`; a dataset adapter with a ``task()`` method (e.g.
    :class:`torchshrink.data.FashionMNIST`) gives its default task; anything else is a ``ConfigError``."""
    if isinstance(data, Task):
        return data
    make = getattr(data, "task", None)
    if callable(make):
        task = make()
        if isinstance(task, Task):
            return task
    raise ConfigError(
        f"{type(data).__name__} is not a Task: wrap your batches, e.g. Task(train=train_loader, val=val_loader)"
    )


def inputs_of(batch: Any) -> torch.Tensor:
    """The inputs of a batch that is either a tensor or an ``(inputs, targets, ...)`` tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ConfigError("an empty batch: expected a tensor or an (inputs, targets) tuple")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise ConfigError(f"a batch of {type(batch).__name__}: expected a tensor or an (inputs, targets) tuple")
    return batch


def take_samples(batches: Iterable[Any], samples: int | None) -> Iterator[Any]:
    """The batches, truncated so that at most ``samples`` samples come out (``None``: all of them)."""
    seen = 0
    for batch in batches:
        if samples is not None and seen >= samples:
            return
        if samples is not None:
            n = len(inputs_of(batch))
            if seen + n > samples:
                keep = samples - seen
                batch = tuple(t[:keep] for t in batch) if isinstance(batch, (tuple, list)) else batch[:keep]
            seen += n
        yield batch


def calibration_inputs(source: Task | Iterable[Any] | None, samples: int | None = None) -> list[torch.Tensor]:
    """Calibration input tensors from a task (its ``calibration`` batches, else the first training batches) or
    from an iterable of tensors or ``(inputs, targets)`` batches; at most ``samples`` samples."""
    if source is None:
        raise ConfigError("calibrating activation ranges needs data: pass a Task or an iterable of input batches")
    if not isinstance(source, Task) and callable(getattr(source, "task", None)):
        source = as_task(source)
    if isinstance(source, Task):
        if source.calibration is not None:
            batches: Iterable[Any] = source.calibration
        else:
            batches = source.need("train", "calibration (no Task.calibration given)")
            samples = samples if samples is not None else DEFAULT_CALIBRATION_SAMPLES
    else:
        batches = source
    out = [inputs_of(b) for b in take_samples(batches, samples)]
    if not out:
        raise ConfigError("calibration batches are empty: pass at least one batch of inputs")
    return out
