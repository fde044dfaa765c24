"""Export a model to ONNX: fp32 models plainly, fake-quantized models as a QDQ graph of their integer codes.

Example:
    >>> import tempfile, torch
    >>> from torchshrink.models import build_model
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     export_onnx(build_model("cnn_tiny"), f"{folder}/cnn.onnx", torch.zeros(1, 1, 28, 28))
"""

from __future__ import annotations

import os

import onnx
import torch
from torch import nn

from torchshrink._io import atomic_write_bytes
from torchshrink.errors import ConfigError
from torchshrink.export.onnx_graph import build_qdq_model
from torchshrink.export.onnx_layers import WeightType, check_weight_type
from torchshrink.export.traced_qdq import build_traced_qdq_model, torch_export
from torchshrink.quant.adds import join_quantizers
from torchshrink.quant.export import QuantizedLayer
from torchshrink.quant.fake_quant import FakeQuant
from torchshrink.quant.sharing import codebook_layers

__all__ = ["OPSET", "is_fake_quantized", "to_onnx", "export_onnx"]

OPSET = 17  # per-axis DequantizeLinear and integer Clip need 13; 17 is what ONNX runtimes of 2022 on read


def is_fake_quantized(model: nn.Module) -> bool:
    """Whether any fake quant in ``model`` is switched on (then it exports as a QDQ graph)."""
    return any(isinstance(m, FakeQuant) and m.enabled for m in model.modules())


def _qdq_model(model: nn.Module, example_input: torch.Tensor, opset: int, weights: dict[str, QuantizedLayer] | None,
               integer_bias: bool | None, weight_type: WeightType) -> onnx.ModelProto:  # fmt: skip
    """The hand-built QDQ graph where every operation is one it translates (integer biases, quantizers moved
    across ReLU and pooling: onnxruntime's fastest form), else torch's traced graph with QDQ at the quantizers.
    Join quantizers (:mod:`torchshrink.quant.adds`) sit on adds and concatenations, which only the traced graph
    has, and only the traced graph stores a codebook as its indices and table (the hand-built one as float
    weights): such models go there directly."""
    if join_quantizers(model) or codebook_layers(model):
        return build_traced_qdq_model(model, example_input, opset, weights, integer_bias, weight_type)
    try:
        return build_qdq_model(model, example_input, opset, weights, integer_bias, weight_type=weight_type)
    except ConfigError as hand_built:
        try:
            return build_traced_qdq_model(model, example_input, opset, weights, integer_bias, weight_type)
        except ConfigError as traced:
            raise ConfigError(f"{traced} (and the conv-chain exporter: {hand_built})") from None


def _check_runs(model: nn.Module, example_input: torch.Tensor) -> None:
    """Run the model once on the example: an input it cannot take is the caller's mistake, said as such, not an
    exporter limitation."""
    try:
        model(example_input)
    except Exception as exc:  # whatever the user's forward raises on an input it cannot take
        text = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{type(model).__name__} does not run on an input of shape {tuple(example_input.shape)} "
                          f"({type(exc).__name__}: {text}); give an example input (--input-shape) of the shape it "
                          "takes") from None  # fmt: skip


def to_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    opset: int = OPSET,
    weights: dict[str, QuantizedLayer] | None = None,
    integer_bias: bool | None = None,
    *,
    weight_type: WeightType = "uint8",
) -> onnx.ModelProto:
    """The checked ONNX model of ``model`` in eval mode, input ``"input"`` and output ``"output"``, with a
    dynamic batch axis. The model is left in the mode it was in.

    Args:
        model: an fp32 model (exported by torch's TorchScript exporter), or a fake-quantized one, e.g. from
            :func:`torchshrink.recipes.ptq` (exported as a QDQ graph built from its integer codes; only the
            layers in :data:`torchshrink.export.onnx_graph.SUPPORTED`).
        example_input: one float32 batch on the model's device; fixes every dimension but the first.
        opset: the ONNX opset, 13 or later.
        weights: integer codes of layers whose weights are plain tensors in ``model``, by layer name (from
            :func:`torchshrink.export.load_for_export`); given, the model exports as a QDQ graph.
        integer_bias: store the bias of a layer with quantized weight and input as int32 codes of ``input scale *
            weight scale``: onnxruntime then runs it as one integer kernel (``QLinearConv``, ``QGemm``), 3-5x
            faster than float, but the bias is rounded to that step, which torchshrink's model does not do.
            ``None`` (default): where weight and input are both 8-bit, whose step is fine enough (on the study's
            CNN, W8A8: 6 of 10,000 test images change their top-1); at narrower widths the step is coarse (W4A4:
            1.1% of top-1 changed, W2A2: 32%), so their layers keep a float bias, exact but not fused.
        weight_type: how 8-bit weight codes are stored. ``"uint8"`` (default): ``code + 128`` with zero point
            128, the same values, which onnxruntime multiplies exactly on every CPU. ``"int8"``: the codes as
            they are, on onnxruntime's faster uint8 x int8 kernels; on x86 without VNNI (AVX2, AVX-512 without
            VNNI) these saturate sums of two products at 32,767 and compute another model (the W8A8 models of
            the tests, on an AVX2 CPU: codes off by up to 82 steps, top-1 agreement down to 98.5%). Narrower
            codes are stored as int8 either way: they cannot reach that limit. See
            :data:`torchshrink.export.onnx_layers.WEIGHT_TYPES`.

    Raises:
        ConfigError: an unsupported layer or operation (named), a bad example input, an opset before 13, or an
            unknown weight type.
    """
    usable = isinstance(example_input, torch.Tensor) and (
        example_input.dtype == torch.float32 or not (example_input.is_floating_point() or example_input.is_complex())
    )
    if not usable or example_input.ndim < 1:
        raise ConfigError("example_input: give one batch of float32 inputs (or integer ones, e.g. token ids), "
                          "e.g. torch.zeros(1, 1, 28, 28)")  # fmt: skip
    if opset < 13:
        raise ConfigError(f"opset {opset}: per-channel DequantizeLinear and integer Clip need opset 13 or later")
    check_weight_type(weight_type)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _check_runs(model, example_input)
            if is_fake_quantized(model) or weights:
                proto = _qdq_model(model, example_input, opset, weights, integer_bias, weight_type)
            else:
                proto = torch_export(model, example_input, opset, type(model).__name__)
    finally:
        model.train(was_training)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_input: torch.Tensor,
    opset: int = OPSET,
    weights: dict[str, QuantizedLayer] | None = None,
    integer_bias: bool | None = None,
    *,
    weight_type: WeightType = "uint8",
) -> None:
    """Write ``model`` as an ONNX file at ``path`` atomically (see :func:`to_onnx`); nothing is written when
    the model cannot be exported."""
    proto = to_onnx(model, example_input, opset, weights, integer_bias, weight_type=weight_type)
    atomic_write_bytes(path, proto.SerializeToString())
