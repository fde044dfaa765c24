"""Baseline training recipes: epochs, moving average of the weights (EMA), random erasing and random crop,
conv widths, bf16 autocast, each trained on the full training split from seed 0 (other seeds where the label
says, to size the seed-to-seed spread); validation and test accuracy and wall time of each, so the recipe is
chosen on validation (within the time limit) and the test figure only reports.

    python benchmarks/baseline_recipes.py            # every recipe, the results file rewritten after each
    python benchmarks/baseline_recipes.py --resume   # only the recipes not yet in the results
    python benchmarks/baseline_recipes.py --only "22 epochs"   # the recipes whose label starts so
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass

import torch

from _common import add_recipe_options, finished_rows, wanted, write_result
from torchshrink.checkpoint import save_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.models import build_model, parameter_count
from torchshrink.recipes.train import TrainConfig, evaluate, fit

NAME = "baseline_recipes"
LIMIT_SECONDS = 600  # the training time the default recipe must fit in on this 2-core CPU


@dataclass(frozen=True)
class Recipe:
    label: str
    epochs: int = 15
    ema: float = 0.0
    erase: float = 0.0
    crop_padding: int = 0
    channels: tuple = ()  # the cnn's conv widths per stage (a tuple: several convs in a stage); (): the default
    precision: str = "fp32"  # "bf16": forward passes under bfloat16 autocast (TrainConfig.precision)
    fp32_final_epochs: int = 0  # with bf16: the last epochs in fp32
    seed: int = 0  # initialisation, shuffles and augmentation: a second seed tells a change from noise


RECIPES = [
    Recipe("15 epochs, EMA 0.998", ema=0.998),
    Recipe("15 epochs, erasing 0.25", erase=0.25),
    Recipe("22 epochs", epochs=22),
    Recipe("22 epochs, EMA 0.998, erasing 0.25", epochs=22, ema=0.998, erase=0.25),
    Recipe("22 epochs, crop 2", epochs=22, crop_padding=2),
    Recipe("15 epochs (the current default)"),
    Recipe("15 epochs, erasing 0.25, channels 32/64/128+128", erase=0.25, channels=(32, 64, (128, 128))),
    Recipe("15 epochs, erasing 0.25, channels 16/64/128+128", erase=0.25, channels=(16, 64, (128, 128))),
    Recipe("15 epochs, erasing 0.25, bf16", erase=0.25, precision="bf16"),
    Recipe("15 epochs, erasing 0.25, seed 1", erase=0.25, seed=1),
    Recipe("15 epochs, erasing 0.25, bf16, seed 1", erase=0.25, precision="bf16", seed=1),
    Recipe("15 epochs, erasing 0.25, seed 2", erase=0.25, seed=2),
    Recipe("15 epochs, erasing 0.25, bf16, seed 2", erase=0.25, precision="bf16", seed=2),
    Recipe("15 epochs, erasing 0.25, seed 3", erase=0.25, seed=3),
    Recipe("15 epochs, erasing 0.25, bf16, seed 3", erase=0.25, precision="bf16", seed=3),
    Recipe("15 epochs, erasing 0.25, bf16, last 3 fp32", erase=0.25, precision="bf16", fp32_final_epochs=3),
    Recipe("15 epochs, erasing 0.25, bf16, last 3 fp32, seed 1", erase=0.25, precision="bf16", fp32_final_epochs=3,
           seed=1),
    Recipe("30 epochs, erasing 0.25, bf16", epochs=30, erase=0.25, precision="bf16"),
    Recipe("30 epochs, erasing 0.25, bf16, seed 1", epochs=30, erase=0.25, precision="bf16", seed=1),
    Recipe("30 epochs, erasing 0.25, bf16, seed 2", epochs=30, erase=0.25, precision="bf16", seed=2),
    Recipe("30 epochs, erasing 0.25, bf16, seed 3", epochs=30, erase=0.25, precision="bf16", seed=3),
]


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_recipe_options(parser, name=False)
    parser.add_argument("--out", default="runs/baseline_recipes", help="folder for each recipe's checkpoint")
    args = parser.parse_args()
    done = finished_rows(args, NAME)
    data = load_fashion_mnist()
    rows = list(done.values())
    for r in RECIPES:
        if r.label in done or not wanted(args, r.label):
            continue
        cfg = TrainConfig(epochs=r.epochs, ema=r.ema, seed=r.seed, precision=r.precision,
                          fp32_final_epochs=r.fp32_final_epochs)
        torch.manual_seed(cfg.seed)
        model_args = {"channels": r.channels} if r.channels else {}
        model = build_model("cnn", **model_args)
        start = time.perf_counter()
        history = fit(model, data.task(crop_padding=r.crop_padding, erase=r.erase), cfg, device="cpu", progress=False)
        seconds = time.perf_counter() - start
        val_acc, val_loss = evaluate(model, data.val_batches())
        test_acc, test_loss = evaluate(model, data.test_batches())
        save_checkpoint(f"{args.out}/{slug(r.label)}", model, "cnn", model.arguments(), device="cpu",
                        train_config={**cfg.to_dict(), "crop_padding": r.crop_padding, "erase": r.erase},
                        metrics={"test_accuracy": test_acc, "val_accuracy": val_acc, "train_seconds": seconds})  # fmt: skip
        rows.append({"label": r.label, "epochs": r.epochs, "ema": r.ema, "erase": r.erase,
                     "crop_padding": r.crop_padding, "precision": r.precision, "fp32_final_epochs": r.fp32_final_epochs, "seed": r.seed, "model_args": model_args, "val_accuracy": val_acc, "val_loss": val_loss,
                     "test_accuracy": test_acc, "test_loss": test_loss, "train_seconds": seconds,
                     "parameters": parameter_count(model), "val_history": [h.val_accuracy for h in history],
                     "epoch_seconds": [h.seconds for h in history]})  # fmt: skip
        print(f"{r.label:<40} val {100 * val_acc:6.2f}%  test {100 * test_acc:6.2f}%  {seconds:5.0f}s", flush=True)
        write_result(NAME, {"limit_seconds": LIMIT_SECONDS, "rows": rows})
    within = [row for row in rows if row["train_seconds"] <= LIMIT_SECONDS]
    if within:
        best = max(within, key=lambda row: row["val_accuracy"])
        print(
            f"chosen on validation (within {LIMIT_SECONDS}s): {best['label']} -> test {100 * best['test_accuracy']:.2f}%"
        )
        write_result(NAME, {"limit_seconds": LIMIT_SECONDS, "rows": rows, "chosen": best["label"]})


if __name__ == "__main__":
    main()
