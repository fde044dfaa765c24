"""A QDQ graph of any fake-quantized model, from torch's own exporter: whatever the model computes between its
quantized layers (residual adds, concatenations, attention, recurrences, norms, activations) is what torch exports.

The model is copied and, on the copy, every quantized weight becomes its integer codes (an ``int8`` initializer)
-> ``DequantizeLinear``, and every enabled input quantizer ``QuantizeLinear`` -> (``Clip`` to its code range when
that is narrower than the 8-bit container) -> ``DequantizeLinear``. Each is an ``autograd.Function`` whose forward
is torchshrink's own arithmetic (so the copy computes exactly the model) and whose ``symbolic`` is the ONNX nodes.
Operations between them run in float: exact to torchshrink's model up to float rounding. onnxruntime fuses the
``DequantizeLinear -> op -> QuantizeLinear`` groups it has integer kernels for.

A forward that branches on tensor values would be baked into one branch by torch's tracer; the exporter refuses
it (torch's ``TracerWarning`` about converting a tensor to a Python value), naming the place.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from typing import Any

import onnx
import onnx.numpy_helper
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.export.onnx_graph import INPUT_NAME, OUTPUT_NAME
from torchshrink.layers import module_weights, stored_weight
from torchshrink.pruning.apply import independent_copy
from torchshrink.quant import adds as join_quant_module
from torchshrink.quant.apply import input_quantizer, weight_quantizer
from torchshrink.quant.export import QuantizedLayer, export_layers
from torchshrink.quant.fake_quant import FakeQuant
from torchshrink.quant.primitives import dequantize, fake_quantize
from torchshrink.quant.sharing import Codebook, codebook_layers

__all__ = ["build_traced_qdq_model", "torch_export", "refuse_data_dependent_flow", "exportable_attention"]

# what torch's tracer says when forward turns a tensor into a Python value: the graph then holds one branch only
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# torchshrink's own shape checks while tracing (which operands a join quantizer takes, which axis a spread scale
# runs along; never the batch axis): fixed by the model, not by the data, so the graph holds for every input
_OWN_SHAPE_CHECKS = (os.path.abspath(join_quant_module.__file__), os.path.abspath(__file__))
_DATA_DEPENDENT = ("Python boolean", "Python number", "Python index", "Python float", "Python integer")


class _Dequantize(torch.autograd.Function):
    """``(codes - zero_point) * scale``, exported as ``DequantizeLinear`` of the integer codes."""

    @staticmethod
    def forward(
        ctx: Any, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int | None
    ) -> torch.Tensor:
        return dequantize(codes.to(torch.float32), scale, zero.to(torch.float32), axis)

    @staticmethod
    def symbolic(g: Any, codes: Any, scale: Any, zero: Any, axis: int | None) -> Any:
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=0 if axis is None else axis)


class _CodesOf(nn.Module):
    """A parametrization standing for a quantized weight: its codes, scales and zero points, nothing else.

    ``unsigned``: store 8-bit codes as ``uint8`` ``code + 128`` with zero point 128, the same values. onnxruntime
    then multiplies uint8 activations by uint8 weights, exact on every CPU; its uint8 x int8 kernels on x86 without
    VNNI add two products in a saturating int16 (see ``docs/onnx.md``, and :data:`~torchshrink.export.onnx_layers.WEIGHT_TYPES`)."""

    def __init__(self, q: QuantizedLayer, zero: torch.Tensor, unsigned: bool) -> None:
        super().__init__()
        per_channel = q.spec.per_channel
        codes, zero = q.codes.to(torch.int16), zero.to(torch.int16)
        dtype = torch.uint8 if unsigned else torch.int8
        if unsigned:
            codes, zero = codes + 128, zero + 128
        self.register_buffer("codes", codes.to(dtype))
        self.register_buffer("scale", q.scale.clone() if per_channel else q.scale.reshape(()).clone())
        self.register_buffer("zero", zero.to(dtype) if per_channel else zero.reshape(()).to(dtype))
        self.axis = 0 if per_channel else None

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return _Dequantize.apply(self.codes, self.scale, self.zero, self.axis)


class _QuantizeDequantize(torch.autograd.Function):
    """An input quantizer: torchshrink's fake quant arithmetic, exported as Q -> (Clip) -> DQ. Its settings travel
    as Python numbers (the tracer records no module as an argument); the float32 scale survives that exactly.

    ``spread``: ``(axis, size)`` gives the ``DequantizeLinear`` its one scale and zero point repeated ``size``
    times along ``axis`` instead of scalars: the same numbers, but onnxruntime fuses a layer into an integer
    kernel (and rounds its bias to int32 codes, requantizes float weights to int8) only when its input scale is
    a scalar. ``(-1, 0)``: scalars."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float, zero: int, qmin: int, qmax: int, signed: bool,
                spread: tuple[int, int]) -> torch.Tensor:  # fmt: skip
        s = torch.tensor(scale, dtype=torch.float32, device=x.device)
        z = torch.tensor(float(zero), dtype=torch.float32, device=x.device)
        return fake_quantize(x.float(), s, z, qmin, qmax)

    @staticmethod
    def symbolic(g: Any, x: Any, scale: float, zero: int, qmin: int, qmax: int, signed: bool,
                 spread: tuple[int, int]) -> Any:  # fmt: skip
        dtype = torch.int8 if signed else torch.uint8
        lo, hi = (-128, 127) if signed else (0, 255)
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(zero, dtype=dtype))
        q = g.op("QuantizeLinear", x, s, z)
        if (qmin, qmax) != (lo, hi):  # narrower codes in an 8-bit container: saturate to their range
            low = g.op("Constant", value_t=torch.tensor(qmin, dtype=dtype))
            high = g.op("Constant", value_t=torch.tensor(qmax, dtype=dtype))
            q = g.op("Clip", q, low, high)
        axis, size = spread
        if axis < 0:
            return g.op("DequantizeLinear", q, s, z)
        s = g.op("Constant", value_t=torch.full((size,), scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.full((size,), zero, dtype=dtype))
        return g.op("DequantizeLinear", q, s, z, axis_i=axis)


class _Lookup(torch.autograd.Function):
    """``table[indices]``, exported as ``Gather`` of the table at the indices (stored as ``uint8``, cast to int32,
    the index type ``Gather`` takes)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return table[indices.long()]

    @staticmethod
    def symbolic(g: Any, table: Any, indices: Any) -> Any:
        return g.op("Gather", table, g.op("Cast", indices, to_i=onnx.TensorProto.INT32), axis_i=0)


class _TableOf(nn.Module):
    """A parametrization standing for a weight-shared weight: its indices and its table (0, then the centroids)."""

    def __init__(self, cb: Codebook) -> None:
        super().__init__()
        centroids = cb.centroids.detach().float()
        self.register_buffer("table", torch.cat([centroids.new_zeros(1), centroids]))
        self.register_buffer("indices", cb.indices.to(torch.uint8))  # 2^bits entries, bits <= 8

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return _Lookup.apply(self.table, self.indices)


def _as_codes_(
    model: nn.Module, layers: list[QuantizedLayer], integer_bias: bool | None = None, weight_type: str = "uint8"
) -> set[int]:
    """Replace each quantized weight's parametrizations (masks, fake quant), or its plain decoded values, by its
    codes, and each weight-shared weight's by its indices and table; one per stored tensor, so tied weights stay
    one initializer.

    Returns the modules (by id) that onnxruntime must run as they are rather than fuse into an integer kernel:
    fused, a layer's float bias becomes int32 codes of input scale x weight scale, a step that below 8 bits is
    coarse enough to shift whole channels (measured on a W4A4 residual net: 97.8% top-1 agreement fused, 100%
    as is); a codebook's float weight would be requantized to int8. ``integer_bias``: ``None`` fuses the 8-bit
    layers only, ``True`` every quantized layer, ``False`` none."""
    exact: set[int] = set()
    by_tensor: dict[int, _CodesOf] = {}
    for q in layers:
        module = model.get_submodule(q.module_name)
        if q.spec.bits > 8 or q.codes.dtype != torch.int8:
            raise ConfigError(f"{q.name}: {q.spec.bits}-bit codes do not fit an int8 initializer")
        fq = weight_quantizer(module, q.attr)
        zero = fq.zero_point.detach() if fq is not None else torch.zeros_like(q.scale)  # a file's codes: symmetric
        stored = stored_weight(module, q.attr)
        if id(stored) not in by_tensor:
            by_tensor[id(stored)] = _CodesOf(q, zero, unsigned=q.spec.bits == 8 and weight_type == "uint8")
        if parametrize.is_parametrized(module, q.attr):
            parametrize.remove_parametrizations(module, q.attr, leave_parametrized=False)
        parametrize.register_parametrization(module, q.attr, by_tensor[id(stored)], unsafe=True)
        iq = input_quantizer(module)
        narrow = q.spec.bits < 8 or (iq is not None and iq.enabled and iq.spec.bits < 8)
        if narrow if integer_bias is None else not integer_bias:
            exact.add(id(module))
    weights = module_weights(model)
    tables: dict[int, _TableOf] = {}
    for name, cb in codebook_layers(model).items():
        w = weights[name]
        stored = stored_weight(w.module, w.attr)
        if id(stored) not in tables:
            tables[id(stored)] = _TableOf(cb)
        parametrize.remove_parametrizations(w.module, w.attr, leave_parametrized=False)
        parametrize.register_parametrization(w.module, w.attr, tables[id(stored)], unsafe=True)
        exact.add(id(w.module))
    return exact


def _spread_of(x: torch.Tensor, conv: bool) -> tuple[int, int]:
    """The first non-batch axis of ``x`` with more than one element, and its size; ``(-1, 0)`` if none, and for a
    linear layer's input of more than two dimensions: torch exports that layer as ``MatMul``, which onnxruntime
    fuses into ``MatMulIntegerToFloat`` (a float bias: exact) whatever the scale, then fails on a spread one."""
    if not conv and x.ndim != 2:
        return -1, 0
    return next(((axis, size) for axis, size in enumerate(x.shape) if axis > 0 and size > 1), (-1, 0))


def _as_qdq_inputs_(model: nn.Module, exact: set[int]) -> None:
    """Every enabled activation quantizer as Q -> (Clip) -> DQ; those of the modules in ``exact`` (by id) with a
    spread scale (see :class:`_QuantizeDequantize`), so that onnxruntime runs those layers as they are."""
    spread = {id(iq): isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()
              if id(m) in exact and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and (iq := input_quantizer(m))}  # fmt: skip
    for m in model.modules():
        if isinstance(m, FakeQuant) and m.is_activation and m.enabled:
            if m.spec.per_channel:
                raise ConfigError("a per-channel input quantizer: not exported")
            settings = (float(m.effective_scale.reshape(-1)[0]), int(m.zero_point.reshape(-1)[0]), m.spec.qmin,
                        m.spec.qmax, m.spec.signed)  # fmt: skip
            if id(m) in spread:
                conv = spread[id(m)]
                m.forward = lambda x, a=settings, c=conv: _QuantizeDequantize.apply(x, *a, _spread_of(x, c))  # type: ignore[method-assign]
            else:
                m.forward = lambda x, a=settings: _QuantizeDequantize.apply(x, *a, (-1, 0))  # type: ignore[method-assign]


@contextlib.contextmanager
def exportable_attention() -> Iterator[None]:
    """Attention's fused fast path (``aten::_native_multi_head_attention``, taken in eval mode) has no ONNX
    translation; its Python path computes the same attention from exportable operations."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def refuse_data_dependent_flow(caught: list[warnings.WarningMessage], what: str) -> None:
    """Refuse an export during which torch's tracer turned a tensor into a Python value: the graph then holds
    the branch (or the count) of the example input only, and would compute another model on other inputs."""
    for w in caught:
        text = str(w.message)
        if os.path.abspath(w.filename).startswith(_TORCH) or os.path.abspath(w.filename) in _OWN_SHAPE_CHECKS:
            continue  # torch's own checks of shapes (fixed in the graph but the batch), not of values
        if issubclass(w.category, torch.jit.TracerWarning) and any(k in text for k in _DATA_DEPENDENT):
            where = f"{w.filename}:{w.lineno}"
            raise ConfigError(f"{what}: forward makes a decision on tensor values at {where} (e.g. `if x.mean() > 0`), "
                              "which an ONNX graph traced from one input cannot follow; export refused (rewrite it "
                              "with torch.where, or export the branch you need as its own module)")  # fmt: skip


INT4_OPSET = 21  # DequantizeLinear of INT4 tensors


def _int4_codes_(proto: onnx.ModelProto) -> None:
    """Store weight codes that fit 4 bits as ``INT4`` initializers (two per byte), their zero point (always 0:
    weights are symmetric) left out. Lossless: the same integers, dequantized by the same scales."""
    import ml_dtypes  # onnx's own dependency, for its 4-bit types

    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        name = node.input[0] if node.op_type == "DequantizeLinear" else ""
        if not name.endswith(".codes") or name not in inits:
            continue
        codes = onnx.numpy_helper.to_array(inits[name])
        if codes.dtype != "int8" or codes.min(initial=0) < -8 or codes.max(initial=0) > 7:
            continue  # 8-bit codes
        inits[name].CopyFrom(onnx.numpy_helper.from_array(codes.astype(ml_dtypes.int4), name))
        del node.input[2:]


def _narrow_indices_(proto: onnx.ModelProto, int4: bool) -> None:
    """Store each codebook's indices in the fewest bits ONNX has for them: ``UINT8`` (``UINT4`` when ``int4`` and
    they fit), cast to the int32 that ``Gather`` takes. (torch's constant folding turned the ``uint8`` indices
    and their ``Cast`` into one int32 initializer, four bytes per weight.) The same integers: lossless."""
    import ml_dtypes  # onnx's own dependency, for its 4-bit types

    inits = {i.name: i for i in proto.graph.initializer}
    casts = []
    for node in proto.graph.node:
        if node.op_type != "Gather" or not node.input[0].endswith(".table") or node.input[1] not in inits:
            continue
        indices = onnx.numpy_helper.to_array(inits[node.input[1]])
        if indices.dtype.kind not in "iu" or indices.min(initial=0) < 0 or indices.max(initial=0) > 255:
            continue
        narrow = indices.astype(ml_dtypes.uint4 if int4 and indices.max(initial=0) <= 15 else "uint8")
        name = node.input[0].removesuffix(".table") + ".indices"
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(narrow, name))
        casts.append(onnx.helper.make_node("Cast", [name], [name + "_int32"], to=onnx.TensorProto.INT32))
        node.input[1] = name + "_int32"
    for cast in reversed(casts):  # their inputs are initializers: first in the graph
        proto.graph.node.insert(0, cast)


