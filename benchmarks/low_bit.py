"""QAT recipes for 2-bit weights and activations (W2A2) on the study's baseline: epochs, distillation from the
fp32 model, and the first and last layers at 8 bits; validation and test accuracy of each, so the recipe is
chosen on validation and the test figure only reports.

    python benchmarks/low_bit.py CHECKPOINT          # e.g. runs/study/cache/baseline-*/model
    python benchmarks/low_bit.py CHECKPOINT --resume # only the recipes not yet in the results
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import torch

from _common import add_recipe_options, finished_rows, wanted, write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.quant import QuantConfig, storage_report
from torchshrink.recipes import TrainConfig, evaluate, qat


@dataclass(frozen=True)
class Recipe:
    label: str
    epochs: int
    distill: float = 0.0
    edges_8bit: bool = False
    lr: float = 0.01
    ema: float = 0.0  # moving average of the QAT weights (and step sizes)
    full_range: bool = False  # weights on every signed code (4 levels at 2 bits), not the narrow range (ternary)


RECIPES = [
    Recipe("1 epoch (the study's)", 1),
    Recipe("6 epochs", 6),
    Recipe("6 epochs, distilled", 6, distill=0.7),
    Recipe("6 epochs, distilled, first/last 8-bit", 6, distill=0.7, edges_8bit=True),
    Recipe("15 epochs, distilled, first/last 8-bit", 15, distill=0.7, edges_8bit=True),
    Recipe("25 epochs, distilled, first/last 8-bit", 25, distill=0.7, edges_8bit=True),
    Recipe("15 epochs, distilled, first/last 8-bit, EMA", 15, distill=0.7, edges_8bit=True, ema=0.998),
    Recipe("15 epochs, distilled, first/last 8-bit, full range", 15, distill=0.7, edges_8bit=True, full_range=True),
    Recipe("15 epochs, distilled, full range", 15, distill=0.7, full_range=True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--bits", type=int, default=2)
    add_recipe_options(parser)
    args = parser.parse_args()
    name = args.name or f"low_bit_w{args.bits}a{args.bits}"
    done = finished_rows(args, name)
    warnings.simplefilter("ignore")
    data = load_fashion_mnist()
    base = load_checkpoint(args.checkpoint).model.eval()
    base_test = evaluate(base, data.test_batches())[0]
    base_val = evaluate(base, data.val_batches())[0]
    rows = []
    for r in RECIPES:
        if r.label in done:
            rows.append(done[r.label])
            continue
        if not wanted(args, r.label):
            continue
        torch.manual_seed(0)
        start = time.perf_counter()
        config = QuantConfig(bits=args.bits, keep_first_last_8bit=r.edges_8bit, full_range_weights=r.full_range)
        # temperature 4.0: the distillation temperature these recipes were measured with
        train = TrainConfig(epochs=r.epochs, lr=r.lr, distill=r.distill, temperature=4.0, seed=0, ema=r.ema)
        result = qat(base, data.task(), config, train=train, teacher=base if r.distill else None, log=None)
        q, history = result.model, result.history
        seconds = time.perf_counter() - start
        val, test = evaluate(q, data.val_batches())[0], evaluate(q, data.test_batches())[0]
        weight_bytes = sum(row.total_bytes for row in storage_report(q))
        rows.append({"label": r.label, "epochs": r.epochs, "distill": r.distill, "first_last_8bit": r.edges_8bit,
                     "ema": r.ema, "lr": r.lr, "full_range": r.full_range, "val_accuracy": val, "test_accuracy": test, "delta_points": 100 * (test - base_test),
                     "weight_bytes": weight_bytes, "seconds": seconds,
                     "val_history": [h.val_accuracy for h in history]})  # fmt: skip
        print(f"{r.label:<42} val {100 * val:6.2f}%  test {100 * test:6.2f}% ({100 * (test - base_test):+.2f})  "
              f"{weight_bytes:,.0f} B  {seconds:.0f}s", flush=True)  # fmt: skip
        _write(name, base_test, base_val, rows)  # after each recipe: an interrupted run keeps what it measured
    best = _write(name, base_test, base_val, rows)
    print(f"chosen on validation: {best['label']} -> test {100 * best['test_accuracy']:.2f}%")


def _write(name: str, base_test: float, base_val: float, rows: list[dict]) -> dict:
    best = max(rows, key=lambda row: row["val_accuracy"])
    write_result(name, {"baseline_test_accuracy": base_test,
                 "baseline_val_accuracy": base_val, "rows": rows, "chosen": best["label"]})  # fmt: skip
    return best


if __name__ == "__main__":
    main()
