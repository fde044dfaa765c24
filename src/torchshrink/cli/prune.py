"""The ``prune`` and ``sensitivity`` commands."""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchshrink.cli.args import (
    UsageError,
    add_data_dir,
    add_device,
    add_precision,
    fraction,
    layer_sparsities,
    non_negative_int,
    positive_float,
    positive_int,
    sparsity,
    sparsity_list,
)
from torchshrink.cli.outputs import CHECKPOINT, RECORD, add_force, check_output
from torchshrink.errors import ConfigError
from torchshrink.pruning.config import PruneConfig, StructuredConfig
from torchshrink.recipes.gradual import GRADUAL_TRAIN, GradualConfig
from torchshrink.recipes.prune import STRUCTURED_FINETUNE, IterativeConfig
from torchshrink.recipes.train import TrainConfig

__all__ = ["add_pruning_commands", "FINETUNE_DEFAULTS"]

# each method's retraining when --finetune-epochs / --lr are not given: the library's defaults (one-shot pruning
# retrains only when asked)
ITERATIVE = IterativeConfig(0.5).finetune
FINETUNE_DEFAULTS: dict[str, TrainConfig | None] = {
    "iterative": ITERATIVE, "gradual": GRADUAL_TRAIN, "structured": STRUCTURED_FINETUNE, "oneshot": None,
}  # fmt: skip


def add_pruning_commands(sub: Any) -> None:

    p = sub.add_parser("prune", help="prune a checkpoint", description="Prune a checkpoint and save the result.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder written by `torchshrink train`")
    p.add_argument(
        "--method",
        choices=("oneshot", "iterative", "gradual", "structured"),
        default="iterative",
        help="one step; several prune->retrain steps; gradual pruning during one training run (Zhu & Gupta); "
        "or whole-channel removal (default: %(default)s)",
    )
    p.add_argument(
        "--sparsity",
        type=sparsity,
        required=True,
        help="fraction of weights (structured: of conv channels) to remove, in [0, 1)",
    )
    p.add_argument(
        "--scope",
        choices=("global", "lamp", "layer"),
        default=PruneConfig.scope,
        help="one magnitude threshold for all layers; one threshold on scale-free LAMP scores; or the same "
        "sparsity per layer (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=positive_int, default=IterativeConfig.steps,
        help="iterative: prune->retrain rounds (default: %(default)s)",
    )
    p.add_argument(
        "--schedule",
        choices=("agp", "linear"),
        default=IterativeConfig.schedule,
        help="iterative: cubic (Zhu & Gupta) or equal steps (default: %(default)s)",
    )
    p.add_argument(
        "--finetune-epochs",
        type=non_negative_int,
        default=None,
        help=f"epochs of retraining after each step (default: {ITERATIVE.epochs} for iterative, 0 for oneshot, "
        f"{STRUCTURED_FINETUNE.epochs} structured); gradual: epochs of the whole run (default: {GRADUAL_TRAIN.epochs})",
    )
    p.add_argument(
        "--lr", type=positive_float, default=None,
        help=f"peak learning rate of the retraining (default: {ITERATIVE.lr}; structured: {STRUCTURED_FINETUNE.lr}; "
        f"gradual: {GRADUAL_TRAIN.lr})",
    )  # fmt: skip
    p.add_argument(
        "--distill", type=fraction, default=None,
        help=f"weight in [0, 1] of the dense model's soft predictions in the retraining loss (default: 0, off; "
        f"gradual: {GRADUAL_TRAIN.distill})",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=positive_float, default=TrainConfig.temperature,
        help="softmax temperature of the dense model's predictions with --distill (default: %(default)s)",
    )  # fmt: skip
    add_precision(p, "retraining")
    p.add_argument(
        "--multiple-of", type=positive_int, default=StructuredConfig.multiple_of, metavar="N",
        help="structured: keep a multiple of N channels in every layer, the nearest to --sparsity (16 suits "
        "AVX-512 CPUs, 8 AVX2; default: %(default)s, any count)",
    )  # fmt: skip
    p.add_argument(
        "--layer-sparsity", type=layer_sparsities, default=None, metavar="NAME=F,...",
        help="structured: the fraction of channels to remove from each named group, overriding --sparsity there (a "
        "group is named by its first conv, e.g. features.conv1=0.75); on a CPU the convs at full image size cost most",
    )  # fmt: skip
    p.add_argument(
        "--rewind",
        action="store_true",
        help="iterative: reset surviving weights to their values after epoch 1 (lottery ticket)",
    )
    add_device(p, "prune and retrain")
    p.add_argument("--out", metavar="DIR", help="output checkpoint folder, replaced whole once pruning is done "
                   "(default: CHECKPOINT-pruned-METHOD-S)")  # fmt: skip
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser(
        "sensitivity",
        help="accuracy vs sparsity for each layer alone",
        description="Prune each layer alone (no retraining) and report validation accuracy.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--sparsities", type=sparsity_list, default=None, help="comma-separated, e.g. 0.1,0.5,0.9")
    add_device(p, "evaluate")
    p.add_argument("--out", metavar="DIR", help="folder for sensitivity.json (default: the checkpoint folder)")
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_sensitivity)