def _constant(name: str, inits: dict[str, Any], producers: dict[str, Any]) -> Any:
    """The value of an initializer or a ``Constant`` node's output, as a numpy array; ``None`` for anything else."""
    if name in inits:
        return onnx.numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return onnx.numpy_helper.to_array(node.attribute[0].t)
    return None


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


_LAYOUT = ("Transpose", "Reshape", "Identity", "Unsqueeze", "Squeeze")


def _float_weight(name: str, inits: dict[str, Any], producers: dict[str, Any]) -> bool:
    """Whether a layer's weight is float values: a float initializer or a codebook's table lookup, maybe
    transposed or reshaped on the way (not a ``DequantizeLinear`` of integer codes)."""
    node = producers.get(name)
    while node is not None and node.op_type in _LAYOUT:
        name, node = node.input[0], producers.get(node.input[0])
    if node is None:
        return name in inits and inits[name].data_type == onnx.TensorProto.FLOAT
    return node.op_type == "Gather" and node.input[0].endswith(".table")


def _feature_shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    """Every value's inferred shape (-1 where a dimension is not a fixed number, as the batch)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return shapes


def _spread_float_weight_inputs_(proto: onnx.ModelProto) -> None:
    """Give each layer that runs on float weights (a codebook's table lookup, a layer left unquantized) but on a
    quantized input a ``DequantizeLinear`` whose one scale is repeated along a non-batch axis of more than one
    element, instead of a scalar: the same numbers, but onnxruntime's WeightBiasQuantization only rewrites a
    layer whose input scale is a scalar (a one-element axis counts as one), and would otherwise requantize that
    float weight to int8 per tensor: a different model."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    inits = {i.name: i for i in proto.graph.initializer}
    shapes: dict[str, list[int]] | None = None
    for node in list(proto.graph.node):
        if node.op_type not in _WEIGHTED or len(node.input) < 2:
            continue
        source = producers.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear" or not _float_weight(node.input[1], inits, producers):
            continue  # integer weights (what onnxruntime should fuse), or an input not quantized
        scale = _constant(source.input[1], inits, producers)
        if scale is None or scale.ndim != 0:
            continue  # already per axis, or not a constant this pass knows
        shapes = _feature_shapes(proto) if shapes is None else shapes
        dims = shapes.get(node.input[0], [])
        axis = next((a for a, size in enumerate(dims) if a > 0 and size > 1), None)
        if axis is None:
            raise ConfigError(f"{node.name}: a layer on float weights whose quantized input has no known axis of more "
                              "than one element; onnxruntime would requantize its weight, so the export is refused")  # fmt: skip
        zero = _constant(source.input[2], inits, producers) if len(source.input) > 2 else None
        name = node.input[0]
        spread_scale = onnx.numpy_helper.from_array(scale.repeat(dims[axis]), name + ".spread_scale")
        proto.graph.initializer.append(spread_scale)
        inputs = [source.input[0], spread_scale.name]
        if zero is not None:
            spread_zero = onnx.numpy_helper.from_array(zero.repeat(dims[axis]), name + ".spread_zero_point")
            proto.graph.initializer.append(spread_zero)
            inputs.append(spread_zero.name)
        if consumers.get(name, 0) == 1:  # this layer's own dequantization: changed in place
            del source.input[:]
            source.input.extend(inputs)
            for old in [a for a in source.attribute if a.name == "axis"]:
                source.attribute.remove(old)
            source.attribute.append(onnx.helper.make_attribute("axis", axis))
            continue
        spread = onnx.helper.make_node("DequantizeLinear", inputs, [name + "_spread"], axis=axis)
        proto.graph.node.insert(list(proto.graph.node).index(node), spread)
        node.input[0] = spread.output[0]  # this layer only: the scalar one stays for its other consumers


def _drop_unused_initializers_(proto: onnx.ModelProto) -> None:
    """Remove initializers no node reads (an INT4 weight's zero point, a scale a spread one replaced): bytes in
    the file, and a warning from onnxruntime at every load."""
    used = {name for node in proto.graph.node for name in node.input}
    kept = [i for i in proto.graph.initializer if i.name in used or i.name in {o.name for o in proto.graph.output}]
    if len(kept) < len(proto.graph.initializer):
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(kept)


def torch_export(model: nn.Module, example_input: torch.Tensor, opset: int, what: str) -> onnx.ModelProto:
    """``model`` through torch's TorchScript exporter: input ``"input"``, output ``"output"``, a dynamic batch
    axis, attention on its exportable path; refused when forward decided on tensor values while being traced.

    (The TorchScript exporter is deprecated in favour of torch.export, which does not yet keep a dynamic batch
    axis on every model this one handles.)"""
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught, exportable_attention():
        warnings.simplefilter("always")  # its TracerWarnings are read below
        try:
            torch.onnx.export(model, (example_input,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})  # fmt: skip
        except ConfigError:
            raise
        except Exception as exc:  # torch.onnx raises many types for an untranslatable model
            raise ConfigError(f"{what}: not supported by torch's ONNX exporter ({exc})") from exc
    refuse_data_dependent_flow(caught, what)
    return onnx.load_from_string(buffer.getvalue())


def build_traced_qdq_model(
    model: nn.Module,
    example_input: torch.Tensor,
    opset: int,
    weights: dict[str, QuantizedLayer] | None = None,
    integer_bias: bool | None = None,
    weight_type: str = "uint8",
) -> onnx.ModelProto:
    """The QDQ graph of a fake-quantized ``model`` through torch's TorchScript exporter (see the module doc).

    ``weights``: integer codes of weights that are plain (decoded) tensors in ``model``, by weight name (a file
    loaded by :func:`torchshrink.export.load_for_export`). From opset 21 on, codes of 4 bits or fewer are stored
    as ``INT4`` initializers (the ONNX file of a W4 model then holds 4-bit weights).

    ``integer_bias``, ``weight_type``: as :func:`torchshrink.export.to_onnx`'s; a layer whose bias is not to become int32 codes gets
    an input scale onnxruntime does not fuse (see :func:`_as_codes_`).

    Raises:
        ConfigError: torch cannot export the model, a forward that branches on tensor values, or codes that do
            not fit an 8-bit container.
    """
    clone = independent_copy(model).eval()  # its parametrizations are replaced below, the model's are not
    layers = export_layers(clone) + list((weights or {}).values())
    if not layers and not codebook_layers(clone):
        raise ConfigError("no quantized weight: export the fp32 model instead")
    exact = _as_codes_(clone, layers, integer_bias, weight_type)
    _as_qdq_inputs_(clone, exact)
    proto = torch_export(clone, example_input, opset, type(model).__name__)
    if opset >= INT4_OPSET:
        _int4_codes_(proto)
    _narrow_indices_(proto, int4=opset >= INT4_OPSET)
    _spread_float_weight_inputs_(proto)
    _drop_unused_initializers_(proto)
    return proto
