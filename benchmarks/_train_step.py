"""The timed training step of benchmarks/shapes.py and benchmarks/threads.py (which runs it in fresh processes,
so this module imports torch before torchshrink, as those processes must): SGD on random 28x28 images, batch
256, channels-last, as the study trains."""

from __future__ import annotations

import time

import torch

from torchshrink.recipes.train import TrainConfig, make_optimizer


def train_images_per_second(model: torch.nn.Module, steps: int, warmup: int = 2) -> float:
    """Training images per second of ``model`` over ``steps`` optimizer steps, after ``warmup`` untimed ones."""
    model = model.train().to(memory_format=torch.channels_last)
    opt = make_optimizer(model, TrainConfig())
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 256 * steps / (time.perf_counter() - start)
