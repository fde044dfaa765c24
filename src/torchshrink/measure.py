"""Cost measurements: multiply-adds and CPU latency of a model, for any input shape.

Defaults fit the Fashion-MNIST models (one ``(1, 28, 28)`` image); other models pass their own shape or an
example input::

    count_macs(model)                                      # (1, 1, 28, 28)
    count_macs(model, (1, 3, 32, 32))                      # an RGB model
    count_macs(model, example_input=torch.randn(1, 2, 100))  # a Conv1d model
    latency(model, 256, sample_shape=(3, 32, 32))
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from torchshrink.layers import CONV_TRANSPOSES, CONVS, SUPPORTED_LAYERS

__all__ = ["layer_macs", "count_macs", "latency"]



def layer_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Multiply-adds of one call of a Conv, ConvTranspose or Linear layer; 0 for anything else.

    A conv computes each output element from ``in_channels / groups * prod(kernel)`` inputs; a transposed
    conv spreads each *input* element over ``out_channels / groups * prod(kernel)`` outputs; a Linear layer
    computes each output element from ``in_features`` inputs, whatever the rank of its input.

    Example:
        >>> conv = nn.Conv1d(2, 4, 3); x = torch.zeros(1, 2, 10)
        >>> layer_macs(conv, (x,), conv(x))  # 4 channels * 8 positions * (2 * 3)
        192
    """
    if isinstance(module, CONVS):
        return output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, CONV_TRANSPOSES):
        return inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


@torch.no_grad()
def count_macs(
    model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28), example_input: torch.Tensor | None = None
) -> int:
    """Multiply-accumulates of one eval-mode forward pass through every Conv, ConvTranspose and Linear layer.

    Args:
        model: any model; its training flag is restored afterwards.
        input_shape: shape of the (zero) input, batch first; ignored when ``example_input`` is given.
        example_input: an input to run instead, batch first.

    Returns:
        multiply-adds per item of the batch.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(module, inputs, output)

    layers = SUPPORTED_LAYERS
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    was_training = model.training
    model.eval()
    try:
        x = example_input if example_input is not None else torch.zeros(input_shape, **_factory(model))
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total // x.shape[0]


# glibc serves a request of at least its mmap threshold (128 KiB at start) with fresh pages from the kernel,
# page-faulted on first touch, and raises the threshold to the size of an mmapped block when one is freed, up
# to 32 MiB. A process that has freed a large block (a loaded dataset, a training run) therefore serves a
# model's activations from its heap, while a fresh process pays page faults for every large activation on every
# pass: measured here, a fresh process timed the study's CNN at 42 ms per batch of 256 and 28 ms once a dataset
# had been loaded, while a model with 4x smaller activations did not change, so the speedup of a pruned model
# read 4.3x or 2.5x depending on what the process had done before. Freeing one block just under the cap first
# puts every measurement in the steady state of a long-running process.
_ALLOCATOR_WARMUP_BYTES = 32 * 2**20 - 2**16


def _settle_allocator() -> None:
    block = torch.empty(_ALLOCATOR_WARMUP_BYTES, dtype=torch.uint8)
    del block


@torch.no_grad()
def latency(
    model: nn.Module,
    batch: int,
    repeats: int = 20,
    warmup: int = 3,
    channels_last: bool = True,
    sample_shape: tuple[int, ...] = (1, 28, 28),
    example_input: torch.Tensor | None = None,
) -> float:
    """Median seconds of one eval-mode forward pass on a batch of ``batch`` random inputs.

    Args:
        model: put in eval mode (and channels_last memory format for 4-D inputs).
        batch: batch size.
        repeats: timed passes; the median is returned.
        warmup: untimed passes first.
        channels_last: use the channels_last memory format; applies to 4-D inputs ``(N, C, H, W)`` only.
        sample_shape: shape of one input, without the batch dim, e.g. ``(3, 32, 32)`` or ``(2, 100)``.
        example_input: a batch-first input whose first item is repeated ``batch`` times instead of random
            data of ``sample_shape``.
    """
    _settle_allocator()
    model.eval()
    if example_input is not None:
        x = example_input[:1].expand(batch, *example_input.shape[1:]).clone()
    else:
        x = torch.randn(batch, *sample_shape, **_factory(model))
    if channels_last and x.dim() == 4:
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


def _factory(model: nn.Module) -> dict[str, torch.device | torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (CPU float32 without one)."""
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}
