"""torchshrink: make PyTorch models small while keeping their accuracy, and measure what it costs."""

from __future__ import annotations

__version__ = "0.1.0"

from torchshrink.checkpoint import load_checkpoint, save_checkpoint
from torchshrink.compress import CompressConfig, compress_model
from torchshrink.data import FashionMNIST, load_fashion_mnist
from torchshrink.errors import CheckpointError, ConfigError, DataError, TorchshrinkError
from torchshrink.mixed_precision import plan_mixed_precision
from torchshrink.models import MODELS, build_model, fp32_bytes, layer_table, parameter_count
from torchshrink.pack import FormatError, inspect_compressed, load_compressed, save_compressed
from torchshrink.pruning import (
    gradual_prune,
    iterative_prune,
    make_permanent,
    oneshot_prune,
    prune_,
    structured_prune_,
)
from torchshrink.quant import QuantConfig, codebook, fold_batchnorm, ptq, qat, quantize_, snap_floats_
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
    # pruning
    "prune_",
    "make_permanent",
    "oneshot_prune",
    "iterative_prune",
    "gradual_prune",
    "structured_prune_",
    # quantization
    "QuantConfig",
    "fold_batchnorm",
    "quantize_",
    "ptq",
    "qat",
    "codebook",
    "plan_mixed_precision",
    "snap_floats_",
    # compressed files
    "CompressConfig",
    "compress_model",
    "save_compressed",
    "load_compressed",
    "inspect_compressed",
    "FormatError",
    # errors
    "TorchshrinkError",
    "DataError",
    "CheckpointError",
    "ConfigError",
]
