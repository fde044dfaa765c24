"""Export compressed models to formats other runtimes read: ONNX (fp32, or QDQ from the integer codes).

Needs the ``[onnx]`` extra (onnx and onnxruntime)."""

from torchshrink._optional import require

require("onnx", "ONNX export (torchshrink.export)")  # first: a clear message, not a bare ImportError below

from torchshrink.export.check import onnx_agreement, onnx_speed  # noqa: E402
from torchshrink.export.from_file import load_for_export  # noqa: E402
from torchshrink.export.onnx_export import OPSET, export_onnx, is_fake_quantized, to_onnx  # noqa: E402
from torchshrink.export.onnx_graph import SUPPORTED, build_qdq_model  # noqa: E402
from torchshrink.export.onnx_layers import WEIGHT_TYPES, WeightType  # noqa: E402

__all__ = [
    # ONNX
    "export_onnx",
    "to_onnx",
    "build_qdq_model",
    "is_fake_quantized",
    "load_for_export",
    "onnx_agreement",
    "onnx_speed",
    "SUPPORTED",
    "OPSET",
    "WEIGHT_TYPES",
    "WeightType",
]