def _cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from torchshrink._io import atomic_folder, atomic_write_json
    from torchshrink.checkpoint import load_checkpoint, load_rewind, save_checkpoint
    from torchshrink.cli.inputs import check_fits_fashion_mnist
    from torchshrink.cli.ranks import main_writes
    from torchshrink.data import load_fashion_mnist
    from torchshrink.measure import count_macs
    from torchshrink.models import parameter_count
    from torchshrink.pruning import make_permanent, sparsity_report, structured_prune_
    from torchshrink.recipes import gradual_prune, iterative_prune, oneshot_prune
    from torchshrink.recipes.train import evaluate, fit, pick_device

    default = FINETUNE_DEFAULTS[args.method]
    epochs = args.finetune_epochs if args.finetune_epochs is not None else (default.epochs if default else 0)
    _check_combinations(args, epochs)  # before any work, as argparse's own checks
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    rewind = load_rewind(args.checkpoint) if args.rewind else None
    out = Path(args.out) if args.out else Path(f"{ckpt.path}-pruned-{args.method}-{args.sparsity:g}")
    out = check_output(out, CHECKPOINT, force=args.force, inputs=[ckpt.path])
    check_fits_fashion_mnist(ckpt.model, ckpt.path)
    base = default or ITERATIVE
    lr = args.lr if args.lr is not None else base.lr
    distill = args.distill if args.distill is not None else (base.distill if default else 0.0)
    finetune = (replace(base, epochs=max(epochs, 1), lr=lr, distill=distill, temperature=args.temperature,
                        precision=args.precision) if epochs else None)  # fmt: skip
    teacher = copy.deepcopy(ckpt.model).eval() if finetune is not None and finetune.distill else None
    data = load_fashion_mnist(args.data_dir)
    model = ckpt.model
    torch.manual_seed(0)  # no --seed here: every random draw of the retraining repeats from run to run
    before_acc, _ = evaluate(model, data.test_batches(), device=device)
    record: dict[str, Any] = {
        "method": args.method, "sparsity": args.sparsity, "scope": args.scope, "finetune_epochs": epochs, "lr": lr,
        "distill": distill, "temperature": args.temperature,
        "source": str(ckpt.path), "test_accuracy_before": before_acc, "params_before": parameter_count(model),
    }  # fmt: skip
    start = time.perf_counter()
    if args.method == "structured":
        if not hasattr(model, "arguments"):
            raise ConfigError(
                f"model {ckpt.meta['model']!r}: structured pruning needs a model that can describe its shape"
            )
        dense = copy.deepcopy(model)
        config = StructuredConfig(args.sparsity, multiple_of=args.multiple_of, layer_sparsity=args.layer_sparsity or {})
        channels = structured_prune_(model, config)
        record["channels"] = {k: list(v) for k, v in channels.items()}
        record["multiple_of"] = args.multiple_of
        record["layer_sparsity"] = args.layer_sparsity or {}
        record["val_accuracy_pruned"], _ = evaluate(model, data.val_batches(), device=device)
        if finetune is not None:
            fit(model, data, finetune, teacher=teacher)
        record.update(macs_before=count_macs(dense), macs_after=count_macs(model), params_after=parameter_count(model))
    elif args.method == "oneshot":
        result = oneshot_prune(model, data, PruneConfig(args.sparsity, args.scope), finetune=finetune, teacher=teacher)
        record["steps"] = [s.to_dict() for s in result.steps]
    elif args.method == "gradual":
        assert finetune is not None
        config = GradualConfig(args.sparsity, finetune, scope=args.scope)
        result = gradual_prune(model, data, config, teacher=teacher)
        record["steps"] = [s.to_dict() for s in result.steps]
    else:
        assert finetune is not None
        config = IterativeConfig(args.sparsity, args.steps, finetune, args.schedule, args.scope)
        result = iterative_prune(model, data, config, rewind_state=rewind, teacher=teacher)
        record.update(steps=[s.to_dict() for s in result.steps], schedule=args.schedule, rewind=args.rewind)
    make_permanent(model)
    record["seconds"] = time.perf_counter() - start
    record["test_accuracy"], _ = evaluate(model, data.test_batches(), device=device)
    record["layers"] = [r.to_dict() for r in sparsity_report(model)]
    params = sum(r["params"] for r in record["layers"])
    record["sparsity_achieved"] = 1 - sum(r["nonzeros"] for r in record["layers"]) / params
    model_args = model.arguments() if hasattr(model, "arguments") else ckpt.meta.get("model_args", {})
    if not main_writes():
        return 0
    with atomic_folder(out) as folder:  # record and weights appear together, or not at all
        atomic_write_json(folder / "pruning.json", record)
        save_checkpoint(
            folder, model, ckpt.meta["model"], model_args, metrics={"test_accuracy": record["test_accuracy"]}
        )
    print(
        f"{args.method} pruning: sparsity {100 * record['sparsity_achieved']:.1f}%  test accuracy "
        f"{100 * before_acc:.2f}% -> {100 * record['test_accuracy']:.2f}%  {record['seconds']:.0f}s  -> {out}"
    )
    return 0


