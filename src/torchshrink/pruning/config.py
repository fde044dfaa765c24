"""What the two pruning transforms take: :class:`PruneConfig` for :func:`prune_` (weights zeroed under masks),
:class:`StructuredConfig` for :func:`structured_prune_` (whole channels removed). Both call the fraction
removed ``sparsity``, and both are checked when built, so a bad value fails before any work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchshrink.errors import ConfigError
from torchshrink.pruning.masks import MASKS, check_amount, check_density

__all__ = ["PruneConfig", "StructuredConfig"]


@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning of weights (:func:`torchshrink.pruning.prune_`).

    >>> PruneConfig(0.9).scope
    'global'
    >>> PruneConfig({"fc": 0.5})
    Traceback (most recent call last):
    torchshrink.errors.ConfigError: per-layer sparsities need scope='layer'
    """

    sparsity: float | Mapping[str, float]  # fraction of zeros to reach; a dict of per-layer ones needs scope="layer"
    scope: str = "global"  # a key of MASKS: "global", "lamp" (scale-free global ranking) or "layer"
    min_density: float = 0.0  # fraction of each layer's weights always kept (a floor the ranking cannot go under)

    def __post_init__(self) -> None:
        if self.scope not in MASKS:
            raise ConfigError(f"scope {self.scope!r}: choose one of {', '.join(repr(k) for k in MASKS)}")
        check_density(self.min_density)
        if isinstance(self.sparsity, Mapping):
            if self.scope != "layer":
                raise ConfigError("per-layer sparsities need scope='layer'")
            for amount in self.sparsity.values():
                check_amount(amount)
            object.__setattr__(self, "sparsity", dict(self.sparsity))  # a private copy: the config stays as built
        else:
            check_amount(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        sparsity = dict(self.sparsity) if isinstance(self.sparsity, Mapping) else self.sparsity
        return {"sparsity": sparsity, "scope": self.scope, "min_density": self.min_density}


@dataclass(frozen=True)
class StructuredConfig:
    """Channel pruning (:func:`torchshrink.pruning.structured_prune_`): ``round(sparsity * C)`` of the C
    channels of every prunable group are removed, lowest scores first.

    >>> StructuredConfig(0.5, layer_sparsity={"features.conv1": 0.75}).layer_sparsity
    {'features.conv1': 0.75}
    """

    sparsity: float  # fraction of channels removed in every group not named in layer_sparsity, in [0, 1)
    min_channels: int = 1  # no group is pruned below this many channels
    multiple_of: int = 1  # keep a multiple of this many channels in every group (the CPU's vector width: 8 or 16)
    # a fraction per group, named by its first producer conv ({"features.conv1": 0.75}): layers differ in what
    # their channels cost and buy; on a CPU the convs at full image resolution cost most time per channel
    layer_sparsity: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_sparsity", dict(self.layer_sparsity or {}))
        for value in (self.sparsity, *self.layer_sparsity.values()):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"sparsity {value}: the fraction of channels to remove must be in [0, 1)")
        if not isinstance(self.multiple_of, int) or self.multiple_of < 1:
            raise ConfigError(f"multiple_of={self.multiple_of!r}: give a positive whole number of channels")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise ConfigError(f"min_channels={self.min_channels!r}: give a positive whole number of channels")

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "min_channels": self.min_channels, "multiple_of": self.multiple_of,
                "layer_sparsity": dict(self.layer_sparsity)}  # fmt: skip
