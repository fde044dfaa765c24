"""Sparsity schedules for step-by-step pruning: plain functions ``sparsity_at(step) -> float``.

Step 0 is the start (``initial`` sparsity), step ``steps`` reaches ``final``.
"""

from __future__ import annotations

from collections.abc import Callable

from torchshrink.errors import ConfigError

__all__ = ["Schedule", "SCHEDULES", "linear_schedule", "agp_schedule", "make_schedule"]

Schedule = Callable[[int], float]


def _check(final: float, steps: int, initial: float) -> None:
    if steps < 1:
        raise ConfigError(f"steps={steps}: must be at least 1")
    if not 0 <= initial <= final < 1:
        raise ConfigError(f"sparsity from {initial} to {final}: need 0 <= initial <= final < 1")


def linear_schedule(final: float, steps: int, initial: float = 0.0) -> Schedule:
    """Equal increments: ``initial + (final - initial) * step / steps``.

    >>> [round(linear_schedule(0.9, 3)(i), 2) for i in range(4)]
    [0.0, 0.3, 0.6, 0.9]
    """
    _check(final, steps, initial)
    return lambda step: initial + (final - initial) * min(max(step, 0), steps) / steps


def agp_schedule(final: float, steps: int, initial: float = 0.0) -> Schedule:
    """The cubic gradual schedule of Zhu & Gupta (2017): prune fast while many redundant weights remain,
    slowly near the target. ``s_t = final + (initial - final) * (1 - t / steps) ** 3``.

    >>> [round(agp_schedule(0.9, 3)(i), 3) for i in range(4)]
    [0.0, 0.633, 0.867, 0.9]
    """
    _check(final, steps, initial)
    return lambda step: final + (initial - final) * (1 - min(max(step, 0), steps) / steps) ** 3


SCHEDULES: dict[str, Callable[..., Schedule]] = {"linear": linear_schedule, "agp": agp_schedule}


def make_schedule(name: str, final: float, steps: int, initial: float = 0.0) -> Schedule:
    """Look up a schedule by name (``linear`` or ``agp``)."""
    if name not in SCHEDULES:
        raise ConfigError(f"schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](final, steps, initial)
