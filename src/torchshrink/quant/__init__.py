"""Quantization of weights and activations at 2..8 bits: primitives, fake-quant modules, model transforms.

PTQ, QAT and codebook fine-tuning (procedures that calibrate or train) live in :mod:`torchshrink.recipes`."""

from torchshrink.quant.apply import (
    LayerStorage,
    QuantConfig,
    calibrate_,
    calibrated_weight_quantizer,
    input_quantizer,
    quantize_,
    quantized_layers,
    set_quant_enabled,
    set_scales_trainable,
    storage_report,
    weight_quantizer,
)
from torchshrink.quant.fake_quant import CALIBRATIONS, FakeQuant, QuantSpec
from torchshrink.quant.fold import fold_batchnorm
from torchshrink.quant.primitives import (
    dequantize,
    fake_quantize,
    minmax_qparams,
    mse_scale_search,
    qrange,
    quantize,
    round_ste,
)
from torchshrink.quant.sharing import Codebook, codebook_layers, codebook_quantize_, kmeans_1d
from torchshrink.quant.snap import snap_floats_

__all__ = [
    # primitives
    "qrange",
    "round_ste",
    "quantize",
    "dequantize",
    "fake_quantize",
    "minmax_qparams",
    "mse_scale_search",
    # modules
    "QuantSpec",
    "FakeQuant",
    "CALIBRATIONS",
    # model-level transforms
    "QuantConfig",
    "fold_batchnorm",
    "quantize_",
    "calibrated_weight_quantizer",
    "quantized_layers",
    "weight_quantizer",
    "input_quantizer",
    "calibrate_",
    "set_quant_enabled",
    "set_scales_trainable",
    "LayerStorage",
    "storage_report",
    # weight sharing
    "Codebook",
    "kmeans_1d",
    "codebook_quantize_",
    "codebook_layers",
    "snap_floats_",
]

