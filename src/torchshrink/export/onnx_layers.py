"""ONNX nodes for one layer at a time: a small graph builder, the activation QDQ, and Conv / Linear on
(de)quantized weights. :mod:`torchshrink.export.onnx_graph` walks the model and calls these in order.

Notation as in :mod:`torchshrink.quant.primitives`: ``x ~= (q - zero_point) * scale``. ONNX's
``QuantizeLinear`` computes ``saturate(round_half_even(x / scale) + zero_point)`` into its container type, which
is torch's ``clamp(round(x / scale) + zero_point, qmin, qmax)`` (``torch.round`` also rounds half to even) when
the container's range is ``[qmin, qmax]``; a narrower range (fewer than 8 bits) is restored by a ``Clip`` on
the integer codes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.quant.apply import weight_quantizer
from torchshrink.quant.export import QuantizedLayer
from torchshrink.quant.fake_quant import QuantSpec
from torchshrink.quant.primitives import broadcast_to_axis

__all__ = ["GraphBuilder", "emit_qdq", "emit_conv", "emit_linear"]


class GraphBuilder:
    """Collects nodes and initializers with unique names (each output is named after its node)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        """Add an initializer (its dtype is kept) and return its name."""
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, out: str | None = None, **attrs: Any) -> str:
        """Add an ``op`` node and return the name of its one output (``out`` if given)."""
        name = self._unique(name)
        output = out if out is not None else name
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


def _container(signed: bool) -> tuple[type[np.integer], int, int]:
    return (np.int8, -128, 127) if signed else (np.uint8, 0, 255)


def _integer_zero_point(name: str, zero_point: torch.Tensor | float) -> np.ndarray:
    zp = torch.as_tensor(zero_point).detach().cpu().to(torch.float32).numpy()
    if not np.array_equal(zp, np.round(zp)):
        raise ConfigError(f"{name}: zero point {zp.tolist()} is not an integer; it cannot be stored in ONNX")
    return zp


def emit_qdq(g: GraphBuilder, name: str, x: str, scale: float, zero_point: float, spec: QuantSpec) -> str:
    """``QuantizeLinear -> [Clip] -> DequantizeLinear`` on ``x`` (per tensor): ``fake_quantize`` in ONNX."""
    dtype, lo, hi = _container(spec.signed)
    zp = _integer_zero_point(name, zero_point)
    s = g.const(f"{name}.scale", np.array(scale, dtype=np.float32))
    z = g.const(f"{name}.zero_point", zp.astype(dtype))
    q = g.node("QuantizeLinear", [x, s, z], f"{name}.quantize")
    if (spec.qmin, spec.qmax) != (lo, hi):  # e.g. 4-bit codes in an int8 container: saturate to [-8, 7]
        bounds = [
            g.const(f"{name}.{end}", np.array(v, dtype=dtype)) for end, v in (("qmin", spec.qmin), ("qmax", spec.qmax))
        ]
        q = g.node("Clip", [q, *bounds], f"{name}.clip")
    return g.node("DequantizeLinear", [q, s, z], f"{name}.dequantize")


def _quantized_weight(g: GraphBuilder, name: str, layer: nn.Module, q: QuantizedLayer, transpose: bool) -> str:
    """The integer codes as an initializer -> ``DequantizeLinear`` (per output channel: axis 0, or 1 once
    transposed for ``MatMul``). Checks first that the codes reproduce the layer's fake-quantized weight."""
    dtype = _container(q.spec.signed)[0]
    # export_layers stores codes as int8: an unsigned spec's codes 128..255 wrapped around, and view() undoes it
    codes = (q.codes.view(torch.uint8) if dtype is np.uint8 else q.codes).cpu()  # (out, in, kh, kw) or (out, in)
    axis = q.spec.axis
    scale = q.scale.cpu() if q.spec.per_channel else q.scale.cpu()[0]
    zp = torch.from_numpy(_integer_zero_point(f"{name}.weight", weight_quantizer(layer).zero_point))
    zp = zp if q.spec.per_channel else zp[0]
    deq = (codes.to(torch.float32) - broadcast_to_axis(zp, codes, axis)) * broadcast_to_axis(scale, codes, axis)
    if not torch.allclose(deq, layer.weight.detach().cpu(), rtol=1e-6, atol=0.0):
        raise ConfigError(f"{name}: its integer codes do not reproduce its quantized weight; export refused")
    codes = codes.numpy()
    if transpose:
        codes, axis = codes.T, (1 if axis is not None else None)  # (out, in) -> (in, out) for MatMul
    w = g.const(f"{name}.weight_codes", codes)
    s = g.const(f"{name}.weight_scale", scale.numpy().astype(np.float32))
    z = g.const(f"{name}.weight_zero_point", zp.numpy().astype(dtype))
    attrs = {} if axis is None else {"axis": axis}
    return g.node("DequantizeLinear", [w, s, z], f"{name}.weight", **attrs)


def _weight(g: GraphBuilder, name: str, layer: nn.Module, q: QuantizedLayer | None, transpose: bool = False) -> str:
    if q is not None:
        return _quantized_weight(g, name, layer, q, transpose)
    w = layer.weight.detach().cpu().numpy().astype(np.float32)  # any other parametrization, evaluated
    return g.const(f"{name}.weight", w.T if transpose else w)


def _add_bias(g: GraphBuilder, name: str, layer: nn.Module, y: str, channel_dims: int) -> str:
    """``y + bias`` as its own float ``Add`` rather than the layer's bias input: given a bias input, onnxruntime's
    optimizer (WeightBiasQuantization) rounds it to int32 codes of ``input_scale * weight_scale``, which is not
    the model torchshrink runs. ``channel_dims`` trailing singleton dims broadcast it over a conv's map."""
    if layer.bias is None:
        return y
    b = layer.bias.detach().cpu().numpy().astype(np.float32).reshape(-1, *([1] * channel_dims))  # (C, 1, 1) for conv
    return g.node("Add", [y, g.const(f"{name}.bias", b)], name)


def emit_conv(g: GraphBuilder, name: str, layer: nn.Conv2d, x: str, q: QuantizedLayer | None) -> str:
    """``Conv`` on the (dequantized) weight, then its bias added in float."""
    if layer.padding_mode != "zeros":
        raise ConfigError(f"{name}: Conv2d padding_mode={layer.padding_mode!r} not supported by the ONNX exporter yet")
    if isinstance(layer.padding, str):
        if layer.padding != "valid":
            raise ConfigError(f"{name}: Conv2d padding={layer.padding!r} not supported by the ONNX exporter yet; "
                              "give the padding as integers")  # fmt: skip
        pad = (0, 0)
    else:
        pad = tuple(layer.padding)
    y = g.node("Conv", [x, _weight(g, name, layer, q)], f"{name}.conv", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=[*pad, *pad], dilations=list(layer.dilation), group=layer.groups)  # fmt: skip
    return _add_bias(g, name, layer, y, channel_dims=2)


def emit_linear(g: GraphBuilder, name: str, layer: nn.Linear, x: str, q: QuantizedLayer | None, rank: int) -> str:
    """``Gemm`` on a (batch, features) input, ``MatMul`` on inputs of any other rank; then the bias in float."""
    if rank == 2:
        y = g.node("Gemm", [x, _weight(g, name, layer, q)], f"{name}.gemm", transB=1)
    else:
        y = g.node("MatMul", [x, _weight(g, name, layer, q, transpose=True)], f"{name}.matmul")
    return _add_bias(g, name, layer, y, channel_dims=0)
