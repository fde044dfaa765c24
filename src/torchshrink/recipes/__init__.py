"""Procedures that train or evaluate: fit, prune with retraining, sensitivity, PTQ / QAT / codebooks, mixed
precision, and the compression pipeline. They take data through :class:`torchshrink.data.Task` and build on
the pure layers below (``pruning``, ``quant``, ``pack``), which never import from here."""

from torchshrink.recipes.compress import CompressConfig, compress_model, smallest_file_bytes, write_and_verify
from torchshrink.recipes.gradual import GRADUAL_TRAIN, GradualConfig, GradualPruner, gradual_prune
from torchshrink.recipes.mixed_activations import activation_width_table, plan_activation_widths
from torchshrink.recipes.mixed_precision import (
    LayerWidth,
    MixedPlan,
    allocate_bits,
    codebook_width_table,
    fit_plan_to_file,
    plan_mixed_precision,
)
from torchshrink.recipes.mixed_uniform import plan_uniform_mixed_precision, uniform_width_table
from torchshrink.recipes.prune import (
    STRUCTURED_FINETUNE,
    IterativeConfig,
    achieved_sparsity,
    iterative_prune,
    oneshot_prune,
    rewind_,
)
from torchshrink.recipes.quantize import (
    FINETUNE,
    Calibration,
    CodebookConfig,
    codebook,
    dequantized_copy,
    prepare_quantized,
    ptq,
    qat,
)
from torchshrink.recipes.results import CompressResult, PruneResult, PruneStep, QuantResult
from torchshrink.recipes.sensitivity import layer_sensitivity, sensitivity_table, sparsities_for_tolerance
from torchshrink.recipes.train import (
    EpochStats,
    TrainConfig,
    distillation_loss,
    evaluate,
    fit,
    model_device,
    pick_device,
    val_metric,
    validate,
)

__all__ = [
    # training and evaluation
    "TrainConfig",
    "EpochStats",
    "fit",
    "evaluate",
    "validate",
    "val_metric",
    "distillation_loss",
    "model_device",
    "pick_device",
    # results
    "PruneStep",
    "PruneResult",
    "QuantResult",
    "CompressResult",
    # pruning with retraining
    "IterativeConfig",
    "STRUCTURED_FINETUNE",
    "oneshot_prune",
    "iterative_prune",
    "rewind_",
    "achieved_sparsity",
    "GRADUAL_TRAIN",
    "GradualConfig",
    "GradualPruner",
    "gradual_prune",
    "layer_sensitivity",
    "sensitivity_table",
    "sparsities_for_tolerance",
    # quantization
    "Calibration",
    "FINETUNE",
    "CodebookConfig",
    "prepare_quantized",
    "ptq",
    "qat",
    "dequantized_copy",
    "codebook",
    "LayerWidth",
    "MixedPlan",
    "codebook_width_table",
    "allocate_bits",
    "plan_mixed_precision",
    "fit_plan_to_file",
    "uniform_width_table",
    "plan_uniform_mixed_precision",
    "activation_width_table",
    "plan_activation_widths",
    # the pipeline
    "CompressConfig",
    "compress_model",
    "smallest_file_bytes",
    "write_and_verify",
]
