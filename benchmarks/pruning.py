"""Pruning benchmark: one-shot curves (layer / global, no retraining), step-by-step pruning to 50/80/90/95%,
and structured channel pruning (parameters, multiply-adds, CPU latency, accuracy after fine-tuning).

    python benchmarks/pruning.py [--checkpoint runs/baseline] [--epochs-per-step 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import write_result
from torchshrink.checkpoint import load_checkpoint, save_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.measure import count_macs, latency
from torchshrink.models import parameter_count
from torchshrink.pruning import (
    PruneConfig,
    StructuredConfig,
    permanent_copy,
    prune_,
    sparsity_report,
    structured_prune_,
)
from torchshrink.recipes import IterativeConfig, iterative_prune
from torchshrink.recipes.train import TrainConfig, evaluate, fit

ONESHOT = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
TARGETS = (0.5, 0.8, 0.9, 0.95)


def sparsity_of(model) -> float:
    rows = sparsity_report(model)
    return 1 - sum(r.nonzeros for r in rows) / sum(r.params for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/baseline")
    parser.add_argument("--epochs-per-step", type=int, default=2)
    parser.add_argument("--steps-per-target", type=int, default=2)
    parser.add_argument("--structured-amount", type=float, default=0.5)
    parser.add_argument("--structured-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    base = load_checkpoint(args.checkpoint).model
    base_acc, _ = evaluate(base, data.test_batches())
    print(f"baseline test accuracy {100 * base_acc:.2f}%")

    oneshot: dict[str, dict[str, float]] = {}
    for scope in ("layer", "global"):
        oneshot[scope] = {}
        for s in ONESHOT:
            model = copy.deepcopy(base)
            prune_(model, PruneConfig(s, scope))
            oneshot[scope][str(s)], _ = evaluate(model, data.test_batches())
        print(scope, " ".join(f"{k}:{100 * v:.2f}" for k, v in oneshot[scope].items()))

    # step-by-step: one continuous AGP run, stopping at each target to measure on the test set
    model = copy.deepcopy(base)
    finetune = TrainConfig(epochs=args.epochs_per_step, lr=args.lr)
    iterative, steps, start, current = [], [], time.perf_counter(), 0.0
    for target in TARGETS:
        config = IterativeConfig(target, steps=args.steps_per_target, finetune=finetune, schedule="agp",
                                 scope="global", initial=current)  # fmt: skip
        history = iterative_prune(model, data, config).steps
        current = sparsity_of(model)
        steps += [h.to_dict() for h in history]
        acc, _ = evaluate(model, data.test_batches())
        iterative.append({"target": target, "sparsity": current, "test_accuracy": acc,
                          "delta_points": 100 * (acc - base_acc), "wall_seconds": time.perf_counter() - start})  # fmt: skip
        print(f"step-by-step {100 * current:.1f}%: test {100 * acc:.2f}% ({100 * (acc - base_acc):+.2f} pts), "
              f"{time.perf_counter() - start:.0f}s cumulative")  # fmt: skip
        snapshot = permanent_copy(model)
        save_checkpoint(f"{args.checkpoint}-pruned-iterative-{target:g}", snapshot, "cnn", base.arguments(),
                        metrics={"test_accuracy": acc})  # fmt: skip

    # structured: remove whole channels, then fine-tune
    small = copy.deepcopy(base)
    channels = structured_prune_(small, StructuredConfig(args.structured_amount))
    pruned_acc, _ = evaluate(small, data.test_batches())
    t0 = time.perf_counter()
    fit(small, data, TrainConfig(epochs=args.structured_epochs, lr=args.lr * 2), device="cpu")
    ft_seconds = time.perf_counter() - t0
    small_acc, _ = evaluate(small, data.test_batches())
    lat = {}
    for batch in (256, 1):
        # interleave dense and pruned timings so both see the same machine load
        dense_t, small_t = [], []
        for _ in range(3):
            dense_t.append(latency(base, batch, repeats=10 if batch == 256 else 200))
            small_t.append(latency(small, batch, repeats=10 if batch == 256 else 200))
        lat[str(batch)] = {"dense_s": min(dense_t), "pruned_s": min(small_t), "speedup": min(dense_t) / min(small_t)}
        print(f"batch {batch}: dense {1e3 * min(dense_t):.2f} ms, pruned {1e3 * min(small_t):.2f} ms, "
              f"speedup {min(dense_t) / min(small_t):.2f}x")  # fmt: skip
    save_checkpoint(f"{args.checkpoint}-pruned-structured-{args.structured_amount:g}", small, "cnn",
                    small.arguments(), metrics={"test_accuracy": small_acc})  # fmt: skip
    structured = {
        "amount": args.structured_amount, "channels": {k: list(v) for k, v in channels.items()},
        "params_before": parameter_count(base), "params_after": parameter_count(small),
        "macs_before": count_macs(base), "macs_after": count_macs(small),
        "test_accuracy_pruned": pruned_acc, "test_accuracy_finetuned": small_acc,
        "delta_points": 100 * (small_acc - base_acc), "finetune_epochs": args.structured_epochs,
        "finetune_seconds": ft_seconds, "latency": lat, "threads": torch.get_num_threads(),
    }  # fmt: skip
    print(f"structured {args.structured_amount:.0%} channels: params {structured['params_before']:,} -> "
          f"{structured['params_after']:,}, MACs {structured['macs_before']:,} -> {structured['macs_after']:,}, "
          f"test {100 * small_acc:.2f}%")  # fmt: skip
    write_result("pruning", {"baseline_test_accuracy": base_acc, "oneshot": oneshot, "iterative": iterative,
                             "iterative_steps": steps, "structured": structured,
                             "settings": vars(args)})  # fmt: skip


if __name__ == "__main__":
    main()
