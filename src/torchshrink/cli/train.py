"""The ``train`` and ``eval`` commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchshrink.cli.args import (
    add_data_dir,
    add_device,
    add_precision,
    ema_decay,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from torchshrink.cli.outputs import CHECKPOINT, add_force, check_output, record_mismatch
from torchshrink.errors import ConfigError, TorchshrinkError, show_value

if TYPE_CHECKING:
    from torch import nn

__all__ = ["add_train_commands"]


def add_train_commands(sub: Any) -> None:
    from torchshrink.models import MODELS
    from torchshrink.recipes.train import TrainConfig
    from torchshrink.study.config import BaselineSection

    defaults = TrainConfig()
    baseline = BaselineSection()  # the study's baseline recipe: what `train` runs by default
    default_batch = baseline.batch_size

    p = sub.add_parser(
        "train", help="train the baseline CNN on Fashion-MNIST", description="Train a model and save a checkpoint."
    )
    p.add_argument("--model", default="cnn", choices=tuple(MODELS), help="registered model name (default: %(default)s)")
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
        type=seed_int,
        default=defaults.seed,
        help="random seed for init, shuffling, augmentation, 0 to 2**63-1; the same seed and threads give the "
        "same weights (default: %(default)s)",
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
        "--ema", type=ema_decay, default=baseline.ema, metavar="DECAY",
        help="keep a moving average of the weights with this decay per step, in [0, 1) (0: the last weights; "
        "default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--erase", type=fraction, default=baseline.erase, metavar="SHARE",
        help="share of training images with a random rectangle erased, in [0, 1] (default: %(default)s)",
    )  # fmt: skip
    add_precision(p, "forward passes")
    p.add_argument(
        "--crop-padding", type=non_negative_int, default=baseline.crop_padding, metavar="PIXELS",
        help="random crop after padding by this many pixels (0: horizontal flip only; default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--train-subset",
        type=positive_int,
        metavar="N",
        help="train on the first N training images only (quick checks)",
    )
    add_device(p, "train")
    p.add_argument(
        "--out", default="runs/baseline", metavar="DIR",
        help="checkpoint folder to write, replaced whole once training is done (default: %(default)s)",
    )  # fmt: skip
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or a .tshrink file on the test set",
        description="Print test accuracy, loss, parameters and fp32 size (of a file: its size in bytes).",
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint folder written by `torchshrink train`, or a .tshrink file",
    )
    add_device(p, "evaluate")
    p.add_argument(
        "--model-factory",
        type=factory_spec,
        metavar="MODULE:CALLABLE",
        help="for a .tshrink file saved from a model that is not registered: your module (on PYTHONPATH) and a "
        "class or function in it that builds that model with no arguments, e.g. mypkg.nets:MyNet; the file is "
        "loaded into the instance it returns. The model must take Fashion-MNIST images (N, 1, 28, 28) and "
        "return 10 class scores for the test accuracy to mean anything",
    )
    add_data_dir(p)
    p.set_defaults(func=_cmd_eval)


def factory_spec(text: str) -> tuple[str, str]:
    """The argparse type of ``--model-factory``: ``"pkg.mod:Name"`` -> ``("pkg.mod", "Name")``.

    Only the form is checked here (a bad one is a usage error, exit code 2); importing waits for the command.
    The attribute may be dotted (``pkg.mod:Builders.small``).
    """
    module, colon, attr = text.partition(":")
    if not colon or not all(part.isidentifier() for part in (*module.split("."), *attr.split("."))):
        raise argparse.ArgumentTypeError(f"{text!r} is not MODULE:CALLABLE, e.g. mypkg.nets:MyNet")
    return module, attr


def _one_line(exc: BaseException) -> str:
    """An exception from the user's code as ``Type: first line`` (the CLI reports errors in one line)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def build_from_factory(spec: tuple[str, str]) -> nn.Module:
    """Import the user's module named on the command line and call the factory in it with no arguments.

    Only ever called with ``--model-factory``: what gets imported is what the user typed, never a name read
    from a file (a file's ``model.class`` is informational only).

    Raises:
        ConfigError: the module cannot be imported, has no such attribute, the attribute is not callable or
            needs arguments, or the call does not return an ``nn.Module``; the message names which and the fix.
    """
    import importlib
    import inspect

    from torch import nn

    module_name, attr = spec
    option = f"--model-factory {module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(f"{option}: no module named {exc.name!r}; put the folder that holds it on "
                              "PYTHONPATH (e.g. PYTHONPATH=. torchshrink eval ...) or install it") from None  # fmt: skip
        raise ConfigError(f"{option}: importing {module_name!r} failed: {_one_line(exc)}") from None
    except Exception as exc:  # the user's module runs at import: any error of theirs is one line here
        raise ConfigError(f"{option}: importing {module_name!r} raised {_one_line(exc)}") from None
    factory: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(factory, part):
            owner = ".".join([module_name, *attr.split(".")[:i]])
            raise ConfigError(f"{option}: {owner} has no attribute {part!r}; name a class or function defined "
                              f"in {module_name} ({module.__file__})")  # fmt: skip
        factory = getattr(factory, part)
    if not callable(factory):
        raise ConfigError(f"{option}: {attr} is a {type(factory).__name__}, not callable; name a class or "
                          "a function that returns the model")  # fmt: skip
    try:
        inspect.signature(factory).bind()
    except TypeError as exc:  # checked before calling, so a TypeError inside the user's code is not mistaken for it
        raise ConfigError(f"{option}: {attr}() cannot be called without arguments ({exc}); name a function "
                          "that takes none, e.g. def build(): return MyNet(width=32)") from None  # fmt: skip
    except ValueError:
        pass  # no signature to check (some builtins): the call below says what is wrong
    try:
        model = factory()
    except Exception as exc:
        raise ConfigError(f"{option}: {attr}() raised {_one_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{option}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module; it "
                          "must return a fresh instance of the model the file was saved from")  # fmt: skip
    return model


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
    import torch

    from torchshrink._io import atomic_folder
    from torchshrink.checkpoint import save_checkpoint
    from torchshrink.cli.inputs import check_fits_fashion_mnist
    from torchshrink.cli.ranks import main_writes, ranks_note
    from torchshrink.data import load_fashion_mnist
    from torchshrink.models import build_model
    from torchshrink.recipes.train import TrainConfig, evaluate, fit, pick_device

    out = check_output(args.out, CHECKPOINT, force=args.force)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, optimizer=args.optimizer,
                      schedule=args.schedule, ema=args.ema, precision=args.precision)  # fmt: skip
    device = pick_device(args.device)
    data = load_fashion_mnist(args.data_dir)
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    torch.manual_seed(args.seed)  # the weight initialisation; fit seeds the shuffles and augmentation itself
    try:
        model = build_model(args.model)
    except KeyError as exc:
        raise TorchshrinkError(str(exc.args[0])) from None
    check_fits_fashion_mnist(model, f"--model {args.model}")  # eval mode, blank images: draws no random numbers
    _print_layers(model)
    print(f"training {args.model} on {len(data.train_y):,} images ({data.source}), device {device}{ranks_note()}")
    start = time.perf_counter()
    rewind: dict = {}

    def keep_rewind_point(epoch: int, trained: object) -> None:
        if epoch == 1:  # weights after one epoch: the rewind point for lottery-ticket pruning
            rewind.update({k: v.detach().clone() for k, v in trained.state_dict().items()})  # type: ignore[attr-defined]

    task = data.task(batch_size=args.batch_size, crop_padding=args.crop_padding, erase=args.erase)
    history = fit(model.to(device), task, cfg, after_epoch=keep_rewind_point)
    wall = time.perf_counter() - start
    test_acc, test_loss = evaluate(model, data.test_batches(), device=device)
    if not main_writes():
        return 0
    with atomic_folder(out) as folder:  # a kill leaves the previous checkpoint, never a mix of two
        save_checkpoint(
            folder, model, args.model, model.arguments() if hasattr(model, "arguments") else {}, rewind=rewind,
            train_config={**cfg.to_dict(), "batch_size": args.batch_size, "crop_padding": args.crop_padding,
                          "erase": args.erase},
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
    from torchshrink.cli.inputs import check_fits_fashion_mnist
    from torchshrink.data import load_fashion_mnist
    from torchshrink.models import fp32_bytes, parameter_count
    from torchshrink.recipes.train import evaluate, pick_device

    device = pick_device(args.device)
    if Path(args.checkpoint).is_file() and Path(args.checkpoint).name not in ("model.json", "model.safetensors"):
        return _eval_file(args, device)
    if args.model_factory is not None:
        raise ConfigError(f"--model-factory applies to a .tshrink file; {args.checkpoint} is a checkpoint, whose "
                          "model.json names its architecture: drop the option")  # fmt: skip
    ckpt = load_checkpoint(args.checkpoint, device=device)
    check_fits_fashion_mnist(ckpt.model, ckpt.path)
    data = load_fashion_mnist(args.data_dir)
    acc, loss = evaluate(ckpt.model, data.test_batches(), device=device)
    _print_layers(ckpt.model)
    print(
        f"{ckpt.path}: test accuracy {100 * acc:.2f}%  loss {loss:.4f}  "
        f"params {parameter_count(ckpt.model):,}  fp32 {fp32_bytes(ckpt.model):,} bytes"
    )
    return 0


def _eval_file(args: argparse.Namespace, device: Any) -> int:
    """``eval`` of a ``.tshrink`` file: into the registered model it names, or what ``--model-factory`` builds."""
    from torchshrink.data import load_fashion_mnist
    from torchshrink.models import MODELS
    from torchshrink.pack import load_compressed, read_header
    from torchshrink.recipes.train import evaluate

    path = args.checkpoint
    instance = None
    if args.model_factory is not None:
        instance = build_from_factory(args.model_factory)
    else:
        info = read_header(path).get("model")
        name = info.get("name") if isinstance(info, dict) else None
        if isinstance(info, dict) and (name is None or (isinstance(name, str) and name not in MODELS)):
            saved = info.get("class") if name is None else name
            shown = show_value(saved, 120)  # escaped and cut: a file may hold anything, newlines and escapes too
            raise TorchshrinkError(f"{path}: saved from a model that is not registered ({shown}); pass "
                                   "--model-factory MODULE:CALLABLE naming your code that builds it, e.g. "
                                   "mypkg.nets:MyNet")  # fmt: skip
    model = load_compressed(path, model=instance).to(device)
    if instance is None:  # a model of the user's own is checked on the real images below, with its own message
        from torchshrink.cli.inputs import check_fits_fashion_mnist

        check_fits_fashion_mnist(model, path)
    data = load_fashion_mnist(args.data_dir)
    try:
        acc, loss = evaluate(model, data.test_batches(), device=device)
    except (RuntimeError, ValueError, IndexError) as exc:
        if instance is None:
            raise
        # a user's model that does not take (N, 1, 28, 28) images or return 10 scores
        raise ConfigError(f"{path}: the model from --model-factory fails on Fashion-MNIST test images "
                          f"(N, 1, 28, 28) -> 10 class scores: {_one_line(exc)}") from None  # fmt: skip
    size = Path(path).stat().st_size
    print(f"{path}: test accuracy {100 * acc:.2f}%  loss {loss:.4f}  file {size:,} bytes")
    if (note := record_mismatch(path)) is not None:
        print(note, file=sys.stderr)
    return 0
