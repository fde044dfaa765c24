"""Train the default recipe on the full data; record test accuracy, wall time, images/s, and the input
pipeline's overhead (training loop images/s versus bare forward+backward on pre-made tensors, one run).

    python benchmarks/train_baseline.py [--out runs/baseline] [--epochs N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _common import write_result
from torchshrink.checkpoint import save_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.models import build_model, fp32_bytes, parameter_count
from torchshrink.recipes.train import TrainConfig, evaluate, fit, make_optimizer

BATCH = 256  # the default recipe's batch size


def bare_throughput(cfg: TrainConfig, steps: int = 40) -> float:
    """Images/s of forward+backward+step on one pre-made normalised batch: no indexing, no augmentation."""
    torch.manual_seed(0)
    model = build_model("cnn").to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    x = torch.randn(BATCH, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


def loop_throughput(data, cfg: TrainConfig, images: int) -> float:
    """Images/s of the real training loop (indexing, normalising, augmenting) on ``images`` images."""
    torch.manual_seed(0)
    model = build_model("cnn")
    sub = data.subset(train=images)
    history = fit(model, sub, TrainConfig(**{**cfg.to_dict(), "epochs": 1}), device="cpu", progress=False, log=None)
    return history[0].images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/baseline")
    parser.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    parser.add_argument("--crop-padding", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    cfg = TrainConfig(epochs=args.epochs)
    data = load_fashion_mnist(args.data_dir)

    # the overhead ratio, measured side by side: bare, loop, bare again (the machine is noisy)
    bare = [bare_throughput(cfg)]
    loop = loop_throughput(data, cfg, images=10240)
    bare.append(bare_throughput(cfg))
    ratio = loop / (sum(bare) / 2)
    print(f"pipeline: loop {loop:.0f} img/s, bare forward+backward {sum(bare) / 2:.0f} img/s, ratio {ratio:.3f}")

    torch.manual_seed(cfg.seed)
    model = build_model("cnn")
    start = time.perf_counter()
    history = fit(model, data.task(crop_padding=args.crop_padding), cfg, device="cpu")
    wall = time.perf_counter() - start
    test_acc, test_loss = evaluate(model, data.test_batches())
    metrics = {
        "test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": history[-1].val_accuracy,
        "train_seconds": wall, "images_per_second": sum(h.images_per_second for h in history) / len(history),
    }  # fmt: skip
    save_checkpoint(args.out, model, "cnn", {}, train_config=cfg.to_dict(), metrics=metrics,
                    history=[h.__dict__ for h in history], device="cpu")  # fmt: skip
    print(f"test accuracy {100 * test_acc:.2f}%  wall {wall:.0f}s  -> {args.out}")
    write_result(
        "train_baseline",
        {"config": cfg.to_dict(), "model": "cnn", "parameters": parameter_count(model), "fp32_bytes": fp32_bytes(model),
         **metrics, "pipeline": {"loop_images_per_second": loop, "bare_images_per_second": bare, "ratio": ratio},
         "history": [h.__dict__ for h in history]},
    )  # fmt: skip


if __name__ == "__main__":
    main()
