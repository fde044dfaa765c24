"""ONNX nodes for one layer at a time: a small graph builder, the activation QDQ, and Conv / Linear on
(de)quantized weights. :mod:`torchshrink.export.onnx_graph` walks the model and calls these in order.

Notation as in :mod:`torchshrink.quant.primitives`: ``x ~= (q - zero_point) * scale``. ONNX's
``QuantizeLinear`` computes ``saturate(round_half_even(x / scale) + zero_point)`` into its container type, which
is torch's ``clamp(round(x / scale) + zero_point, qmin, qmax)`` (``torch.round`` also rounds half to even) when
the container's range is ``[qmin, qmax]``; a narrower range (fewer than 8 bits) is restored by a ``Clip`` on
the integer codes.
"""

from __future__ import annotations

from typing import Any, Literal

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

__all__ = ["WEIGHT_TYPES", "WeightType", "check_weight_type", "GraphBuilder", "emit_qdq", "emit_conv", "emit_linear"]

WeightType = Literal["uint8", "int8"]
# how 8-bit signed weight codes are stored (narrower codes stay int8, unsigned ones uint8, under either). On x86
# without VNNI (AVX2, AVX-512 without VNNI), onnxruntime's uint8 x int8 kernels add two products in a saturating
# int16 (VPMADDUBSW): 2 * 255 * 127 = 64,770 > 32,767, so 8-bit int8 weights give other outputs there. Codes of 7
# bits or fewer cannot reach that limit (2 * 255 * 64 = 32,640).
WEIGHT_TYPES: dict[str, str] = {
    "uint8": "exact on every CPU",  # code + 128, zero point + 128: the same values, multiplied uint8 x uint8
    "int8": "faster; on x86, exact only with VNNI",  # the codes as they are
}


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


def check_weight_type(weight_type: str) -> None:
    """Raise :class:`~torchshrink.errors.ConfigError` unless ``weight_type`` is a key of :data:`WEIGHT_TYPES`."""
    if weight_type not in WEIGHT_TYPES:
        choices = "; ".join(f"{k!r} ({v})" for k, v in WEIGHT_TYPES.items())
        raise ConfigError(f"weight_type {weight_type!r}: give one of {choices}")


def _container(signed: bool) -> tuple[type[np.integer], int, int]:
    return (np.int8, -128, 127) if signed else (np.uint8, 0, 255)


def _integer_zero_point(name: str, zero_point: torch.Tensor | float) -> np.ndarray:
    zp = torch.as_tensor(zero_point).detach().cpu().to(torch.float32).numpy()
    if not np.array_equal(zp, np.round(zp)):
        raise ConfigError(f"{name}: zero point {zp.tolist()} is not an integer; it cannot be stored in ONNX")
    return zp


def emit_qdq(
    g: GraphBuilder,
    name: str,
    x: str,
    scale: float,
    zero_point: float,
    spec: QuantSpec,
    spread: tuple[int, int] | None = None,
) -> str:
    """``QuantizeLinear -> [Clip] -> DequantizeLinear`` on ``x`` (per tensor): ``fake_quantize`` in ONNX.

    ``spread``: ``(axis, size)``: give the ``DequantizeLinear`` that one scale repeated ``size`` times along
    ``axis`` instead of a scalar. The same numbers, but onnxruntime's WeightBiasQuantization only rewrites a layer
    whose input scale is a scalar: a layer on float weights (a codebook, a layer left unquantized) fed this way
    stays the layer it is, rather than having its weight requantized to int8 per tensor by the runtime."""
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
    if spread is None:
        return g.node("DequantizeLinear", [q, s, z], f"{name}.dequantize")
    axis, size = spread
    s = g.const(f"{name}.spread_scale", np.full(size, scale, dtype=np.float32))
    z = g.const(f"{name}.spread_zero_point", np.full(size, zp, dtype=dtype))
    return g.node("DequantizeLinear", [q, s, z], f"{name}.dequantize", axis=axis)


