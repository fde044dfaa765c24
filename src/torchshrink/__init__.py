"""torchshrink: make PyTorch models small while keeping their accuracy, and measure what it costs."""

from __future__ import annotations

from torchshrink import _threads  # noqa: F401  (first: before anything loads torch)
from torchshrink._version import __version__
from torchshrink.checkpoint import load_checkpoint, save_checkpoint
from torchshrink.data import FashionMNIST, Task, TensorBatches, load_fashion_mnist
from torchshrink.errors import CheckpointError, ConfigError, DataError, TorchshrinkError, TorchshrinkWarning
from torchshrink.kinds import LayerKind, register_layer_kind, unregister_layer_kind
from torchshrink.layers import LayerWeight, prunable_layers, skipped_layers
from torchshrink.models import MODELS, build_model, fp32_bytes, layer_table, parameter_count, register_model
from torchshrink.pack import FormatError, inspect_compressed, load_compressed, save_compressed
from torchshrink.pruning import (
    PruneConfig,
    StructuredConfig,
    make_permanent,
    prune_,
    structured_prune_,
    structured_report,
)
from torchshrink.quant import QuantConfig, fold_batchnorm, quantize_, snap_floats_
from torchshrink.recipes import (
    CodebookConfig,
    CompressConfig,
    CompressResult,
    GradualConfig,
    IterativeConfig,
    PruneResult,
    QuantResult,
    TrainConfig,
    codebook,
    compress_model,
    evaluate,
    fit,
    gradual_prune,
    iterative_prune,
    oneshot_prune,
    plan_activation_widths,
    plan_mixed_precision,
    plan_uniform_mixed_precision,
    ptq,
    qat,
)

__all__ = [
    "__version__",
    # data
    "Task",
    "TensorBatches",
    "FashionMNIST",
    "load_fashion_mnist",
    # models and training
    "MODELS",
    "register_model",
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
    # layer selection
    "prunable_layers",
    "skipped_layers",
    "LayerKind",
    "LayerWeight",
    "register_layer_kind",
    "unregister_layer_kind",
    # pruning
    "PruneConfig",
    "prune_",
    "make_permanent",
    "PruneResult",
    "oneshot_prune",
    "IterativeConfig",
    "iterative_prune",
    "GradualConfig",
    "gradual_prune",
    "StructuredConfig",
    "structured_prune_",
    "structured_report",
    # quantization
    "QuantConfig",
    "fold_batchnorm",
    "quantize_",
    "QuantResult",
    "ptq",
    "qat",
    "CodebookConfig",
    "codebook",
    "plan_mixed_precision",
    "plan_uniform_mixed_precision",
    "plan_activation_widths",
    "snap_floats_",
    # compressed files
    "CompressConfig",
    "CompressResult",
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
    "TorchshrinkWarning",
]
