"""Commands under ``torchrun``: every rank runs the whole command (same data, same seeds, the same
collectives in the same order); rank 0 alone prints and writes.

    torchrun --nproc-per-node 2 -m torchshrink train --out runs/ddp
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable

from torchshrink import distributed as dist

__all__ = ["run_on_ranks", "main_writes", "ranks_note"]


def run_on_ranks(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command(args)``, first joining the process group when torchrun started several ranks.

    Ranks other than 0 run with standard output silenced (their figures are rank 0's); errors still reach
    standard error from every rank. The group is left on the way out, whatever happens.
    """
    if not dist.init_from_env():
        return int(command(args))
    try:
        with dist.failures_as_errors(f"torchshrink {args.command}"):
            if dist.is_main():
                return int(command(args))
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                return int(command(args))
    finally:
        dist.shutdown()


def main_writes() -> bool:
    """Whether this process writes the command's outputs: rank 0, once every rank got here (so a failure on any
    rank during the work leaves nothing written). Always ``True`` in a single process."""
    dist.barrier()
    return dist.is_main()


def ranks_note() -> str:
    """`` on N ranks`` in a multi-process run, else nothing: for a command's opening line."""
    n = dist.world_size()
    return f" on {n} ranks (torchrun), rank 0 writing" if n > 1 else ""
