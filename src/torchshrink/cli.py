"""The ``torchshrink`` command line.

Bad arguments: one line on stderr, exit code 2. Bad input files: one line on stderr, exit code 1.
Nothing is written unless the command succeeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from torchshrink.errors import TorchshrinkError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _bounded(
    kind: Callable[[str], float | int], low: float, what: str, high: float | None = None
) -> Callable[[str], float | int]:
    """An argparse type: ``kind(text)`` within ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (value >= low and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    return parse


positive_int = _bounded(int, 1, "a positive integer")
non_negative_int = _bounded(int, 0, "a non-negative integer")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four Fashion-MNIST .gz files (default: $TORCHSHRINK_DATA, "
        "/usr/share/datasets/fashion-mnist, ~/.cache/torchshrink/fashion-mnist, else download)",
    )


def build_parser() -> argparse.ArgumentParser:
    from torchshrink.train import TrainConfig

    defaults = TrainConfig()
    parser = _Parser(prog="torchshrink", description="Prune and quantize neural networks, and measure what it costs.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train", help="train the baseline CNN on Fashion-MNIST", description="Train a model and save a checkpoint."
    )
    p.add_argument("--model", default="cnn", help="registered model name (default: %(default)s)")
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=defaults.epochs,
        help="passes over the training split (default: %(default)s)",
    )
    p.add_argument("--lr", type=_positive_float, default=defaults.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=positive_int, default=defaults.batch_size, help="images per step (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=defaults.seed,
        help="random seed for init, shuffling, augmentation (default: %(default)s)",
    )
    p.add_argument(
        "--optimizer", choices=("sgd", "adamw"), default=defaults.optimizer, help="optimizer (default: %(default)s)"
    )
    p.add_argument(
        "--schedule",
        choices=("onecycle", "cosine"),
        default=defaults.schedule,
        help="learning-rate schedule (default: %(default)s)",
    )
    p.add_argument(
        "--train-subset",
        type=positive_int,
        metavar="N",
        help="train on the first N training images only (quick checks)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to train (default: cuda when present, else cpu)")
    p.add_argument(
        "--out", default="runs/baseline", metavar="DIR", help="checkpoint folder to write (default: %(default)s)"
    )
    _add_data_dir(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on the test set",
        description="Print test accuracy, loss, parameters and fp32 size.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder written by `torchshrink train`")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to evaluate (default: cuda when present, else cpu)")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_eval)

    from torchshrink.cli_pruning import add_pruning_commands

    add_pruning_commands(sub, _add_data_dir)
    from torchshrink.cli_quant import add_quant_commands

    add_quant_commands(sub, _add_data_dir)
    from torchshrink.cli_compress import add_compress_commands

    add_compress_commands(sub, _add_data_dir)
    from torchshrink.cli_study import add_study_command

    add_study_command(sub, _add_data_dir)
    return parser


def _print_layers(model: object) -> None:
    from torchshrink.models import fp32_bytes, layer_table, parameter_count

    rows = layer_table(model)  # type: ignore[arg-type]
    width = max(len(r.name) for r in rows)
    print(f"{'layer':<{width}}  {'type':<12} {'params':>9} {'fp32 bytes':>11}")
    for r in rows:
        print(f"{r.name:<{width}}  {r.kind:<12} {r.params:>9,} {r.fp32_bytes:>11,}")
    print(
        f"{'total':<{width}}  {'':<12} {parameter_count(model):>9,} {fp32_bytes(model):>11,}  (incl. BatchNorm buffers)"
    )  # type: ignore[arg-type]


def _cmd_train(args: argparse.Namespace) -> int:
    from torchshrink.checkpoint import save_checkpoint
    from torchshrink.data import load_fashion_mnist
    from torchshrink.models import build_model
    from torchshrink.train import TrainConfig, evaluate, fit, pick_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TorchshrinkError(f"--out {out}: exists and is not a folder; choose another path")
    cfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        optimizer=args.optimizer, schedule=args.schedule,
    )  # fmt: skip
    device = pick_device(args.device)
    data = load_fashion_mnist(args.data_dir)
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    try:
        model = build_model(args.model)
    except KeyError as exc:
        raise TorchshrinkError(str(exc.args[0])) from None
    _print_layers(model)
    print(f"training {args.model} on {len(data.train_y):,} images ({data.source}), device {device}")
    start = time.perf_counter()
    rewind: dict = {}

    def keep_rewind_point(epoch: int, trained: object) -> None:
        if epoch == 1:  # weights after one epoch: the rewind point for lottery-ticket pruning
            rewind.update({k: v.detach().clone() for k, v in trained.state_dict().items()})  # type: ignore[attr-defined]

    history = fit(model, data, cfg, device, after_epoch=keep_rewind_point)
    wall = time.perf_counter() - start
    test_acc, test_loss = evaluate(model, data.test_x, data.test_y, device=device)
    save_checkpoint(
        out, model, args.model, model.arguments() if hasattr(model, "arguments") else {}, rewind=rewind,
        train_config=cfg.to_dict(),
        metrics={
            "test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": history[-1].val_accuracy,
            "train_seconds": wall, "images_per_second": sum(h.images_per_second for h in history) / len(history),
        },
        history=[h.__dict__ for h in history],
        device=str(device),
    )  # fmt: skip
    print(f"test accuracy {100 * test_acc:.2f}%  loss {test_loss:.4f}  wall {wall:.0f}s  -> {out}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from torchshrink.checkpoint import load_checkpoint
    from torchshrink.data import load_fashion_mnist
    from torchshrink.models import fp32_bytes, parameter_count
    from torchshrink.train import evaluate, pick_device

    device = pick_device(args.device)
    if Path(args.checkpoint).is_file() and Path(args.checkpoint).name not in ("model.json", "model.safetensors"):
        from torchshrink.pack import load_compressed

        model = load_compressed(args.checkpoint).to(device)
        data = load_fashion_mnist(args.data_dir)
        acc, loss = evaluate(model, data.test_x, data.test_y, device=device)
        size = Path(args.checkpoint).stat().st_size
        print(f"{args.checkpoint}: test accuracy {100 * acc:.2f}%  loss {loss:.4f}  file {size:,} bytes")
        return 0
    ckpt = load_checkpoint(args.checkpoint, device=device)
    data = load_fashion_mnist(args.data_dir)
    acc, loss = evaluate(ckpt.model, data.test_x, data.test_y, device=device)
    _print_layers(ckpt.model)
    print(
        f"{ckpt.path}: test accuracy {100 * acc:.2f}%  loss {loss:.4f}  "
        f"params {parameter_count(ckpt.model):,}  fp32 {fp32_bytes(ckpt.model):,} bytes"
    )
    return 0


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
        return int(args.func(args))
    except TorchshrinkError as exc:
        print(f"torchshrink: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torchshrink: interrupted; nothing was written for the unfinished step", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
