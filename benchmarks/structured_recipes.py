"""Channel pruning recipes on the study's baseline: how many channels to remove, how long to fine-tune, with or
without distillation from the dense model; validation and test accuracy and the torch CPU speedup at batch 256
(dense and pruned timed interleaved). The amount is chosen by speed (>= 2.5x, else the fastest), then the recipe
by validation accuracy; the test figure only reports.

    python benchmarks/structured_recipes.py CHECKPOINT            # e.g. runs/study/cache/baseline-*/model
    python benchmarks/structured_recipes.py CHECKPOINT --resume   # only the recipes not yet in the results
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from _common import add_recipe_options, finished_rows, wanted, write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.measure import latency
from torchshrink.pruning import StructuredConfig, structured_prune_
from torchshrink.recipes import TrainConfig, evaluate, fit


@dataclass(frozen=True)
class Recipe:
    label: str
    amount: float
    epochs: int
    distill: float = 0.0
    lr: float = 0.04
    multiple_of: int = 1  # kept channels rounded to a multiple of this
    ema: float = 0.0  # moving average of the fine-tuned weights
    erase: float = 0.0  # random erasing during the fine-tuning
    temperature: float = 4.0  # of the distillation targets
    # channel pruning in steps: (share removed so far, of the original channels; epochs of fine-tuning after it),
    # ending at ``amount`` with ``epochs``; () prunes at once
    steps: tuple[tuple[float, int], ...] = ()
    layers: tuple[tuple[str, float], ...] = ()  # a share per channel group (its first conv), overriding amount


RECIPES = [
    Recipe("50%, 3 epochs (the study's)", 0.5, 3),
    Recipe("50%, 10 epochs, distilled", 0.5, 10, distill=0.7),
    Recipe("40%, 10 epochs, distilled", 0.4, 10, distill=0.7),
    Recipe("60%, 10 epochs, distilled", 0.6, 10, distill=0.7),
    Recipe("50%, 20 epochs, distilled", 0.5, 20, distill=0.7),
    Recipe("50%, 10 epochs, distilled, EMA, erasing", 0.5, 10, distill=0.7, ema=0.998, erase=0.25),
    Recipe("60% x16, 10 epochs, distilled, EMA, erasing", 0.6, 10, distill=0.7, multiple_of=16, ema=0.998, erase=0.25),
    Recipe("50% in 2 steps (25%: 4 epochs), 10 epochs, distilled", 0.5, 10, distill=0.7, steps=((0.25, 4),)),
    Recipe("50%, 10 epochs, distilled T2", 0.5, 10, distill=0.7, temperature=2.0),
    Recipe("50%, 16 epochs, distilled T2, lr 0.06", 0.5, 16, distill=0.7, temperature=2.0, lr=0.06),
    # the convs at 28x28 cost most time per channel on a CPU (8/32/64 runs 1.4x faster than 16/32/64): remove
    # more there, less where the channels are cheap
    Recipe(
        "75/50/25%, 16 epochs, distilled T2, lr 0.06",
        0.5,
        16,
        distill=0.7,
        temperature=2.0,
        lr=0.06,
        layers=(("features.conv1", 0.75), ("features.conv3", 0.25)),
    ),
    Recipe(
        "75/50/50%, 16 epochs, distilled T2, lr 0.06",
        0.5,
        16,
        distill=0.7,
        temperature=2.0,
        lr=0.06,
        layers=(("features.conv1", 0.75),),
    ),
]


def step_amount(done: float, target: float) -> float:
    """The share of the *current* channels to remove so that ``target`` of the original ones are gone when
    ``done`` already are (kept counts are rounded per step, as ``structured_prune_`` rounds them)."""
    return 1 - (1 - target) / (1 - done)


def _speedup(dense: torch.nn.Module, small: torch.nn.Module, rounds: int = 5) -> float:
    dense_t, small_t = [], []
    for _ in range(rounds):  # interleaved: both see the same machine load
        dense_t.append(latency(dense, 256, repeats=5))
        small_t.append(latency(small, 256, repeats=5))
    return statistics.median(dense_t) / statistics.median(small_t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    add_recipe_options(parser)
    args = parser.parse_args()
    args.name = args.name or "structured_recipes"
    done = finished_rows(args, args.name)
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
        small = copy.deepcopy(base)
        torch.manual_seed(0)
        start, done_share = time.perf_counter(), 0.0
        for share, epochs in (*r.steps, (r.amount, r.epochs)):
            layers = {name: step_amount(done_share, share * layer / r.amount) for name, layer in r.layers}
            config = StructuredConfig(step_amount(done_share, share), multiple_of=r.multiple_of, layer_sparsity=layers)
            channels = structured_prune_(small, config)
            done_share = share
            cfg = TrainConfig(epochs=epochs, lr=r.lr, distill=r.distill, temperature=r.temperature, seed=0, ema=r.ema)
            fit(small, data.task(erase=r.erase), cfg, teacher=base if r.distill else None, log=None)
        seconds = time.perf_counter() - start
        small.eval()
        val, test = evaluate(small, data.val_batches())[0], evaluate(small, data.test_batches())[0]
        speedup = _speedup(copy.deepcopy(base).cpu(), copy.deepcopy(small).cpu())
        rows.append({"label": r.label, "amount": r.amount, "epochs": r.epochs, "distill": r.distill, "lr": r.lr,
                     "val_accuracy": val, "test_accuracy": test, "delta_points": 100 * (test - base_test),
                     "speedup_256": speedup, "seconds": seconds, "multiple_of": r.multiple_of,
                     "ema": r.ema, "erase": r.erase, "temperature": r.temperature,
                     "steps": [list(step) for step in r.steps], "layers": dict(r.layers), "channels": [after for _, after in channels.values()]})  # fmt: skip
        print(f"{r.label:<32} val {100 * val:6.2f}%  test {100 * test:6.2f}% ({100 * (test - base_test):+.2f})  "
              f"{speedup:.2f}x at batch 256  {seconds:.0f}s", flush=True)  # fmt: skip
    speeds = _speed_by_shape(rows)
    fast = [k for k, v in speeds.items() if v >= 2.5] or [max(speeds, key=speeds.__getitem__)]
    chosen = max((row for row in rows if _shape(row) in fast), key=lambda row: row["val_accuracy"])["label"]
    print(f"speedup by shape (median of its runs): {speeds}; chosen on validation: {chosen}")
    write_result(args.name, {"baseline_test_accuracy": base_test, "baseline_val_accuracy": base_val, "rows": rows,
                             "chosen": chosen, "speedup_by_shape": speeds})  # fmt: skip


def _shape(row: dict) -> str:
    """The architecture a recipe builds: its kept channels (older results: the amount removed)."""
    return "/".join(map(str, row["channels"])) if row.get("channels") else f"{100 * row['amount']:.0f}%"


def _speed_by_shape(rows: list[dict]) -> dict[str, float]:
    """The speedup of each pruned architecture: the median over its recipes, which all build the same
    architecture (their spread, +-5% here, is the machine's noise, not the recipe's doing)."""
    shapes = sorted({_shape(row) for row in rows})
    return {k: statistics.median(row["speedup_256"] for row in rows if _shape(row) == k) for k in shapes}


if __name__ == "__main__":
    main()
