"""Cost measurements: multiply-adds and CPU latency of a model."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["count_macs", "latency"]


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """Multiply-accumulates of one forward pass through every Conv2d and Linear layer, for one input."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            # each output element: in_channels/groups * kh * kw multiply-adds
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * per_output
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total // input_shape[0]


@torch.no_grad()
def latency(model: nn.Module, batch: int, repeats: int = 20, warmup: int = 3, channels_last: bool = True) -> float:
    """Median seconds of one eval-mode forward pass on a ``(batch, 1, 28, 28)`` input."""
    model.eval()
    x = torch.randn(batch, 1, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