def _quantized_weight(
    g: GraphBuilder, name: str, layer: nn.Module, q: QuantizedLayer, transpose: bool, weight_type: WeightType
) -> str:
    """The integer codes as an initializer -> ``DequantizeLinear`` (per output channel: axis 0, or 1 once
    transposed for ``MatMul``). 8-bit signed codes are stored as ``weight_type`` (see :data:`WEIGHT_TYPES`).
    Checks first that the stored codes reproduce the layer's fake-quantized weight."""
    # export_layers stores codes as int8: an unsigned spec's codes 128..255 wrapped around, and view() undoes it
    codes = (q.codes.cpu() if q.spec.signed else q.codes.cpu().view(torch.uint8)).to(torch.int32)  # (out, in, ...)
    axis = q.spec.axis
    scale = q.scale.cpu() if q.spec.per_channel else q.scale.cpu()[0]
    fq = weight_quantizer(layer)  # None for codes decoded from a file, which are symmetric (zero point 0)
    zp = torch.from_numpy(_integer_zero_point(f"{name}.weight", fq.zero_point if fq is not None else q.scale * 0))
    zp = zp if q.spec.per_channel else zp[0]
    dtype = _container(q.spec.signed)[0]
    if q.spec.signed and q.spec.bits == 8 and weight_type == "uint8":
        codes, zp, dtype = codes + 128, zp + 128, np.uint8  # the same values, (code + 128 - (zp + 128)) * scale
    deq = (codes.to(torch.float32) - broadcast_to_axis(zp, codes, axis)) * broadcast_to_axis(scale, codes, axis)
    if not torch.allclose(deq, layer.weight.detach().cpu(), rtol=1e-6, atol=0.0):
        raise ConfigError(f"{name}: its integer codes do not reproduce its quantized weight; export refused")
    stored = codes.numpy().astype(dtype)
    if transpose:
        stored, axis = stored.T, (1 if axis is not None else None)  # (out, in) -> (in, out) for MatMul
    w = g.const(f"{name}.weight_codes", stored)
    s = g.const(f"{name}.weight_scale", scale.numpy().astype(np.float32))
    z = g.const(f"{name}.weight_zero_point", zp.numpy().astype(dtype))
    attrs = {} if axis is None else {"axis": axis}
    return g.node("DequantizeLinear", [w, s, z], f"{name}.weight", **attrs)


def _weight(
    g: GraphBuilder,
    name: str,
    layer: nn.Module,
    q: QuantizedLayer | None,
    weight_type: WeightType,
    transpose: bool = False,
) -> str:
    if q is not None:
        return _quantized_weight(g, name, layer, q, transpose, weight_type)
    w = layer.weight.detach().cpu().numpy().astype(np.float32)  # any other parametrization, evaluated
    return g.const(f"{name}.weight", w.T if transpose else w)


def _int32_bias(
    g: GraphBuilder, name: str, layer: nn.Module, q: QuantizedLayer, input_scale: float
) -> list[str] | None:
    """The bias as int32 codes of ``input_scale * weight_scale`` -> ``DequantizeLinear``: the layout onnxruntime
    fuses with the layer into one integer kernel (``QLinearConv``, ``QGemm``). It differs from torchshrink's
    float bias by at most half that product per output, far below one step of the next activation
    (:func:`tests.test_export.check_agreement` bounds it); ``None`` when a code would not fit in int32."""
    if layer.bias is None:
        return []
    weight_scale = q.scale.detach().cpu().numpy().astype(np.float32)
    scale = np.float32(input_scale) * (weight_scale if q.spec.per_channel else weight_scale[:1])
    codes = np.rint(layer.bias.detach().cpu().numpy().astype(np.float64) / scale.astype(np.float64))
    if not np.all(np.abs(codes) < 2**31 - 1):
        return None
    c = g.const(f"{name}.bias_codes", codes.astype(np.int32))
    s = g.const(f"{name}.bias_scale", scale if q.spec.per_channel else scale[0])
    z = g.const(f"{name}.bias_zero_point", np.zeros(scale.shape if q.spec.per_channel else (), dtype=np.int32))
    attrs = {"axis": 0} if q.spec.per_channel else {}
    return [g.node("DequantizeLinear", [c, s, z], f"{name}.bias", **attrs)]


