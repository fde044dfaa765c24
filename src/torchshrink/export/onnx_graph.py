"""Build an ONNX QDQ graph from a fake-quantized model, one ``torch.fx`` node at a time.

Each quantized layer becomes the standard QDQ pattern that ONNX runtimes recognise:

* its weight: the integer codes as an INT8 initializer -> ``DequantizeLinear`` (per output channel: axis 0,
  zero point 0) -> ``Conv`` / ``Gemm`` / ``MatMul``, then the bias in float as its own ``Add`` (given as the
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
from torchshrink.export.onnx_layers import GraphBuilder, emit_conv, emit_linear, emit_qdq
from torchshrink.quant.apply import input_quantizer, weight_quantizer
from torchshrink.quant.export import QuantizedLayer, export_layers
from torchshrink.quant.fake_quant import FakeQuant

__all__ = ["SUPPORTED", "build_qdq_model"]

SUPPORTED = "Conv2d, Linear, ReLU, MaxPool2d, AdaptiveAvgPool2d(1), Flatten (from dim 1), Identity, Dropout (eval)"
INPUT_NAME, OUTPUT_NAME = "input", "output"


class _Tracer(fx.Tracer):
    """Keeps convs and linears (``Parametrized*`` ones too) as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, (nn.Conv2d, nn.Linear))
            or type(m).__name__.startswith("Parametrized")  # tracing into one would evaluate its parametrization
            or super().is_leaf_module(m, module_qualified_name)
        )


def _unsupported(what: str) -> ConfigError:
    return ConfigError(f"{what}: not supported by the ONNX exporter yet (supported: {SUPPORTED})")


def _flatten_from_one(node: fx.Node, start: Any, end: Any, rank: int) -> None:
    # ONNX Flatten(axis=1) keeps dim 0 and merges the rest: torch's flatten(1, -1) and nothing else
    if start != 1 or end not in (-1, rank - 1):
        raise _unsupported(f"{node.name} (flatten from dim {start} to {end})")


def _rank(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise _unsupported(f"{node.name} (a value that is not a single tensor)")
    return len(meta.shape)


def _check_layer(name: str, layer: nn.Module) -> None:
    fq = weight_quantizer(layer)
    if fq is not None and list(layer.parametrizations.weight)[-1] is not fq:
        raise _unsupported(f"{name} (a weight parametrization applied after the quantizer)")
    iq = input_quantizer(layer)
    if iq is not None and iq.enabled and iq.spec.per_channel:
        raise _unsupported(f"{name} (a per-channel input quantizer)")


def _emit_layer(g: GraphBuilder, name: str, layer: nn.Module, x: str, q: QuantizedLayer | None, rank: int) -> str:
    """Input QDQ (if the layer has an enabled input quantizer), then the layer on its (de)quantized weight."""
    _check_layer(name, layer)
    iq = input_quantizer(layer)
    if iq is not None and iq.enabled:
        x = emit_qdq(g, f"{name}.input", x, float(iq.effective_scale[0]), float(iq.zero_point[0]), iq.spec)
    fq = weight_quantizer(layer)
    quantized_weight = q if fq is not None and fq.enabled else None
    if isinstance(layer, nn.Conv2d):
        return emit_conv(g, name, layer, x, quantized_weight)
    return emit_linear(g, name, layer, x, quantized_weight, rank)


def _emit_module(g: GraphBuilder, node: fx.Node, module: nn.Module, x: str, q: QuantizedLayer | None) -> str:
    name = str(node.target)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return _emit_layer(g, name, module, x, q, _rank(node.args[0]))
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


def _emit_call(g: GraphBuilder, node: fx.Node, x: str) -> str:
    """``torch.relu`` / ``F.relu`` / ``x.relu()`` and ``torch.flatten`` / ``x.flatten()``."""
    target = node.target
    if target in (torch.relu, torch.nn.functional.relu, "relu", "relu_"):
        return g.node("Relu", [x], node.name)
    if target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        _flatten_from_one(node, start, end, _rank(node.args[0]))
        return g.node("Flatten", [x], node.name, axis=1)
    what = getattr(target, "__name__", str(target))
    raise _unsupported(f"operation {node.name!r} ({node.op} {what})")


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
def build_qdq_model(model: nn.Module, example_input: torch.Tensor, opset: int = 17) -> onnx.ModelProto:
    """The ONNX graph of a fake-quantized ``model`` (in eval mode) with a dynamic batch axis.

    Args:
        model: a model with ``FakeQuant`` weight parametrizations and input quantizers, e.g. from
            :func:`torchshrink.recipes.ptq`.
        example_input: one float32 batch; fixes every dimension but the first.
        opset: the ONNX opset (13 or later: per-axis ``DequantizeLinear``, integer ``Clip``).

    Raises:
        ConfigError: an operation or layer the exporter does not translate, a graph with several inputs
            or outputs, or codes that do not reproduce the model's quantized weights.
    """
    try:
        graph_module = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as exc:  # fx raises several types for data-dependent control flow and untraceable calls
        raise ConfigError(f"{type(model).__name__}: torch.fx cannot trace its forward ({exc}); the ONNX exporter "
                          "of quantized models needs a traceable forward") from exc  # fmt: skip
    ShapeProp(graph_module).propagate(example_input)  # ranks, to tell Gemm from MatMul and check flattens
    modules = dict(model.named_modules())
    quantized = {q.name: q for q in export_layers(model)}
    g = GraphBuilder()
    values: dict[str, str] = {}  # fx node name -> ONNX value name
    inputs, output = [], None
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            if inputs:
                raise _unsupported(f"a second model input {node.name!r}")
            inputs.append(node)
            values[node.name] = INPUT_NAME
            continue
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise _unsupported("a model output that is not one tensor")
            output = values[node.args[0].name]
            continue
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op not in ("call_module", "call_function", "call_method") or not tensors:
            raise _unsupported(f"operation {node.name!r} ({node.op} {node.target})")
        x = values[tensors[0].name]
        if node.op == "call_module":
            values[node.name] = _emit_module(g, node, modules[node.target], x, quantized.get(str(node.target)))
        else:
            values[node.name] = _emit_call(g, node, x)
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
