"""Fold BatchNorm into the convolution before it, so the quantized weights are the ones that run."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_batchnorm"]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d (in registration order) into that conv.

    ``w' = w * gamma / sqrt(var + eps)`` per output channel and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``;
    the BatchNorm becomes ``nn.Identity``. Eval-mode outputs are unchanged up to float rounding. Works in
    place and returns ``model``. Pruning masks must be made permanent first (zeros stay zeros: scaling a
    zero gives zero).
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    for (conv_name, conv), (bn_name, bn) in zip(named, named[1:], strict=False):
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        if bn_name.rpartition(".")[0] != conv_name.rpartition(".")[0]:
            continue  # not siblings: cannot be sure the BatchNorm consumes this conv
        factor = (
            bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        )
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + shift
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1))  # (out,) -> (out, 1, 1, 1)
        conv.bias = nn.Parameter(new_bias)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return model
