"""Rounding a quantized model's remaining floats to float16, so the compressed file can store them in half
the bytes without changing a single value (the file writer stores float16 only when that is exact)."""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.layers import module_weights
from torchshrink.quant.apply import quantized_layers
from torchshrink.quant.sharing import codebook_layers

__all__ = ["snap_floats_"]


@torch.no_grad()
def _snap(t: torch.Tensor) -> bool:
    half = t.to(torch.float16).to(t.dtype)
    if not bool(torch.isfinite(half).all()):
        return False  # out of float16 range: leave it, it will be stored as float32
    t.copy_(half)
    return True


@torch.no_grad()
def snap_floats_(model: nn.Module) -> int:
    """Round, in place, the biases of every quantized or weight-shared layer and the codebook centroids to
    the nearest float16 value. Returns the number of tensors changed.

    Uniform scales are left in float32: they are derived from the weights or learned step sizes, and the
    change of a scale moves every code of its channel. Measure the accuracy afterwards (from the file).
    """
    snapped = 0
    weights = module_weights(model)
    for name in quantized_layers(model) | codebook_layers(model):
        w = weights[name]
        bias = getattr(w.module, "bias", None) if w.attr == "weight" else None
        if isinstance(bias, torch.Tensor):
            snapped += _snap(bias)
    for cb in codebook_layers(model).values():
        snapped += _snap(cb.centroids)
    return snapped
