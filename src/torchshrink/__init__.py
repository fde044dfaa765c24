"""torchshrink: make PyTorch models small while keeping their accuracy, and measure what it costs."""

from __future__ import annotations

__version__ = "0.1.0"

# data
# checkpoints
from torchshrink.checkpoint import load_checkpoint, save_checkpoint
from torchshrink.data import FashionMNIST, load_fashion_mnist

# errors
from torchshrink.errors import CheckpointError, ConfigError, DataError, TorchshrinkError

# models and training
from torchshrink.models import MODELS, build_model, fp32_bytes, layer_table, parameter_count
from torchshrink.train import TrainConfig, evaluate, fit

__all__ = [
    "__version__",
    # data
    "FashionMNIST",
    "load_fashion_mnist",
    # models and training
    "MODELS",
    "build_model",
    "fp32_bytes",
    "layer_table",
    "parameter_count",
    "TrainConfig",
    "evaluate",
    "fit",
    # checkpoints
    "load_checkpoint",
    "save_checkpoint",
    # errors
    "TorchshrinkError",
    "DataError",
    "CheckpointError",
    "ConfigError",
]
