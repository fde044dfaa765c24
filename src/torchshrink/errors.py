"""Exception types: one per area, each message naming the file or value and the fix.

The command line turns any :class:`TorchshrinkError` into one line on stderr and exit code 1, and prints any
:class:`TorchshrinkWarning` as one line too.
"""

from __future__ import annotations

import math

__all__ = [
    "TorchshrinkError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "DistributedError",
    "TorchshrinkWarning",
    "check_finite",
    "show_value",
    "first_line",
]


class TorchshrinkError(Exception):
    """Base class of every error torchshrink raises on bad input."""


class DataError(TorchshrinkError):
    """The dataset files are missing, corrupt or malformed."""


class CheckpointError(TorchshrinkError):
    """A checkpoint is missing, truncated, or does not match its model."""


class ConfigError(TorchshrinkError):
    """A setting has an impossible value."""


class DistributedError(TorchshrinkError):
    """Ranks of a multi-process run disagree (masks, quantizer ranges) or cannot reach each other."""


class TorchshrinkWarning(UserWarning):
    """Something legal but likely unintended in the user's input (an all-zero weight tensor), said by torchshrink
    itself in one line: the command line prints it as ``torchshrink: warning: ...``, like its errors."""


def check_finite(config: object, *fields: str) -> None:
    """Raise :class:`ConfigError` if a named float field of ``config`` is NaN or infinite (``inf`` passes a
    ``> 0`` check, and a run with an infinite learning rate fails late and unclearly).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = float("inf")
    >>> check_finite(C(), "lr")
    Traceback (most recent call last):
    torchshrink.errors.ConfigError: lr=inf: must be a finite number
    """
    for name in fields:
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{name}={value}: must be a finite number")


def show_value(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line, whatever a file holds.

    >>> show_value("x" * 100, limit=10)
    "'xxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def first_line(text: str, limit: int = 160) -> str:
    """The first line of an exception's text, cut to ``limit`` characters.

    >>> first_line("bad value\\ntraceback follows")
    'bad value'
    """
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else f"{line[: limit - 3]}..."
