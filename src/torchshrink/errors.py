"""Exception types: one per area, each message naming the file or value and the fix.

The command line turns any :class:`TorchshrinkError` into one line on stderr and exit code 1.
"""

from __future__ import annotations

__all__ = ["TorchshrinkError", "DataError", "CheckpointError", "ConfigError"]


class TorchshrinkError(Exception):
    """Base class of every error torchshrink raises on bad input."""


class DataError(TorchshrinkError):
    """The dataset files are missing, corrupt or malformed."""


class CheckpointError(TorchshrinkError):
    """A checkpoint is missing, truncated, or does not match its model."""


class ConfigError(TorchshrinkError):
    """A setting has an impossible value."""
