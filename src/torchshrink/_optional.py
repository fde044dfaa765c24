"""Optional dependencies: the core (pruning, quantization, the file) needs torch, numpy and safetensors only;
ONNX export and the study's plots need more, and say so when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from torchshrink.errors import ConfigError

__all__ = ["EXTRAS", "require"]

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "matplotlib": "plots"}  # module -> the extra that installs it


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a :class:`ConfigError` naming the extra that installs it.

    >>> require("math", "a doctest").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module)
        fix = f"pip install 'torchshrink[{extra}]'" if extra else f"pip install {module}"
        raise ConfigError(f"{purpose} needs the {module} package, which is not installed: {fix}") from None
