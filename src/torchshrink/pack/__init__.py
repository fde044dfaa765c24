"""Compressed model files: bit packing, sparse positions, the ``.tshrink`` format, save and load."""

from torchshrink.pack.compressed import (
    TensorSummary,
    encode_compressed,
    inspect_compressed,
    load_compressed,
    read_compressed,
    save_compressed,
)
from torchshrink.pack.format import FormatError

__all__ = [
    "FormatError",
    "save_compressed",
    "encode_compressed",
    "load_compressed",
    "read_compressed",
    "inspect_compressed",
    "TensorSummary",
]
