"""Build an ONNX QDQ graph from a fake-quantized model, one ``torch.fx`` node at a time.

Each quantized layer becomes the standard QDQ pattern that ONNX runtimes recognise:

* its weight: the integer codes as an initializer -> ``DequantizeLinear`` (per output channel: axis 0) ->
  ``Conv`` / ``Gemm`` / ``MatMul``; 8-bit codes as UINT8 ``code + 128`` with zero point 128 by default, which
  onnxruntime multiplies exactly on every CPU (see :data:`~torchshrink.export.onnx_layers.WEIGHT_TYPES`),
  narrower codes as INT8 with zero point 0. Its bias: int32 codes where both weight and input are 8-bit
  (then onnxruntime fuses the layer into one integer kernel), else in float as its own ``Add`` (given as the
  layer's bias input, onnxruntime's optimizer would round it to int32 codes: a different model);
* its input quantizer: ``QuantizeLinear`` -> ``DequantizeLinear`` (``uint8`` for an unsigned spec, the input of
  a layer after a ReLU; ``int8`` otherwise). A code range narrower than its container (widths under 8 bits,
  or a narrow signed range) gets a ``Clip`` to that range between the two (the QCDQ pattern), so the graph
  rounds and saturates exactly as :func:`torchshrink.quant.primitives.fake_quantize` does.

Only the operations listed in :data:`SUPPORTED` are translated; anything else raises
:class:`~torchshrink.errors.ConfigError` naming it, rather than exporting a silently different model.
"""

from __future__ import annotations

from typing import Any

import onnx
import torch
from onnx import TensorProto, helper
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from torchshrink.errors import ConfigError
from torchshrink.export.onnx_layers import GraphBuilder, WeightType, check_weight_type, emit_conv, emit_linear, emit_qdq
from torchshrink.layers import has_own_forward
from torchshrink.quant.apply import input_quantizer, weight_quantizer
from torchshrink.quant.export import QuantizedLayer, export_layers
from torchshrink.quant.fake_quant import FakeQuant
from torchshrink.tracing import trace_module

__all__ = ["SUPPORTED", "build_qdq_model"]

SUPPORTED = "Conv2d, Linear, ReLU, MaxPool2d, AdaptiveAvgPool2d(1), Flatten (from dim 1), Identity, Dropout (eval)"
INPUT_NAME, OUTPUT_NAME = "input", "output"


def _unsupported(what: str) -> ConfigError:
    return ConfigError(f"{what}: not supported by the ONNX exporter yet (supported: {SUPPORTED})")


def _flatten_from_one(node: fx.Node, start: Any, end: Any, rank: int) -> None:
    # ONNX Flatten(axis=1) keeps dim 0 and merges the rest: torch's flatten(1, -1) and nothing else
    if start != 1 or end not in (-1, rank - 1):
        raise _unsupported(f"{node.name} (flatten from dim {start} to {end})")


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise _unsupported(f"{node.name} (a value that is not a single tensor)")
    return tuple(meta.shape)


def _rank(node: fx.Node) -> int:
    return len(_shape(node))


def _check_layer(name: str, layer: nn.Module) -> None:
    fq = weight_quantizer(layer)
    if fq is not None and list(layer.parametrizations.weight)[-1] is not fq:
        raise _unsupported(f"{name} (a weight parametrization applied after the quantizer)")
    iq = input_quantizer(layer)
    if iq is not None and iq.enabled and iq.spec.per_channel:
        raise _unsupported(f"{name} (a per-channel input quantizer)")


