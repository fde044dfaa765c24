"""Input models, checked against the data before any work: the commands feed Fashion-MNIST to them."""

from __future__ import annotations

import os

import torch
from torch import nn

from torchshrink.errors import CheckpointError

__all__ = ["IMAGE_SHAPE", "NUM_CLASSES", "check_fits_fashion_mnist"]

IMAGE_SHAPE = (1, 28, 28)  # one grey-scale Fashion-MNIST image: (C, H, W)
NUM_CLASSES = 10


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def check_fits_fashion_mnist(model: nn.Module, source: str | os.PathLike[str]) -> None:
    """Run ``model`` on two blank Fashion-MNIST-shaped images and check it returns ``(2, 10)`` class scores.

    Two images, not one, so a model that squeezes the batch dimension is caught too. The model is put back in
    the mode it was in; in eval mode BatchNorm only reads its running statistics, so nothing changes.

    Args:
        model: the model a command is about to evaluate, prune, quantize or compress.
        source: where it came from (the checkpoint), for the message.

    Raises:
        CheckpointError: the model fails on ``(N, 1, 28, 28)`` images or returns another shape; the message
            names ``source`` and what was found.

    Example:
        >>> check_fits_fashion_mnist(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "mlp")
        >>> check_fits_fashion_mnist(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)), "mlp5")
        Traceback (most recent call last):
        ...
        torchshrink.errors.CheckpointError: mlp5: the model returns scores of shape (2, 5) for 2 Fashion-MNIST images (2, 1, 28, 28); expected (2, 10): 10 classes
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(2, *IMAGE_SHAPE, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:  # any failure of the forward pass means the model does not take these images
        raise CheckpointError(f"{source}: the model does not take Fashion-MNIST images (N, 1, 28, 28): "
                              f"{_one_line(exc)}; use a checkpoint trained on Fashion-MNIST") from None  # fmt: skip
    finally:
        model.train(was_training)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (2, NUM_CLASSES):
        found = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise CheckpointError(f"{source}: the model returns scores of shape {found} for 2 Fashion-MNIST images "
                              f"(2, 1, 28, 28); expected (2, {NUM_CLASSES}): {NUM_CLASSES} classes")  # fmt: skip
