"""Finding one kind of parametrization on a module's weight (masks, fake quant and codebooks stack there).

Kept for its import path: the function lives in :mod:`torchshrink.layers` with the rest of layer selection.
"""

from __future__ import annotations

from torchshrink.layers import find_parametrization

__all__ = ["find_parametrization"]