def _spread_axis(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """A non-batch axis of the input with more than one element, and its size (see ``emit_qdq``'s ``spread``)."""
    for axis, size in enumerate(shape):
        if axis > 0 and size > 1:
            return axis, size
    raise _unsupported(f"{name} (float weights on a quantized input of shape {tuple(shape)}: onnxruntime would "
                       "requantize its weight)")  # fmt: skip


def _emit_layer(
    g: GraphBuilder,
    name: str,
    layer: nn.Module,
    x: str,
    q: QuantizedLayer | None,
    shape: tuple[int, ...],
    quantized_input: bool,
    integer_bias: bool | None,
    weight_type: WeightType,
) -> str:
    """Input QDQ (if the layer has an enabled input quantizer and ``x`` was not quantized by it already), then
    the layer on its (de)quantized weight, its bias as int32 codes where ``integer_bias`` says so (``None``:
    where weight and input are both 8-bit; see :func:`torchshrink.export.to_onnx`)."""
    _check_layer(name, layer)
    iq = input_quantizer(layer)
    bias_from = None  # the input scale the bias's int32 codes are counted in; None: a float bias
    if iq is not None and iq.enabled:
        input_scale = float(iq.effective_scale[0])
        if not quantized_input:
            spread = None if q is not None else _spread_axis(name, shape)
            x = emit_qdq(g, f"{name}.input", x, input_scale, float(iq.zero_point[0]), iq.spec, spread)
        eight_bit = q is not None and q.spec.bits == 8 and iq.spec.bits == 8
        if q is not None and (integer_bias if integer_bias is not None else eight_bit):
            bias_from = input_scale
    if isinstance(layer, nn.Conv2d):
        return emit_conv(g, name, layer, x, q, bias_from, weight_type=weight_type)
    return emit_linear(g, name, layer, x, q, len(shape), bias_from, weight_type=weight_type)


def _emit_module(
    g: GraphBuilder,
    node: fx.Node,
    module: nn.Module,
    x: str,
    q: QuantizedLayer | None,
    quantized_input: bool,
    integer_bias: bool | None,
    weight_type: WeightType,
) -> str:
    name = str(node.target)
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not has_own_forward(module):
        shape = _shape(node.args[0])
        return _emit_layer(g, name, module, x, q, shape, quantized_input, integer_bias, weight_type)
    if isinstance(module, nn.ReLU):
        return g.node("Relu", [x], name)
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            raise _unsupported(f"{name} (MaxPool2d with return_indices)")
        k, s, p, d = (nn.modules.utils._pair(v) for v in (module.kernel_size, module.stride or module.kernel_size,
                                                           module.padding, module.dilation))  # fmt: skip
        return g.node("MaxPool", [x], name, kernel_shape=list(k), strides=list(s), pads=[*p, *p],
                      dilations=list(d), ceil_mode=int(module.ceil_mode))  # fmt: skip
    if isinstance(module, nn.AdaptiveAvgPool2d):
        if nn.modules.utils._pair(module.output_size) != (1, 1):
            raise _unsupported(f"{name} (AdaptiveAvgPool2d to {module.output_size}, not 1)")
        return g.node("GlobalAveragePool", [x], name)
    if isinstance(module, nn.Flatten):
        _flatten_from_one(node, module.start_dim, module.end_dim, _rank(node.args[0]))
        return g.node("Flatten", [x], name, axis=1)
    if isinstance(module, (nn.Identity, nn.Dropout)):  # the model is exported in eval mode: dropout is identity
        return x
    raise _unsupported(f"layer {name!r} ({type(module).__name__})")


_RELUS = (torch.relu, torch.nn.functional.relu, "relu", "relu_")


def _emit_call(g: GraphBuilder, node: fx.Node, x: str) -> str:
    """``torch.relu`` / ``F.relu`` / ``x.relu()`` and ``torch.flatten`` / ``x.flatten()``."""
    target = node.target
    if target in _RELUS:
        return g.node("Relu", [x], node.name)
    if target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        _flatten_from_one(node, start, end, _rank(node.args[0]))
        return g.node("Flatten", [x], node.name, axis=1)
    what = getattr(target, "__name__", str(target))
    raise _unsupported(f"operation {node.name!r} ({node.op} {what})")


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], nn.ReLU)
    return node.op in ("call_function", "call_method") and node.target in _RELUS


def _commutes(node: fx.Node, modules: dict[str, nn.Module], fq: FakeQuant) -> bool:
    """Whether ``node`` commutes with the per-tensor quantizer ``fq``: ``fq(f(x)) == f(fq(x))``. True of ops
    that only move or select values (flatten, max pooling: a non-decreasing ``fq`` keeps the max), and of ReLU
    when the quantizer maps 0 to 0 (its zero point is a code)."""
    if _is_relu(node, modules):
        return fq.spec.qmin <= float(fq.zero_point[0]) <= fq.spec.qmax
    if node.op == "call_module":
        m = modules[str(node.target)]
        return isinstance(m, (nn.Identity, nn.Dropout, nn.Flatten)) or (
            isinstance(m, nn.MaxPool2d) and not m.return_indices
        )
    return node.op in ("call_function", "call_method") and node.target in (torch.flatten, "flatten")


def _early_quantizers(
    graph_module: fx.GraphModule, modules: dict[str, nn.Module], layers: dict[str, QuantizedLayer]
) -> dict[str, tuple[str, FakeQuant]]:
    """fx node name -> (layer, its input quantizer) for every value to quantize before it reaches the layer.

    A layer's input quantizer moves back through the single-use chain of commuting ops before it (ReLU, max
    pooling, flatten) to the op that produced the chain's input, and is repeated after each op of the chain:
    ``Conv -> Relu -> Q/DQ -> MaxPool -> Q/DQ -> Flatten -> Q/DQ -> Gemm``. The values are the same (the ops
    commute with the quantizer, and re-quantizing a code is that code), but every op now sits between a
    ``DequantizeLinear`` and a ``QuantizeLinear``: onnxruntime then runs the convs as ``QLinearConv`` on
    int8 activations, with pooling and reshapes on the integers too, instead of float ops between
    quantize/dequantize pairs."""
    early: dict[str, tuple[str, FakeQuant]] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or str(node.target) not in layers:  # float weights: see emit_qdq's spread
            continue
        iq = input_quantizer(modules[str(node.target)])
        if iq is None or not iq.enabled or iq.spec.per_channel or not isinstance(node.args[0], fx.Node):
            continue
        cur: Any = node.args[0]
        while len(cur.users) == 1 and _commutes(cur, modules, iq) and isinstance(cur.args[0], fx.Node):
            early[cur.name] = (str(node.target), iq)
            cur = cur.args[0]
        if len(cur.users) == 1:  # the op that produced the chain's input; else quantize from the chain's first op
            early[cur.name] = (str(node.target), iq)
    return early


