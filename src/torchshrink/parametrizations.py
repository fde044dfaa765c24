"""Finding one kind of parametrization on a module's weight (masks, fake quant and codebooks stack there)."""

from __future__ import annotations

from typing import TypeVar

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["find_parametrization"]

P = TypeVar("P", bound=nn.Module)


def find_parametrization(module: nn.Module, kind: type[P], name: str = "weight") -> P | None:
    """The first parametrization of type ``kind`` on ``module.<name>``, or ``None``."""
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, kind):
                return p
    return None
