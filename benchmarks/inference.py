"""CPU inference speed of the study's CNN in torch and in onnxruntime: fp32 and W8A8, dense and with conv
channels removed (fine-tuned), images/s at batch 256 and 1, interleaved in one run (the machine is noisy), with
each model's validation and test accuracy, and onnxruntime's per-operator profile of the dense models.

    python benchmarks/inference.py CHECKPOINT        # e.g. runs/study/cache/baseline-*/model

W8A8 rows are post-training quantized (per-channel int8 weights, uint8/int8 activations) and exported as a QDQ
graph; "int32 bias" is the default export, which onnxruntime fuses into integer kernels; "float bias" is the
exact but unfused export, kept as the ablation that shows what the fusion buys.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from _common import write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.export import to_onnx
from torchshrink.pruning import StructuredConfig, structured_prune_
from torchshrink.quant import QuantConfig
from torchshrink.recipes import TrainConfig, fit, ptq

Runner = Callable[[np.ndarray], np.ndarray]


def _torch_runner(model: torch.nn.Module) -> Runner:
    model = model.eval().to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    return run


def _session(blob: bytes, threads: int, profile: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def _ort_runner(blob: bytes, threads: int) -> Runner:
    session = _session(blob, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _profile(blob: bytes, threads: int, x: np.ndarray, runs: int = 20) -> dict[str, float]:
    """Share of onnxruntime's kernel time per operator type at this batch (its own profiler)."""
    with tempfile.TemporaryDirectory() as folder:
        session = _session(blob, threads, str(Path(folder) / "profile"))
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1.0
    return {op: round(t / total, 4) for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}


def _accuracy(run: Runner, batches: Any) -> float:
    correct = n = 0
    for x, y in batches:
        correct += int((run(x.numpy()).argmax(1) == y.numpy()).sum())
        n += len(y)
    return correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--amount", type=float, default=0.5, help="share of conv channels removed")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning after the removal")
    parser.add_argument("--lr", type=float, default=0.04, help="fine-tuning peak learning rate")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    threads = torch.get_num_threads()
    data = load_fashion_mnist()
    base = load_checkpoint(args.checkpoint).model.eval()
    small = copy.deepcopy(base)
    structured_prune_(small, StructuredConfig(args.amount))
    torch.manual_seed(0)
    fit(
        small, data.task(), TrainConfig(epochs=args.finetune_epochs, lr=args.lr, seed=0), log=print
    )  # the study's recipe
    small.eval()
    calib = data.calibration_batches()
    example = next(iter(data.test_batches()))[0][:1]
    q, qs = ptq(base, calib, QuantConfig(bits=8)).model, ptq(small, calib, QuantConfig(bits=8)).model
    blobs = {
        "onnxruntime fp32": to_onnx(base, example).SerializeToString(),
        "onnxruntime W8A8, float bias": to_onnx(q, example, integer_bias=False).SerializeToString(),
        "onnxruntime W8A8": to_onnx(q, example).SerializeToString(),
        "onnxruntime fp32, channels removed": to_onnx(small, example).SerializeToString(),
        "onnxruntime W8A8, channels removed": to_onnx(qs, example).SerializeToString(),
    }
    runners: dict[str, Runner] = {
        "torch fp32": _torch_runner(base),
        "torch W8A8 fake quant": _torch_runner(copy.deepcopy(q)),
        "torch fp32, channels removed": _torch_runner(small),
    }
    runners.update({name: _ort_runner(blob, threads) for name, blob in blobs.items()})
    order = ["torch fp32", "onnxruntime fp32", "torch W8A8 fake quant", "onnxruntime W8A8, float bias",
             "onnxruntime W8A8", "torch fp32, channels removed", "onnxruntime fp32, channels removed",
             "onnxruntime W8A8, channels removed"]  # fmt: skip
    rows: dict[str, dict[str, Any]] = {}
    for name in order:
        rows[name] = {"val_accuracy": _accuracy(runners[name], data.val_batches(batch_size=500)),
                      "test_accuracy": _accuracy(runners[name], data.test_batches(batch_size=500)),
                      "times": {"256": [], "1": []}, "onnx_bytes": len(blobs[name]) if name in blobs else None}  # fmt: skip
    inputs = {b: next(iter(data.test_batches(batch_size=b)))[0].numpy() for b in (256, 1)}
    for _ in range(args.rounds):
        for name in order:  # interleaved: every runner sees the same machine load
            for b, x in inputs.items():
                reps = 5 if b == 256 else 200
                runners[name](x)
                start = time.perf_counter()
                for _ in range(reps):
                    runners[name](x)
                rows[name]["times"][str(b)].append((time.perf_counter() - start) / reps)
    ref = {b: statistics.median(rows["torch fp32"]["times"][b]) for b in ("256", "1")}
    print(f"{'model':<36} {'val %':>6} {'test %':>6} {'img/s b256':>11} {'x torch':>8} {'img/s b1':>9} {'x torch':>8}")
    for name, r in rows.items():
        med = {b: statistics.median(t) for b, t in r["times"].items()}
        r.update({"images_per_second_256": 256 / med["256"], "images_per_second_1": 1 / med["1"],
                  "ratio_256": ref["256"] / med["256"], "ratio_1": ref["1"] / med["1"]})  # fmt: skip
        print(f"{name:<36} {100 * r['val_accuracy']:>6.2f} {100 * r['test_accuracy']:>6.2f} "
              f"{r['images_per_second_256']:>11,.0f} {r['ratio_256']:>7.2f}x {r['images_per_second_1']:>9,.0f} "
              f"{r['ratio_1']:>7.2f}x")  # fmt: skip
    profiles = {name: _profile(blob, threads, inputs[256]) for name, blob in blobs.items()}
    for name, shares in profiles.items():
        top = ", ".join(f"{op} {100 * s:.0f}%" for op, s in list(shares.items())[:5])
        print(f"profile at batch 256, {name}: {top}")
    write_result("inference", {"threads": threads, "onnxruntime": ort.__version__, "rows": rows,
                               "profiles_batch_256": profiles,
                               "channels_removed": {"amount": args.amount, "finetune_epochs": args.finetune_epochs,
                                                    "lr": args.lr}})  # fmt: skip


if __name__ == "__main__":
    main()