def _check_all_quantizers_exported(model: nn.Module, graph_module: fx.GraphModule) -> None:
    """Every enabled fake quant must be a weight or input quantizer of a layer the walk translated: any other
    would be dropped from the graph, which would then compute a different model."""
    layers = [graph_module.get_submodule(str(n.target)) for n in graph_module.graph.nodes if n.op == "call_module"]
    exported = {id(fq) for m in layers for fq in (weight_quantizer(m), input_quantizer(m)) if fq is not None}
    left = [
        name for name, m in model.named_modules() if isinstance(m, FakeQuant) and m.enabled and id(m) not in exported
    ]
    if left:
        raise _unsupported(f"fake quant {', '.join(repr(n) for n in left)} (not on a Conv2d or Linear the graph calls)")


@torch.no_grad()
def build_qdq_model(
    model: nn.Module,
    example_input: torch.Tensor,
    opset: int = 17,
    weights: dict[str, QuantizedLayer] | None = None,
    integer_bias: bool | None = None,
    *,
    weight_type: WeightType = "uint8",
) -> onnx.ModelProto:
    """The ONNX graph of a fake-quantized ``model`` (in eval mode) with a dynamic batch axis.

    Args:
        model: a model with ``FakeQuant`` weight parametrizations and input quantizers, e.g. from
            :func:`torchshrink.recipes.ptq`.
        example_input: one float32 batch; fixes every dimension but the first.
        opset: the ONNX opset (13 or later: per-axis ``DequantizeLinear``, integer ``Clip``).
        weights: integer codes of layers whose weights are plain tensors in ``model`` (e.g. decoded from a
            ``.tshrink`` file), by layer name; they must reproduce those weights.
        integer_bias: see :func:`torchshrink.export.to_onnx`.
        weight_type: how 8-bit weight codes are stored, ``"uint8"`` or ``"int8"`` (see
            :data:`torchshrink.export.onnx_layers.WEIGHT_TYPES`).

    Raises:
        ConfigError: an operation or layer the exporter does not translate, a graph with several inputs
            or outputs, codes that do not reproduce the model's quantized weights, or an unknown weight type.
    """
    check_weight_type(weight_type)
    graph_module = trace_module(model, "the ONNX exporter of quantized models")
    ShapeProp(graph_module).propagate(example_input)  # ranks, to tell Gemm from MatMul and check flattens
    modules = dict(model.named_modules())
    layers = {q.name: q for q in export_layers(model) if weight_quantizer(modules[q.module_name], q.attr).enabled}
    layers.update(weights or {})
    g = GraphBuilder()
    early = _early_quantizers(graph_module, modules, layers)
    values: dict[str, str] = {}  # fx node name -> ONNX value name
    inputs, output = [], None
    for node in graph_module.graph.nodes:
        passed_through = False  # Identity / Dropout: the value of its input, quantized already if it had to be
        if node.op == "placeholder":
            if inputs:
                raise _unsupported(f"a second model input {node.name!r}")
            inputs.append(node)
            values[node.name] = INPUT_NAME
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise _unsupported("a model output that is not one tensor")
            output = values[node.args[0].name]
            continue
        else:
            tensors = [a for a in node.args if isinstance(a, fx.Node)]
            if node.op not in ("call_module", "call_function", "call_method") or not tensors:
                raise _unsupported(f"operation {node.name!r} ({node.op} {node.target})")
            source = tensors[0].name
            x = values[source]
            fq = early[source][1] if source in early else None
            if fq is not None and _is_relu(node, modules) and float(fq.zero_point[0]) == fq.spec.qmin:
                values[node.name] = x  # a ReLU of codes that cannot go below zero: an identity
                continue
            if node.op == "call_module":
                target = str(node.target)
                quantized_input = fq is not None and early[source][0] == target
                values[node.name] = _emit_module(
                    g, node, modules[target], x, layers.get(target), quantized_input, integer_bias, weight_type
                )
            else:
                values[node.name] = _emit_call(g, node, x)
            passed_through = values[node.name] == x and source in early
        if node.name in early and not passed_through:
            layer, fq = early[node.name]
            feeds_layer = any(str(u.target) == layer for u in node.users)
            label = f"{layer}.input" if feeds_layer else f"{layer}.input.at_{node.name}"
            scale, zero_point = float(fq.effective_scale[0]), float(fq.zero_point[0])
            values[node.name] = emit_qdq(g, label, values[node.name], scale, zero_point, fq.spec)
    _check_all_quantizers_exported(model, graph_module)
    g.node("Identity", [output], "output", out=OUTPUT_NAME)  # a fixed name, whatever produced it
    out_shape = graph_module.graph.output_node().args[0].meta["tensor_meta"].shape
    graph = helper.make_graph(
        g.nodes,
        "torchshrink_qdq",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", *example_input.shape[1:]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", *out_shape[1:]])],
        g.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="torchshrink")
