"""Which process this is in a multi-process run: join the process group ``torchrun`` describes, and ask
the rank, the world size and the device of this rank.

Every function here is a cheap no-op answer (rank 0 of a world of 1) when no process group is initialised,
so single-process code paths run exactly as they would without this module: no collective, no extra sync.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from torchshrink.errors import ConfigError, DistributedError

__all__ = [
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT",
    "init_from_env",
    "shutdown",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "barrier",
    "comm_device",
    "can_exchange",
    "rank_device",
]

TIMEOUT_ENV = "TORCHSHRINK_DIST_TIMEOUT"  # seconds a collective waits for the other ranks before failing
# long enough for rank 0 to write its files while the others wait at a barrier, short enough that a dead
# rank ends the run instead of hanging it (torchrun also stops the others when one rank exits with an error)
DEFAULT_TIMEOUT = timedelta(minutes=10)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"${name}={text!r}: expected an integer (torchrun sets it)") from None


def _timeout_from_env() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"${TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def init_from_env(timeout: timedelta | None = None) -> bool:
    """Join the process group described by ``torchrun``'s ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` variables.

    A no-op returning ``False`` when ``WORLD_SIZE`` is unset or 1; ``True`` when a group of several ranks is
    (or already was) initialised. CPU tensors communicate over gloo; on a machine with CUDA, CUDA tensors over
    NCCL, and this rank is bound to ``cuda:LOCAL_RANK``.

    Args:
        timeout: how long any collective waits for the other ranks (default: ``$TORCHSHRINK_DIST_TIMEOUT``
            seconds, else 10 minutes); a rank that died makes the others fail after it instead of hanging.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this build of torch has no torch.distributed")
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout or _timeout_from_env())
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"could not join the process group of rank {_env_int('RANK', 0)}: {exc}") from exc
    return dist.get_world_size() > 1


def shutdown() -> None:
    """Leave the process group, if any (a clean exit without torch's warning about a leaked group)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many ranks train together (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (``$LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this process is rank 0: the one that logs and writes files."""
    return rank() == 0


def comm_device() -> torch.device:
    """Where small tensors exchanged between ranks live: CPU under gloo, this rank's GPU under NCCL alone."""
    backend = str(dist.get_backend()) if is_distributed() else "gloo"
    if "gloo" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def can_exchange(device: torch.device) -> bool:
    """Whether the process group's backend exchanges tensors on ``device`` directly (no copy to CPU or GPU)."""
    backend = str(dist.get_backend()) if is_distributed() else "gloo"
    if device.type == "cuda":
        return "nccl" in backend
    return "gloo" in backend


def barrier() -> None:
    """Wait until every rank gets here (a no-op when not distributed).

    An all-reduce of one number rather than ``dist.barrier()``: it takes the same backend as every other
    small exchange and honours the group's timeout on gloo and NCCL alike.
    """
    if is_distributed():
        dist.all_reduce(torch.zeros(1, device=comm_device()))


def rank_device(device: str) -> torch.device:
    """``cuda`` means this rank's own GPU (``cuda:LOCAL_RANK``) in a multi-process run; other names are as given."""
    if device == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return torch.device(device)
