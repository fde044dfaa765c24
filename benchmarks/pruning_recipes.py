"""Choosing the step-by-step pruning recipe for high sparsity on the validation split.

Recipes, side by side:
* ``rounds``: prune -> retrain rounds continuing from a pruned checkpoint (default: the 80% one the
  pruning benchmark writes), optionally with a longer ``final`` fine-tune and ``distill``-ation from the
  dense baseline;
* ``gradual``: from the dense baseline, one training run whose mask tightens every few steps along the
  cubic schedule (Zhu & Gupta), optionally distilled.
Every recipe is scored on validation; the test accuracy is recorded for the closing figures only, never used
to choose.

    python benchmarks/pruning_recipes.py [--target 0.9] [--recipes rounds,gradual,gradual+distill]
"""

from __future__ import annotations

import argparse
import copy
import time

from _common import write_result
from torchshrink.checkpoint import load_checkpoint, save_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.pruning import permanent_copy, prune_from_zeros_, sparsity_report
from torchshrink.recipes import GradualConfig, IterativeConfig, gradual_prune, iterative_prune
from torchshrink.recipes.train import TrainConfig, evaluate


def sparsity_of(model) -> float:
    rows = sparsity_report(model)
    return 1 - sum(r.nonzeros for r in rows) / sum(r.params for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="runs/baseline")
    parser.add_argument("--start", default="runs/baseline-pruned-iterative-0.8")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--epochs-per-step", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--final-epochs", type=int, default=3)
    parser.add_argument("--final-lr", type=float, default=0.05)
    parser.add_argument("--distill", type=float, default=0.7)
    parser.add_argument("--gradual-epochs", type=int, default=8)
    parser.add_argument("--gradual-lr", type=float, default=0.05)
    parser.add_argument(
        "--gradual-from", help="gradual: start from this pruned checkpoint instead of the dense baseline"
    )
    parser.add_argument("--window", default="0.0,0.6", help="gradual pruning from/to these fractions of the run")
    parser.add_argument("--frequency", type=int, default=50, help="gradual: optimizer steps between mask updates")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    parser.add_argument("--seed", type=int, default=0, help="shuffling and augmentation of the retraining")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="of every retraining")
    parser.add_argument("--recipes", default="rounds+final,rounds+final+distill")
    parser.add_argument("--name", help="results file: benchmarks/results/NAME.json (default: from target and recipes)")
    parser.add_argument("--save", help="save the best recipe's model to this checkpoint folder")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    teacher = load_checkpoint(args.baseline).model
    base_val, _ = evaluate(teacher, data.val_batches())
    base_test, _ = evaluate(teacher, data.test_batches())
    results = []
    best = None
    for recipe in args.recipes.split(","):
        kd = args.distill if "distill" in recipe else 0.0
        t0 = time.perf_counter()
        if recipe.startswith("gradual"):
            model = load_checkpoint(args.gradual_from).model if args.gradual_from else copy.deepcopy(teacher)
            initial = sparsity_of(model)
            start, end = (float(v) for v in args.window.split(","))
            cfg = TrainConfig(epochs=args.gradual_epochs, lr=args.gradual_lr, distill=kd,
                              temperature=args.temperature, seed=args.seed, precision=args.precision)  # fmt: skip
            config = GradualConfig(args.target, train=cfg, start=start, end=end, frequency=args.frequency)
            history = gradual_prune(model, data, config, teacher=teacher if kd else None).steps
        else:
            model = load_checkpoint(args.start).model
            prune_from_zeros_(model)
            initial = sparsity_of(model)
            step_cfg = TrainConfig(epochs=args.epochs_per_step, lr=args.lr, distill=kd, temperature=args.temperature,
                                   seed=args.seed, precision=args.precision)  # fmt: skip
            final = (TrainConfig(epochs=args.final_epochs, lr=args.final_lr, distill=kd, temperature=args.temperature,
                                 seed=args.seed, precision=args.precision) if "final" in recipe else None)  # fmt: skip
            config = IterativeConfig(args.target, steps=args.steps, finetune=step_cfg, schedule="agp", scope="global",
                                     initial=initial, final=final)  # fmt: skip
            history = iterative_prune(model, data, config, teacher=teacher if kd else None).steps
        seconds = time.perf_counter() - t0
        val, val_loss = evaluate(model, data.val_batches())  # loss: a steadier ranking than accuracy
        test, _ = evaluate(model, data.test_batches())
        row = {"recipe": recipe, "initial_sparsity": initial, "sparsity": sparsity_of(model), "val_accuracy": val,
               "val_loss": val_loss,
               "test_accuracy": test, "val_delta_points": 100 * (val - base_val),
               "test_delta_points": 100 * (test - base_test), "seconds": seconds,
               "steps": [h.to_dict() for h in history]}  # fmt: skip
        results.append(row)
        print(f"{recipe}: sparsity {100 * row['sparsity']:.1f}%  val {100 * val:.2f}% ({row['val_delta_points']:+.2f})"
              f"  test {100 * test:.2f}% ({row['test_delta_points']:+.2f})  {seconds:.0f}s")  # fmt: skip
        if best is None or val > best[0]:
            best = (val, recipe, permanent_copy(model), test)
    assert best is not None
    print(f"chosen on validation: {best[1]}")
    if args.save:
        save_checkpoint(args.save, best[2], "cnn", teacher.arguments(),
                        metrics={"test_accuracy": best[3], "val_accuracy": best[0], "recipe": best[1]})  # fmt: skip
    name = args.name or f"pruning_recipes_{args.target:g}_{args.recipes.replace(',', '_').replace('+', '-')}"
    write_result(name, {"baseline_val_accuracy": base_val,
                 "baseline_test_accuracy": base_test, "chosen": best[1], "recipes": results,
                 "settings": vars(args)})  # fmt: skip


if __name__ == "__main__":
    main()
