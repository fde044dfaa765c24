"""The ``torchshrink`` command line: one module per group of commands, shared argument types in ``args``.

Bad arguments: one line on stderr, exit code 2. Bad input files: one line on stderr, exit code 1.
Nothing is written unless the command succeeds. The command's OpenMP threads sleep while they wait
(``OMP_WAIT_POLICY=PASSIVE`` unless set): :mod:`torchshrink._threads` sets it when the package is imported by
the command, as torch reads it when it loads, before this module runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from torchshrink.cli.args import Parser, UsageError
from torchshrink.cli.compress import add_compress_commands
from torchshrink.cli.export import add_export_command
from torchshrink.cli.prune import add_pruning_commands
from torchshrink.cli.quantize import add_quant_commands
from torchshrink.cli.ranks import run_on_ranks
from torchshrink.cli.study import add_study_command
from torchshrink.cli.train import add_train_commands
from torchshrink.errors import TorchshrinkError, TorchshrinkWarning

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="torchshrink", description="Prune and quantize neural networks, and measure what it costs.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    add_train_commands(sub)
    add_pruning_commands(sub)
    add_quant_commands(sub)
    add_compress_commands(sub)
    add_export_command(sub)
    add_study_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from torchshrink import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with _own_warnings_in_one_line():
            return run_on_ranks(args.func, args)
    except UsageError as exc:  # options that do not go together: a usage error, as argparse's (exit 2)
        print(f"torchshrink: error: {exc}", file=sys.stderr)
        return 2
    except TorchshrinkError as exc:
        print(f"torchshrink: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torchshrink: interrupted; nothing was written for the unfinished step", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _own_warnings_in_one_line() -> Iterator[None]:
    """Print torchshrink's own warnings as ``torchshrink: warning: ...``, one line each, as its errors are.

    Python's format adds the file, the line and the source line of the call, which say nothing to a user of the
    command. Every other warning (torch's, a user's module's, the recipes' notes) keeps Python's own format and
    filters: nothing is hidden.
    """
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:  # fmt: skip
        if issubclass(category, TorchshrinkWarning):
            text = " ".join(str(message).splitlines())
            print(f"torchshrink: warning: {text}", file=file if file is not None else sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
