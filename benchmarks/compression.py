"""Compression benchmark: real files on disk, loaded back and evaluated on the full test set.

* the student project's point: 40% pruned + 8 bits (it reported 90.95% at 4x);
* a frontier of file size vs accuracy over starting sparsity (prune -> retrain rounds, or gradual distilled
  pruning), bits, uniform | codebook | mixed-precision codebook under a size budget; every point written
  three ways: codes bit-packed ("packed"), Huffman-coded streams ("huffman"), Huffman + the best of
  zlib/lzma over the payload ("huffman+auto"). Ratio = fp32 bytes of all baseline parameters and buffers /
  file bytes.

Starting points: ``runs/baseline-pruned-iterative-0.4`` (pruned here when missing: 2 steps x 1 epoch), and the
gradual distilled models written by ``pruning_recipes.py --save`` (``runs/pruned-0.9-gradual``,
``runs/pruned-0.93-gd``, ``runs/pruned-0.95-gd``, ``runs/pruned-0.96-gd``, ``runs/pruned-0.97-gd``).

    python benchmarks/compression.py [--checkpoint runs/baseline] [--distill 0.7]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from _common import write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.errors import ConfigError
from torchshrink.models import fp32_bytes
from torchshrink.pruning import make_permanent
from torchshrink.quant import QuantConfig
from torchshrink.recipes import IterativeConfig, iterative_prune
from torchshrink.recipes.compress import CompressConfig, compress_model, write_and_verify
from torchshrink.recipes.train import TrainConfig, evaluate

# (label, start, config): start names a pruned starting point (see `starts` below)
POINTS = [
    ("40% + W8A8 PTQ (the student point)", "iterative-0.4", dict(sparsity=0.4, bits=8, act_bits=8, qat_epochs=0)),
    ("40% + 4-bit codebook", "iterative-0.4", dict(sparsity=0.4, bits=4, act_bits=8, codebook=True)),
    ("90% gradual + W4A4 QAT", "gradual-0.9", dict(sparsity=0.9, bits=4, act_bits=4, qat_epochs=2)),
    ("90% gradual + 4-bit codebook", "gradual-0.9", dict(sparsity=0.9, bits=4, act_bits=8, codebook=True)),
    ("90% gradual + 3-bit codebook", "gradual-0.9", dict(sparsity=0.9, bits=3, act_bits=8, codebook=True)),
    ("90% gradual + mixed 2-5-bit codebook, 31 KB budget", "gradual-0.9",
     dict(sparsity=0.9, bits=5, act_bits=8, codebook=True, budget_bytes=31_000)),
    ("92% gradual + mixed 2-5-bit codebook, 31 KB budget", "gradual-0.92",
     dict(sparsity=0.92, bits=5, act_bits=8, codebook=True, budget_bytes=31_000)),
    ("93% gradual + 4-bit codebook", "gradual-0.93", dict(sparsity=0.93, bits=4, act_bits=8, codebook=True)),
    ("93% gradual + mixed 2-5-bit codebook, 31 KB budget", "gradual-0.93",
     dict(sparsity=0.93, bits=5, act_bits=8, codebook=True, budget_bytes=31_000)),
    ("95% gradual + 4-bit codebook", "gradual-0.95", dict(sparsity=0.95, bits=4, act_bits=8, codebook=True)),
    ("95% gradual + 3-bit codebook", "gradual-0.95", dict(sparsity=0.95, bits=3, act_bits=8, codebook=True)),
    ("95% gradual + 2-bit codebook", "gradual-0.95", dict(sparsity=0.95, bits=2, act_bits=8, codebook=True)),
    ("96% gradual + 4-bit codebook", "gradual-0.96", dict(sparsity=0.96, bits=4, act_bits=8, codebook=True)),
    ("96% gradual + mixed 2-5-bit codebook, 31 KB budget", "gradual-0.96",
     dict(sparsity=0.96, bits=5, act_bits=8, codebook=True, budget_bytes=31_000)),
    ("97% gradual + 4-bit codebook", "gradual-0.97", dict(sparsity=0.97, bits=4, act_bits=8, codebook=True)),
    ("97% gradual + mixed 2-5-bit codebook, 31 KB budget", "gradual-0.97",
     dict(sparsity=0.97, bits=5, act_bits=8, codebook=True, budget_bytes=31_000)),
]  # fmt: skip
WRITES = [("packed", "none", False), ("huffman", "none", True), ("huffman+auto", "auto", True)]


def point_config(
    args: argparse.Namespace,
    sparsity: float,
    bits: int,
    act_bits: int,
    codebook: bool = False,
    qat_epochs: int | None = None,
    budget_bytes: int | None = None,
) -> CompressConfig:
    """The CompressConfig of one point: fine-tuned for ``qat_epochs`` (default ``--epochs``; 0: post-training
    only) at a peak rate of 0.01, distilled with ``--distill`` at temperature 4.0, in ``--precision``.

    The pruned model is given to ``compress_model``, so ``prune`` only records the sparsity (with the
    step-by-step settings the points have always recorded: 4 steps of 1 epoch at 0.02)."""
    epochs = args.epochs if qat_epochs is None else qat_epochs

    def train(epochs: int, lr: float) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=lr, distill=args.distill, temperature=4.0, precision=args.precision)

    return CompressConfig(prune=IterativeConfig(sparsity, steps=4, finetune=train(1, 0.02)),
                          quant=QuantConfig(bits=bits, act_bits=act_bits), codebook=codebook,
                          finetune=train(epochs, 0.01) if epochs else None, budget_bytes=budget_bytes)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/baseline")
    parser.add_argument("--gradual-0.9", dest="gradual_09", default="runs/pruned-0.9-gradual")
    parser.add_argument("--gradual-0.92", dest="gradual_092", default="runs/pruned-0.92-gd")
    parser.add_argument("--gradual-0.93", dest="gradual_093", default="runs/pruned-0.93-gd")
    parser.add_argument("--gradual-0.95", dest="gradual_095", default="runs/pruned-0.95-gd")
    parser.add_argument("--gradual-0.96", dest="gradual_096", default="runs/pruned-0.96-gd")
    parser.add_argument("--gradual-0.97", dest="gradual_097", default="runs/pruned-0.97-gd")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="of every fine-tuning")
    parser.add_argument("--epochs", type=int, default=1, help="QAT / codebook fine-tuning epochs (unless a point says)")
    parser.add_argument("--distill", type=float, default=0.7, help="distillation weight of every fine-tuning")
    parser.add_argument("--only", help="comma-separated substrings: run the matching points only")
    parser.add_argument("--out", default="runs/compressed")
    parser.add_argument("--budget", help="bytes for the budget points, or NNx: fp32 bytes / NN (default: 31,000)")
    parser.add_argument("--name", default="compression", help="results file: benchmarks/results/NAME.json")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    ckpt = load_checkpoint(args.checkpoint)
    base, name, margs = ckpt.model, ckpt.meta["model"], ckpt.meta.get("model_args", {})
    base_acc, _ = evaluate(base, data.test_batches())
    print(f"baseline test accuracy {100 * base_acc:.2f}%")

    def start(key: str):
        if key == "iterative-0.4":
            path = Path(f"{args.checkpoint}-pruned-iterative-0.4")
            if not path.is_dir():
                model = copy.deepcopy(base)
                iterative_prune(model, data, IterativeConfig(0.4, steps=2, finetune=TrainConfig(epochs=1, lr=0.02)),
                                log=None)  # fmt: skip
                from torchshrink.checkpoint import save_checkpoint

                save_checkpoint(path, make_permanent(model), name, margs)
            return load_checkpoint(path).model, str(path)
        path = Path(
            {"gradual-0.9": args.gradual_09, "gradual-0.92": args.gradual_092, "gradual-0.93": args.gradual_093,
             "gradual-0.95": args.gradual_095, "gradual-0.96": args.gradual_096, "gradual-0.97": args.gradual_097}[key]
        )  # fmt: skip
        return load_checkpoint(path).model, str(path)

    rows = []
    for label, key, settings in POINTS:
        if args.only and not any(s in label for s in args.only.split(",")):
            continue
        pruned, origin = start(key)
        if args.budget and "budget_bytes" in settings:
            budget = fp32_bytes(base) // int(args.budget[:-1]) if args.budget.endswith("x") else int(args.budget)
            settings = {**settings, "budget_bytes": budget}
            label = label.replace("31 KB budget", f"{budget:,} B budget")
        cfg = point_config(args, **settings)
        t0 = time.perf_counter()
        try:
            compressed = compress_model(base, data, cfg, pruned=pruned, log=None, model_name=name, model_args=margs)
        except ConfigError as exc:  # e.g. a budget below the narrowest widths: recorded, the other points go on
            rows.append({"label": label, "config": cfg.to_dict(), "pruned_from": origin, "error": str(exc)})
            print(f"{label:<52} refused: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - t0
        model, record = compressed.model, compressed.record
        val, val_loss = evaluate(model, data.val_batches())  # loss: a steadier ranking than 5,000-image accuracy
        for storage, compression, huffman in WRITES:
            path = Path(args.out) / f"{label.split(' (')[0].replace(' ', '_').replace('%', '')}-{storage}.tshrink"
            result = write_and_verify(model, base, data.test_batches(), path, name, margs, compression, huffman)
            row = {"label": label, "storage": storage, "config": cfg.to_dict(), "pruned_from": origin,
                   "val_accuracy": val, "val_loss": val_loss, **result, "delta_points": 100 * (result["test_accuracy"] - base_acc),
                   "seconds": seconds, "mixed_precision": record.get("mixed_precision")}  # fmt: skip
            rows.append(row)
            print(f"{label:<52} {storage:<13} {result['file_bytes']:>8,} B {result['ratio']:6.1f}x  "
                  f"test {100 * result['test_accuracy']:.2f}% ({row['delta_points']:+.2f})  "
                  f"val {100 * val:.2f}%", flush=True)  # fmt: skip
        if record.get("mixed_precision"):
            print("   widths:", record["mixed_precision"]["bits"])
    best = [r for r in rows if r.get("storage") == "huffman+auto"]
    within = [r for r in best if r["delta_points"] >= -0.5]
    best_ratio = max(within, key=lambda r: r["ratio"]) if within else None
    keep93 = [r for r in best if r["test_accuracy"] >= 0.93]
    smallest93 = min(keep93, key=lambda r: r["file_bytes"]) if keep93 else None
    write_result(args.name, {"baseline_test_accuracy": base_acc, "rows": rows,
                                 "best_ratio_within_0.5_points": best_ratio, "smallest_file_at_93": smallest93,
                                 "settings": vars(args)})  # fmt: skip
    for title, r in (("best ratio within 0.5 points", best_ratio), ("smallest file >= 93.0%", smallest93)):
        if r:
            print(f"{title}: {r['label']} {r['file_bytes']:,} B {r['ratio']:.1f}x {100 * r['test_accuracy']:.2f}%")


if __name__ == "__main__":
    main()
