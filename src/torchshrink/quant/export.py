"""Read the integer codes out of a fake-quantized model: what a compressed file stores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchshrink.quant.apply import input_quantizer, quantized_layers, weight_quantizer
from torchshrink.quant.fake_quant import QuantSpec
from torchshrink.quant.primitives import quantize

__all__ = ["QuantizedLayer", "export_layers", "codes_state_dict"]


@dataclass
class QuantizedLayer:
    """One weight as integers: ``weight ~= codes * scale`` (per channel along axis 0), plus its layer's input
    quantizer. ``name`` is the weight's name (the module's for its ``weight``), ``module_name`` and ``attr`` say
    where it lives."""

    name: str
    codes: torch.Tensor  # int8, the weight's shape
    scale: torch.Tensor  # (out,) or (1,)
    spec: QuantSpec
    bias: torch.Tensor | None
    input_spec: QuantSpec | None
    input_scale: torch.Tensor | None
    input_zero_point: torch.Tensor | None
    module_name: str = ""
    attr: str = "weight"


@torch.no_grad()
def export_layers(model: nn.Module) -> list[QuantizedLayer]:
    """Integer codes, scales and biases of every quantized weight, in module order."""
    out = []
    for name, w in quantized_layers(model).items():
        layer = w.module
        fq = weight_quantizer(layer, w.attr)
        raw = layer.parametrizations[w.attr].original
        for p in layer.parametrizations[w.attr]:
            if p is fq:
                break
            raw = p(raw)  # apply the pruning mask (the parametrizations before the quantizer)
        scale, zp = fq.effective_scale.detach().clone(), fq.zero_point.detach().clone()
        codes = quantize(raw, scale if fq.spec.per_channel else scale[0], zp if fq.spec.per_channel else zp[0],
                         fq.spec.qmin, fq.spec.qmax, fq.spec.axis).to(torch.int8)  # fmt: skip
        iq = input_quantizer(layer)
        bias = getattr(layer, "bias", None) if w.attr == "weight" else None  # an RNN's biases are its own
        out.append(
            QuantizedLayer(
                name,
                codes,
                scale,
                fq.spec,
                bias.detach().clone() if isinstance(bias, torch.Tensor) else None,
                iq.spec if iq is not None and iq.enabled else None,
                iq.effective_scale.detach().clone() if iq is not None and iq.enabled else None,
                iq.zero_point.detach().clone() if iq is not None and iq.enabled else None,
                w.module_name,
                w.attr,
            )  # fmt: skip
        )
    return out


def codes_state_dict(layers: list[QuantizedLayer]) -> dict[str, torch.Tensor]:
    """A flat tensor dict (for safetensors) of the exported layers."""
    state: dict[str, torch.Tensor] = {}
    for q in layers:
        state[f"{q.name}.weight_codes"] = q.codes
        state[f"{q.name}.weight_scale"] = q.scale
        if q.bias is not None:
            state[f"{q.name}.bias"] = q.bias
        if q.input_scale is not None:
            state[f"{q.name}.input_scale"] = q.input_scale
            state[f"{q.name}.input_zero_point"] = q.input_zero_point
    return state
