"""Compressed model files: bit packing, sparse positions, the ``.tshrink`` format, save and load."""

from torchshrink.pack.decode import load_compressed, read_compressed, read_header
from torchshrink.pack.encode import encode_compressed, save_compressed
from torchshrink.pack.format import FormatError
from torchshrink.pack.inspect import TensorSummary, inspect_compressed

__all__ = [
    "FormatError",
    "save_compressed",
    "encode_compressed",
    "load_compressed",
    "read_compressed",
    "read_header",
    "inspect_compressed",
    "TensorSummary",
]
