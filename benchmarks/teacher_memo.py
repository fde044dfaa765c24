"""What a remembered teacher saves per distilled epoch: the same seeded epoch trained twice from the same start,
first with a cold :class:`MemoTeacher` (every batch computed and stored), then a warm one (every batch found),
then with the bare teacher; the three trained models must be identical.

    python benchmarks/teacher_memo.py
"""

from __future__ import annotations

import copy
import time

import torch

from _common import write_result
from torchshrink.data import load_fashion_mnist
from torchshrink.models import build_model
from torchshrink.recipes import TrainConfig, fit
from torchshrink.recipes.teacher import MemoTeacher
from torchshrink.recipes.train import native_bf16


def main() -> None:
    data = load_fashion_mnist()
    task = data.task()
    precision = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    torch.manual_seed(0)
    teacher = build_model("cnn").eval()  # weights do not matter for the time; a trained one is not needed
    torch.manual_seed(1)
    start = build_model("cnn")
    cfg = TrainConfig(epochs=1, lr=0.02, distill=0.7, temperature=2.0, precision=precision)
    memo = MemoTeacher(teacher)
    rows, weights = [], []
    for label, t in (("cold memo", memo), ("warm memo", memo), ("bare teacher", teacher)):
        student = copy.deepcopy(start)
        t0 = time.perf_counter()
        history = fit(student, task, cfg, teacher=t, progress=False, log=None)
        seconds = time.perf_counter() - t0
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
        rows.append({"label": label, "seconds": seconds, "train_seconds": history[0].seconds})
        print(f"{label:<13} {seconds:6.1f} s (epoch {history[0].seconds:5.1f} s)")
    identical = all(torch.equal(weights[0], w) for w in weights[1:])
    print(f"hits {memo.hits}, misses {memo.misses}, stored {memo.stored_bytes / 2**20:.1f} MiB; models identical: {identical}")
    write_result("teacher_memo", {"precision": precision, "rows": rows, "identical": identical, "hits": memo.hits,
                                  "misses": memo.misses, "stored_bytes": memo.stored_bytes,
                                  "saved_per_epoch_seconds": rows[0]["train_seconds"] - rows[1]["train_seconds"]})  # fmt: skip


if __name__ == "__main__":
    main()
