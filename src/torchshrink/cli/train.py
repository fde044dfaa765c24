"""The ``train`` and ``eval`` commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from torchshrink.cli.args import add_data_dir, non_negative_int, positive_float, positive_int
from torchshrink.errors import TorchshrinkError

__all__ = ["add_train_commands"]


def add_train_commands(sub: Any) -> None:
    from torchshrink.recipes.train import TrainConfig

    defaults = TrainConfig()
    default_batch = 256

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
    p.add_argument("--lr", type=positive_float, default=defaults.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=positive_int, default=default_batch, help="images per step (default: %(default)s)"
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
    add_data_dir(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on the test set",
        description="Print test accuracy, loss, parameters and fp32 size.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder written by `torchshrink train`")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where to evaluate (default: cuda when present, else cpu)")
    add_data_dir(p)
    p.set_defaults(func=_cmd_eval)



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
    from torchshrink.recipes.train import TrainConfig, evaluate, fit, pick_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TorchshrinkError(f"--out {out}: exists and is not a folder; choose another path")
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, optimizer=args.optimizer,
                      schedule=args.schedule)  # fmt: skip
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

    history = fit(model, data.task(batch_size=args.batch_size), cfg, device, after_epoch=keep_rewind_point)
    wall = time.perf_counter() - start
    test_acc, test_loss = evaluate(model, data.test_batches(), device=device)
    save_checkpoint(
        out, model, args.model, model.arguments() if hasattr(model, "arguments") else {}, rewind=rewind,
        train_config={**cfg.to_dict(), "batch_size": args.batch_size},
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
    from torchshrink.recipes.train import evaluate, pick_device

    device = pick_device(args.device)
    if Path(args.checkpoint).is_file() and Path(args.checkpoint).name not in ("model.json", "model.safetensors"):
        from torchshrink.pack import load_compressed

        model = load_compressed(args.checkpoint).to(device)
        data = load_fashion_mnist(args.data_dir)
        acc, loss = evaluate(model, data.test_batches(), device=device)
        size = Path(args.checkpoint).stat().st_size
        print(f"{args.checkpoint}: test accuracy {100 * acc:.2f}%  loss {loss:.4f}  file {size:,} bytes")
        return 0
    ckpt = load_checkpoint(args.checkpoint, device=device)
    data = load_fashion_mnist(args.data_dir)
    acc, loss = evaluate(ckpt.model, data.test_batches(), device=device)
    _print_layers(ckpt.model)
    print(
        f"{ckpt.path}: test accuracy {100 * acc:.2f}%  loss {loss:.4f}  "
        f"params {parameter_count(ckpt.model):,}  fp32 {fp32_bytes(ckpt.model):,} bytes"
    )
    return 0
