"""Shared fixtures: the real Fashion-MNIST, loaded once per test session."""

from __future__ import annotations

import os

# as the torchshrink command does (torchshrink._threads): OpenMP threads that sleep while they wait, so the
# in-process command tests do not spin against the subprocesses other tests start; set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch
from torch import nn

from torchshrink.data import FashionMNIST, Task, find_data_dir, load_fashion_mnist
from torchshrink.models import build_model
from torchshrink.recipes.train import TrainConfig, fit


@pytest.fixture(scope="session")
def data_dir() -> str:
    return str(find_data_dir(download=False))


@pytest.fixture(scope="session")
def fmnist(data_dir: str) -> FashionMNIST:
    return load_fashion_mnist(data_dir)


@pytest.fixture(scope="session")
def small(fmnist: FashionMNIST) -> FashionMNIST:
    """2,000 real training images, 1,000 validation, 2,000 test: enough to learn, fast to train."""
    return fmnist.subset(train=2000, val=1000, test=2000)


@pytest.fixture(scope="session")
def small_task(small: FashionMNIST) -> Task:
    """The small subset as a task: batches of 64, no augmentation (fast, and enough to learn)."""
    return small.task(batch_size=64, augment=False)


@pytest.fixture(scope="session")
def trained_tiny(small_task: Task) -> nn.Module:
    """A ``cnn_tiny`` trained for two epochs on the small subset, in eval mode: logits with real margins.
    Shared: copy it before changing it."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small_task, TrainConfig(epochs=2, channels_last=False), log=None, progress=False)
    return model.eval()