def _check_combinations(args: argparse.Namespace, epochs: int) -> None:
    """Refuse options that do not go together (a usage error, exit code 2)."""
    if args.rewind and args.method != "iterative":
        raise UsageError("--rewind applies to --method iterative only")
    if args.method in ("iterative", "gradual") and epochs == 0:
        raise UsageError(f"--finetune-epochs 0: {args.method} pruning trains while pruning; use --method oneshot")
    if args.distill and not epochs:
        raise UsageError("--distill needs retraining: iterative, gradual, or oneshot / structured with "
                         "--finetune-epochs")  # fmt: skip
    if args.multiple_of > 1 and args.method != "structured":
        raise UsageError("--multiple-of applies to --method structured (whole channels) only")
    if args.layer_sparsity and args.method != "structured":
        raise UsageError("--layer-sparsity applies to --method structured (whole channels) only")


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from torchshrink._io import atomic_write_json
    from torchshrink.checkpoint import load_checkpoint
    from torchshrink.cli.inputs import check_fits_fashion_mnist
    from torchshrink.cli.ranks import main_writes
    from torchshrink.data import load_fashion_mnist
    from torchshrink.recipes.sensitivity import DEFAULT_SPARSITIES, layer_sensitivity, sensitivity_table
    from torchshrink.recipes.train import pick_device

    if args.sparsities is not None and not args.sparsities:
        raise UsageError("--sparsities: give at least one value, e.g. 0.5,0.9")
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device=device)
    out = Path(args.out) if args.out else ckpt.path
    target = check_output(out / "sensitivity.json", RECORD, force=args.force, option="--out")
    check_fits_fashion_mnist(ckpt.model, ckpt.path)
    data = load_fashion_mnist(args.data_dir)
    curves = layer_sensitivity(ckpt.model, data, args.sparsities or DEFAULT_SPARSITIES)
    print("validation accuracy (%) with one layer pruned, no retraining")
    print(sensitivity_table(curves))
    if not main_writes():
        return 0
    atomic_write_json(target, {n: {str(s): a for s, a in c.items()} for n, c in curves.items()})
    print(f"-> {target}")
    return 0
