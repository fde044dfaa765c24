"""Export compressed models to formats other runtimes read: ONNX (fp32, or QDQ from the integer codes)."""

from torchshrink.export.check import onnx_agreement, onnx_speed
from torchshrink.export.from_file import load_for_export
from torchshrink.export.onnx_export import OPSET, export_onnx, is_fake_quantized, to_onnx
from torchshrink.export.onnx_graph import SUPPORTED, build_qdq_model

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
]
