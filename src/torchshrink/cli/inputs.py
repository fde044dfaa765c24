"""Input models, checked against the data before any work: the commands feed Fashion-MNIST to them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from torchshrink.errors import CheckpointError

__all__ = ["IMAGE_SHAPE", "NUM_CLASSES", "CHECK_IMAGES", "check_fits_fashion_mnist", "check_quantizable"]

IMAGE_SHAPE = (1, 28, 28)  # one grey-scale Fashion-MNIST image: (C, H, W)
NUM_CLASSES = 10
CHECK_IMAGES = 64  # real images for check_quantizable: one small batch, enough to meet typical activations


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


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors of a module's output or arguments (an RNN returns a tuple)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _first_overflow(model: nn.Module, images: torch.Tensor, quantized: set[str]) -> str | None:
    """What first overflows float32 when ``model`` runs on ``images``, in the order the forward pass meets it:
    a module whose output holds inf or NaN, or a quantized layer whose input range is too wide for a finite
    scale (``hi - lo`` overflows though both ends are finite). ``None`` when nothing does."""
    found: list[str] = []

    def output_hook(name: str) -> Any:
        def check(_module: nn.Module, _args: Any, output: Any) -> None:
            if not found and any(not bool(torch.isfinite(t).all()) for t in _tensors(output)):
                found.append(f"the output of {name or 'the model'} holds inf or NaN")

        return check

    def input_hook(name: str) -> Any:
        def check(_module: nn.Module, args: Any) -> None:
            for x in _tensors(args):
                lo, hi = x.min().clamp_max(0), x.max().clamp_min(0)  # as calibration widens a range to hold 0
                if not found and torch.isfinite(lo) and torch.isfinite(hi) and not torch.isfinite(hi - lo):
                    found.append(f"the input of {name} spans [{float(lo):.3g}, {float(hi):.3g}], too wide for a "
                                 "finite quantization scale")  # fmt: skip

        return check

    handles = [m.register_forward_hook(output_hook(n)) for n, m in model.named_modules()]
    handles += [m.register_forward_pre_hook(input_hook(n)) for n, m in model.named_modules() if n in quantized]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def check_quantizable(model: nn.Module, source: str | os.PathLike[str], images: torch.Tensor) -> None:
    """Refuse, before any work, a model whose activations overflow float32 on real images.

    Weights that are huge but finite (every weight 1e38) load, but their outputs are inf or NaN, and so are
    the quantization scales calibrated on them: quantizing, pruning or fine-tuning such a model only fails
    later, or writes NaN. One forward pass of ``images`` through the model, then through the copy with
    BatchNorm folded into the convolutions (the model quantization actually calibrates), finds the first layer
    that overflows. Calibration checks every range it sets as well (:func:`torchshrink.quant.calibrate_`),
    over all its images; this check only makes the common case fail at once.

    Args:
        model: the checkpoint's model, as loaded (plain weights, no fake quant).
        source: the checkpoint, for the message.
        images: a few normalised Fashion-MNIST images ``(N, 1, 28, 28)``, on the model's device.

    Raises:
        CheckpointError: naming ``source``, the first layer that overflows and the largest weight.
    """
    from torchshrink.layers import prunable_layers
    from torchshrink.pruning.apply import permanent_copy
    from torchshrink.quant.fold import fold_batchnorm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fold's notes on unfolded layers: the command's own fold says them
        folded = fold_batchnorm(permanent_copy(model))
    quantized = {w.module_name for w in prunable_layers(folded).values()}
    for candidate, where in ((model, ""), (folded, " with BatchNorm folded into the convolutions")):
        problem = _first_overflow(candidate, images, quantized)
        if problem is not None:
            weights = [p.detach().abs().max() for p in model.parameters() if p.is_floating_point() and p.numel()]
            largest = float(torch.stack(weights).max()) if weights else 0.0
            raise CheckpointError(f"{source}: on {len(images)} Fashion-MNIST images{where}, {problem}: the weights "
                                  f"are too large for float32 (largest |weight| {largest:.3g}), so no finite "
                                  "quantization scale exists; pass a checkpoint trained normally")  # fmt: skip
