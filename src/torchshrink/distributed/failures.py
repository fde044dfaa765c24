"""A rank that dies or stops answering: the others fail with one clear error instead of a bare backend one.

Every collective waits at most the process group's timeout (see :func:`torchshrink.distributed.init_from_env`);
gloo notices a closed connection at once. Either way the backend raises a ``RuntimeError`` whose text is about
sockets and stores; this turns it into a :class:`DistributedError` that says what happened and where to look.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from torchshrink.distributed.env import is_distributed, rank, world_size
from torchshrink.errors import DistributedError, first_line

__all__ = ["is_comm_failure", "failures_as_errors"]

# words of gloo's, NCCL's and the store's messages when a peer is gone or late
_SIGNS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "store", "watchdog")


def is_comm_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a backend's report of a lost or silent rank (not a bug in the training code)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(sign in text for sign in _SIGNS)


@contextlib.contextmanager
def failures_as_errors(what: str) -> Iterator[None]:
    """Re-raise a lost-rank failure inside the block as a :class:`DistributedError` naming this rank and ``what``
    it was doing; other exceptions, and everything in a single process, pass through untouched."""
    try:
        yield
    except RuntimeError as exc:
        if not is_distributed() or not is_comm_failure(exc):
            raise
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} stopped because another rank died or stopped answering "
            f"({first_line(str(exc), 120)}); the first error in the other ranks' output is the cause"
        ) from exc
