"""The ``compress`` and ``inspect`` commands (``eval`` of a compressed file lives with ``eval``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchshrink.cli.args import (
    UsageError,
    add_data_dir,
    add_device,
    add_full_range,
    add_precision,
    bits,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    sparsity,
)
from torchshrink.cli.outputs import COMPRESSED, RECORD, add_force, check_output, file_sha256, record_mismatch
from torchshrink.quant import QuantConfig
from torchshrink.recipes.compress import CompressConfig
from torchshrink.recipes.gradual import GRADUAL_TRAIN, GradualConfig
from torchshrink.recipes.prune import IterativeConfig
from torchshrink.recipes.quantize import FINETUNE
from torchshrink.recipes.train import TrainConfig

ITERATIVE = IterativeConfig(0.5)  # the library's step-by-step recipe: the defaults of --prune-method iterative

__all__ = ["add_compress_commands"]


def add_compress_commands(sub: Any) -> None:
    p = sub.add_parser("compress", help="prune + quantize a checkpoint into a small .tshrink file",
                       description="Step-by-step pruning, then QAT (or codebook weight sharing) with the masks "
                                   "kept; writes the file, loads it back and evaluates it.")  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--sparsity", type=sparsity, required=True, help="fraction of weights to prune, in [0, 1)")
    p.add_argument("--bits", type=bits, required=True, help="weight bits, 2..8")
    p.add_argument("--act-bits", type=bits, help="activation bits, 2..8 (default: --bits)")
    p.add_argument(
        "--prune-method", choices=("iterative", "gradual"), default="iterative",
        help="prune -> retrain rounds, or pruning during one training run (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=ITERATIVE.steps,
                   help="iterative: pruning steps (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--prune-epochs", type=positive_int, default=None,
        help=f"iterative: retraining epochs per step (default: {ITERATIVE.finetune.epochs}); gradual: epochs of the run "
        f"(default: {GRADUAL_TRAIN.epochs})",
    )  # fmt: skip
    p.add_argument(
        "--distill", type=fraction, default=0.0,
        help="weight in [0, 1] of the dense model's soft predictions in every retraining loss (default: 0, off)",
    )  # fmt: skip
    p.add_argument(
        "--temperature", type=positive_float, default=TrainConfig.temperature,
        help="softmax temperature of those predictions (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--budget", type=positive_int, metavar="BYTES",
        help="choose a weight width per layer (2..--bits; uniform codes, or codebooks with --codebook) so the file "
             "fits BYTES (mixed precision)",
    )  # fmt: skip
    p.add_argument(
        "--act-budget", type=positive_int, metavar="BYTES",
        help="uniform only: choose an input width per layer (2..--act-bits) so one image's quantized layer inputs "
             "take at most BYTES (the first layer's stays 8-bit)",
    )  # fmt: skip
    p.add_argument(
        "--qat-epochs",
        type=non_negative_int,
        default=FINETUNE.epochs,
        help="QAT epochs, 0 for PTQ (default: %(default)s)",
    )
    p.add_argument("--codebook", action="store_true", help="k-means weight sharing instead of uniform levels")
    p.add_argument("--keep-first-last-8bit", action="store_true", help="first and last layers at 8 bits")
    add_full_range(p)
    add_precision(p, "pruning and fine-tuning")
    p.add_argument(
        "--compression",
        choices=("auto", "none", "zlib", "lzma"),
        default="auto",
        help="entropy stage over the payload (default: %(default)s, the smallest)",
    )
    p.add_argument(
        "--train-subset", type=positive_int, metavar="N", help="fine-tune on the first N training images only"
    )
    add_device(p, "prune and fine-tune")
    p.add_argument("--out", metavar="FILE", help="output file, and FILE.json beside it (default: "
                   "CHECKPOINT-sS-wB.tshrink); an existing file is replaced only if it is a .tshrink file")  # fmt: skip
    add_force(p)
    add_data_dir(p)
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser(
        "inspect",
        help="show what a .tshrink file holds",
        description="Per tensor: shape, sparsity, bits, encoding, bytes and share of the file.",
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_cmd_inspect)


def _cmd_compress(args: argparse.Namespace) -> int:
    import torch

    from torchshrink._io import atomic_file, atomic_write_json
    from torchshrink.checkpoint import load_checkpoint
    from torchshrink.cli.inputs import CHECK_IMAGES, check_fits_fashion_mnist, check_quantizable
    from torchshrink.cli.ranks import main_writes
    from torchshrink.data import load_fashion_mnist
    from torchshrink.recipes.compress import compress_model, smallest_file_bytes, write_and_verify
    from torchshrink.recipes.train import evaluate, pick_device

    device = pick_device(args.device)
    if args.act_budget is not None and args.codebook:
        raise UsageError("--act-budget chooses the input widths of uniform codes: drop --codebook")
    if args.budget is not None and args.keep_first_last_8bit and not args.codebook:
        raise UsageError("--budget chooses every layer's weight width: drop --keep-first-last-8bit")
    if args.full_range and args.codebook:
        raise UsageError("--full-range sets the range of uniform weight codes; codebooks have none: drop one")
    ckpt = load_checkpoint(args.checkpoint)
    cfg = _config(args)
    full = "-full" if args.full_range else ""  # a full-range file must not replace the narrow one's
    out = Path(args.out) if args.out else Path(f"{ckpt.path}-s{args.sparsity:g}-w{args.bits}{full}.tshrink")
    out = check_output(out, COMPRESSED, force=args.force, inputs=[ckpt.path])
    summary = check_output(out.with_name(out.name + ".json"), RECORD, force=args.force, option="--out (its record)")
    check_fits_fashion_mnist(ckpt.model, ckpt.path)
    model_args = ckpt.meta.get("model_args", {})
    if args.budget is not None:  # a budget no file of this model can meet: refused before any pruning
        floor = smallest_file_bytes(ckpt.model, cfg, ckpt.meta["model"], model_args, args.compression)
        if args.budget < floor:
            floats = ", and the float values --compression none stores as they are" if args.compression == "none" else ""
            raise UsageError(f"--budget {args.budget:,}: no file of {ckpt.path}'s model can be that small: whatever "
                             f"the weights, it takes at least {floor:,} bytes (the header naming every tensor{floats}); "
                             f"give --budget {floor} or more")  # fmt: skip
    data = load_fashion_mnist(args.data_dir)
    if args.train_subset:
        data = data.subset(train=args.train_subset)
    check_quantizable(ckpt.model, ckpt.path, data.calibration_batches(CHECK_IMAGES)[0])
    base_acc, _ = evaluate(ckpt.model, data.test_batches())
    torch.manual_seed(0)  # no --seed here: every random draw of the fine-tuning repeats from run to run
    done = compress_model(ckpt.model.to(device), data, cfg, model_name=ckpt.meta["model"], model_args=model_args)
    model, record = done.model, done.record
    if not main_writes():
        return 0
    # written and verified under a temporary name: a file that fails its own check never appears at --out
    wrote_record = False
    try:
        with atomic_file(out) as tmp:
            result = write_and_verify(
                model, ckpt.model, data.test_batches(), tmp, ckpt.meta["model"], model_args, args.compression
            )
            result["file"] = str(out)
            result["file_sha256"] = file_sha256(tmp)  # a record left beside another file says so (inspect, eval)
            record |= result | {"baseline_test_accuracy": base_acc, "source": str(ckpt.path)}
            atomic_write_json(summary, record)  # the record first: a .tshrink file at --out always has its record
            wrote_record = True
    except BaseException:
        if wrote_record:  # the file itself could not be put in place: leave no record of it either
            summary.unlink(missing_ok=True)
        raise
    print(
        f"{out}: {result['file_bytes']:,} bytes ({result['ratio']:.1f}x smaller than fp32 {result['fp32_bytes']:,}), "
        f"sparsity {100 * result['sparsity']:.1f}%, test accuracy {100 * base_acc:.2f}% -> "
        f"{100 * result['test_accuracy']:.2f}% (loaded back from the file)"
    )
    return 0


def _config(args: argparse.Namespace) -> CompressConfig:
    """The :class:`CompressConfig` the arguments ask for: the library's recipes, changed where an option says."""
    common = {"distill": args.distill, "temperature": args.temperature, "precision": args.precision}
    prune: IterativeConfig | GradualConfig | None = None
    if args.sparsity > 0 and args.prune_method == "gradual":
        train = replace(GRADUAL_TRAIN, **common, **({"epochs": args.prune_epochs} if args.prune_epochs else {}))
        prune = GradualConfig(args.sparsity, train)
    elif args.sparsity > 0:
        epochs = args.prune_epochs or ITERATIVE.finetune.epochs
        prune = replace(ITERATIVE, sparsity=args.sparsity, steps=args.steps,
                        finetune=replace(ITERATIVE.finetune, epochs=epochs, **common))  # fmt: skip
    q = QuantConfig(bits=args.bits, act_bits=args.act_bits, keep_first_last_8bit=args.keep_first_last_8bit,
                    full_range_weights=args.full_range)  # fmt: skip
    finetune = replace(FINETUNE, epochs=args.qat_epochs, **common) if args.qat_epochs else None
    return CompressConfig(prune=prune, quant=q, codebook=args.codebook, finetune=finetune, budget_bytes=args.budget,
                          act_budget_bytes=args.act_budget)  # fmt: skip