def _bias_and_add(
    g: GraphBuilder, name: str, layer: nn.Module, q: QuantizedLayer | None, input_scale: float | None
) -> tuple[list[str], bool]:
    """The layer's bias input, and whether the bias must rather be added after it in float.

    Quantized weight and input: int32 codes (see :func:`_int32_bias`). Otherwise its own float ``Add``: given as
    the layer's bias input, onnxruntime's optimizer (WeightBiasQuantization) would round it to int32 codes of a
    scale of its choosing, and it quantizes a float weight on a quantized input to int8 per tensor when the
    layer's output goes (through ReLU or Clip only) to a ``QuantizeLinear``; an ``Add`` in between prevents
    both. That makes a different model, which is not what the graph says."""
    if q is None:
        return [], layer.bias is not None
    if input_scale is not None:
        bias = _int32_bias(g, name, layer, q, input_scale)
        if bias is not None:
            return bias, False
    return [], layer.bias is not None


def _add_bias(g: GraphBuilder, name: str, layer: nn.Module, y: str, channel_dims: int) -> str:
    """``y + bias`` in float; ``channel_dims`` trailing singleton dims broadcast it over a conv's map."""
    b = layer.bias.detach().cpu().numpy().astype(np.float32).reshape(-1, *([1] * channel_dims))  # (C, 1, 1) for conv
    return g.node("Add", [y, g.const(f"{name}.bias", b)], name)


def emit_conv(
    g: GraphBuilder,
    name: str,
    layer: nn.Conv2d,
    x: str,
    q: QuantizedLayer | None,
    input_scale: float | None = None,
    *,
    weight_type: WeightType,
) -> str:
    """``Conv`` on the (dequantized) weight with its bias (see :func:`_bias_and_add`).

    ``input_scale``: the scale of the quantized input ``x`` to store the bias as int32 codes of ``input_scale *
    weight_scale``; ``None`` keeps it float. ``weight_type``: see :data:`WEIGHT_TYPES`."""
    if layer.padding_mode != "zeros":
        raise ConfigError(f"{name}: Conv2d padding_mode={layer.padding_mode!r} not supported by the ONNX exporter yet")
    if isinstance(layer.padding, str):
        if layer.padding != "valid":
            raise ConfigError(f"{name}: Conv2d padding={layer.padding!r} not supported by the ONNX exporter yet; "
                              "give the padding as integers")  # fmt: skip
        pad = (0, 0)
    else:
        pad = tuple(layer.padding)
    weight = _weight(g, name, layer, q, weight_type)
    bias, add = _bias_and_add(g, name, layer, q, input_scale)
    y = g.node("Conv", [x, weight, *bias], f"{name}.conv" if add else name, kernel_shape=list(layer.kernel_size),
               strides=list(layer.stride), pads=[*pad, *pad], dilations=list(layer.dilation), group=layer.groups)  # fmt: skip
    return _add_bias(g, name, layer, y, channel_dims=2) if add else y


def emit_linear(
    g: GraphBuilder,
    name: str,
    layer: nn.Linear,
    x: str,
    q: QuantizedLayer | None,
    rank: int,
    input_scale: float | None = None,
    *,
    weight_type: WeightType,
) -> str:
    """``Gemm`` on a (batch, features) input, ``MatMul`` (bias added after it) on inputs of any other rank."""
    if rank == 2:
        weight = _weight(g, name, layer, q, weight_type)
        bias, add = _bias_and_add(g, name, layer, q, input_scale)
        y = g.node("Gemm", [x, weight, *bias], f"{name}.gemm" if add else name, transB=1)
    else:
        y, add = g.node("MatMul", [x, _weight(g, name, layer, q, weight_type, transpose=True)], f"{name}.matmul"), True
    return _add_bias(g, name, layer, y, channel_dims=0) if add and layer.bias is not None else y
