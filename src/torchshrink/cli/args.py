"""Argument types and options shared by every command: one place, so each number is checked the same way
before any work starts (argparse turns a bad value into one line and exit code 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from torchshrink.errors import TorchshrinkError

__all__ = [
    "Parser",
    "bounded",
    "positive_int",
    "non_negative_int",
    "seed_int",
    "finite_float",
    "positive_float",
    "fraction",
    "ema_decay",
    "sparsity",
    "sparsity_list",
    "layer_sparsities",
    "bits",
    "add_data_dir",
    "UsageError",
    "add_device",
    "add_full_range",
]

SEED_MAX = 2**63 - 1  # a signed 64-bit integer: what every generator that takes a seed (torch, numpy) accepts


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")



class UsageError(TorchshrinkError):
    """Options that do not go together: a usage error like argparse's own (exit code 2), raised before any work."""

def bounded(
    kind: Callable[[str], float | int], low: float, what: str, high: float | None = None
) -> Callable[[str], float | int]:
    """An argparse type: ``kind(text)`` within ``[low, high]`` (no upper bound when ``high`` is None).

    Floats must be finite: ``inf`` and ``nan`` parse as floats but are never a usable setting.
    """

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, {what}")
        if not (value >= low and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    return parse


positive_int = bounded(int, 1, "a positive integer")
non_negative_int = bounded(int, 0, "a non-negative integer")
seed_int = bounded(int, 0, f"an integer from 0 to 2**63-1 ({SEED_MAX})", high=SEED_MAX)


def finite_float(text: str) -> float:
    """An argparse type: a float that is neither infinite nor NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def fraction(text: str) -> float:
    return float(bounded(float, 0, "a number in [0, 1]", high=1)(text))


def sparsity(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1), e.g. 0.9 for 90% zeros")
    return value


def sparsity_list(text: str) -> list[float]:
    return [sparsity(part) for part in text.split(",") if part.strip()]


def layer_sparsities(text: str) -> dict[str, float]:
    """An argparse type: ``NAME=FRACTION`` pairs, comma-separated (``features.conv1=0.75,features.conv2=0.5``)."""
    pairs: dict[str, float] = {}
    for part in filter(str.strip, text.split(",")):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: give NAME=FRACTION, e.g. features.conv1=0.75")
        if name.strip() in pairs:
            raise argparse.ArgumentTypeError(f"{name.strip()!r} is given twice")
        pairs[name.strip()] = sparsity(value)
    if not pairs:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=FRACTION pairs, e.g. features.conv1=0.75")
    return pairs


def ema_decay(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1), e.g. 0.998 (0: no average)")
    return value


def bits(text: str) -> int:
    return int(bounded(int, 2, "an integer from 2 to 8", high=8)(text))


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four Fashion-MNIST .gz files (default: $TORCHSHRINK_DATA, "
        "/usr/share/datasets/fashion-mnist, ~/.cache/torchshrink/fashion-mnist, else download)",
    )


def add_full_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full-range", action="store_true",
                   help="weights use every signed code, e.g. 4 levels at 2 bits (-2..1) instead of 3 (ternary); "
                        "zero stays a code")  # fmt: skip


def add_device(p: argparse.ArgumentParser, what: str = "run") -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help=f"where to {what} (default: auto, cuda when present, else cpu; under torchrun, cuda is "
                   "each rank's cuda:LOCAL_RANK)")  # fmt: skip


def add_precision(p: argparse.ArgumentParser, what: str) -> None:
    from torchshrink.recipes.train import PRECISIONS, TrainConfig

    p.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision,
                   help=f"{what} under bfloat16 autocast (bf16: 1.6-1.9x faster on CPUs with AVX-512 BF16 or AMX, "
                   "slower where it is emulated; weights, evaluation and quantization codes stay fp32) or in fp32 "
                   "(default: %(default)s, the library's; the study runs in bf16 to fit its time)")  # fmt: skip