def _cmd_inspect(args: argparse.Namespace) -> int:
    import math

    from torchshrink.pack import inspect_compressed

    header, rows = inspect_compressed(args.file)
    if (note := record_mismatch(args.file)) is not None:
        print(note, file=sys.stderr)
    aliases = header.get("aliases", {})  # tied name -> the stored tensor it shares (checked by the reader)
    size = Path(args.file).stat().st_size
    raw = max(header["raw_payload_bytes"], 1)
    fp32 = 0
    width = max((len(name) for name in [*(r.name for r in rows), *aliases]), default=6)
    print(f"{'tensor':<{width}} {'shape':<16} {'encoding':<9} {'storage':<7} {'coding (codes/gaps)':<19} {'bits':>4} "
          f"{'sparsity':>8} {'bytes':>8} {'share':>6}")  # fmt: skip
    for r in rows:
        fp32 += 4 * math.prod(r.shape)
        print(f"{r.name:<{width}} {str(r.shape):<16} {r.encoding:<9} {r.storage:<7} {r.coding:<19} {r.bits:>4} "
              f"{100 * r.sparsity:>7.1f}% {r.bytes:>8,} {100 * r.bytes / raw:>5.1f}%")  # fmt: skip
    for alias, target in aliases.items():
        print(f"{alias:<{width}} tied to {target} (stored once, under that name)")
    for join in header.get("joins", []):  # checked by the reader; "at" is for people and shown cut short
        widths = "/".join(str(q["bits"]) for q in join["operands"])
        print(f"join {_cut(str(join.get('at', '?')))}: operands quantized at {widths} bits")
    print(f"model {_model_text(header.get('model'))}; payload {header['raw_payload_bytes']:,} bytes, stored with "
          f"{header['compression']} as {header['payload_bytes']:,}; file {size:,} bytes; fp32 of these tensors "
          f"{fp32:,} bytes ({fp32 / size:.1f}x)")  # fmt: skip
    return 0


def _model_text(info: Any) -> str:
    """The header's ``model`` for a person: a registered name and its arguments, or the class it was saved from.

    The reader leaves this field as written, so anything unexpected is shown, cut short, not trusted.
    """
    if isinstance(info, dict) and info.get("name") is None and isinstance(info.get("class"), str):
        return f"class {_cut(info['class'])} (not registered: eval it with --model-factory MODULE:CALLABLE)"
    if isinstance(info, dict) and isinstance(info.get("name"), str):
        return f"{_cut(info['name'])} {_cut(repr(info.get('args', {})))}"
    return _cut(repr(info))


def _cut(text: str, limit: int = 120) -> str:
    text = text.encode("unicode_escape").decode("ascii")  # no control characters from a file on the terminal
    return text if len(text) <= limit else text[:limit] + "..."
