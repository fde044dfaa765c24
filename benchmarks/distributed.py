"""Training throughput of ``fit`` in one process against several (DDP over gloo on CPU), on the same cores:
images/s of the training loop (validation excluded), each configuration started fresh with
torch.multiprocessing, rendezvous through a file. Measured side by side in one run (the machines are noisy).

    python benchmarks/distributed.py                  # 1 epoch on 10,000 images per configuration, ~1 minute
    python benchmarks/distributed.py --images 55000   # the whole training split

Under torchrun the same code runs as ``torchrun --nproc-per-node 2 -m torchshrink train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed
import torch.multiprocessing as mp

from _common import write_result
from torchshrink.data import load_fashion_mnist
from torchshrink.models import build_model
from torchshrink.recipes.train import TrainConfig, fit


def _worker(rank: int, world: int, threads: int, args: argparse.Namespace, folder: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                             world_size=world, timeout=timedelta(minutes=5))  # fmt: skip
    data = load_fashion_mnist(args.data_dir).subset(train=args.images, val=1000)
    torch.manual_seed(0)
    model = build_model(args.model)
    cfg = TrainConfig(epochs=args.epochs)
    history = fit(model, data.task(batch_size=args.batch_size), cfg, device="cpu", progress=False, log=None)
    if rank == 0:
        Path(folder, "result.json").write_text(json.dumps({
            "images_per_second": [h.images_per_second for h in history], "seconds": [h.seconds for h in history],
            "val_accuracy": history[-1].val_accuracy,
        }))  # fmt: skip
    if world > 1:
        torch.distributed.destroy_process_group()


def measure(processes: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: ``processes`` ranks of ``threads`` threads each, started fresh."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        mp.start_processes(_worker, args=(processes, threads, args, folder), nprocs=processes, start_method="spawn")
        wall = time.perf_counter() - start
        result = json.loads(Path(folder, "result.json").read_text())
    return {"processes": processes, "threads_per_process": threads, "wall_seconds": wall, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images per epoch (all ranks together)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch, split between the ranks")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    # the same cores each time: all in one process, then shared between two; one thread alone for reference
    configs = [(1, cores), (2, max(cores // 2, 1)), (1, 1)]
    rows = [measure(p, t, args) for p, t in configs]
    print(f"{'processes':>9} {'threads':>7} {'images/s':>9} {'val %':>6} {'wall s':>6}")
    for r in rows:
        print(f"{r['processes']:>9} {r['threads_per_process']:>7} {r['images_per_second'][-1]:>9.0f} "
              f"{100 * r['val_accuracy']:>6.2f} {r['wall_seconds']:>6.1f}")  # fmt: skip
    speedup = rows[1]["images_per_second"][-1] / rows[0]["images_per_second"][-1]
    print(f"2 processes / 1 process on {cores} cores: {speedup:.2f}x")
    write_result("distributed", {
        "config": vars(args), "backend": "gloo", "runs": rows, "speedup_2_over_1_process": speedup,
    })  # fmt: skip


if __name__ == "__main__":
    main()
