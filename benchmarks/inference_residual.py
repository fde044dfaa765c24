"""CPU inference of a residual network (the README example's ``ResNetish``: identity and projection skips, adds)
trained on Fashion-MNIST: torch fp32, onnxruntime fp32 and onnxruntime W8A8 (the QDQ graph torch's exporter
traces), without and with quantized joins (``QuantConfig(quantize_joins=True)``: 8-bit quantizers on the inputs
of the residual adds, so the layers feeding them run as integer kernels), images/s at batch 1 and 256, at 1 and
2 threads, interleaved medians; test accuracy of each; onnxruntime's per-operator profile of the int8 graphs.

    python benchmarks/inference_residual.py               # trains 3 epochs first (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from _common import write_result
from inference import _accuracy, _ort_runner, _profile, _torch_runner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from compress_your_model import ResNetish  # noqa: E402

from torchshrink import QuantConfig, TrainConfig, fit, fold_batchnorm, load_fashion_mnist, ptq  # noqa: E402
from torchshrink.export import onnx_agreement, to_onnx  # noqa: E402


def _speed(runners: dict[str, Any], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Images/s per runner: the median of ``rounds`` timings, the runners interleaved in each round."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    repeats = max(3, 512 // len(x))
    for run in runners.values():
        run(x)  # warm up: first-call allocations and kernel choices are not what is measured
    for _ in range(rounds):
        for key, run in runners.items():
            start = time.perf_counter()
            for _ in range(repeats):
                run(x)
            times[key].append(len(x) * repeats / (time.perf_counter() - start))
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    data = load_fashion_mnist()
    torch.manual_seed(0)
    model = ResNetish()
    cached = Path(tempfile.gettempdir()) / f"torchshrink-inference-residual-{args.epochs}.safetensors"
    if cached.is_file():  # the same seed and settings trained it before: reuse it
        model.load_state_dict(load_file(cached))
    else:
        fit(model, data.task(), TrainConfig(epochs=args.epochs, lr=0.05), log=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(cached))
    model = fold_batchnorm(model.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = ptq(model, data.task(), QuantConfig(bits=8)).model
        qj = ptq(model, data.task(), QuantConfig(bits=8, quantize_joins=True)).model
        q4 = ptq(model, data.task(), QuantConfig(bits=4)).model
        q4j = ptq(model, data.task(), QuantConfig(bits=4, quantize_joins=True)).model
    example = torch.zeros(1, 1, 28, 28)
    # top-1 agreement of onnxruntime with torchshrink's model on the whole test set, and the ONNX bytes
    agreement = {}
    for label, quantized in (("W8A8", q), ("W8A8 joins", qj), ("W4A4", q4), ("W4A4 joins", q4j)):
        blob = to_onnx(quantized, example).SerializeToString()
        found = onnx_agreement(quantized, blob, data.test_batches())
        agreement[label] = {k: found[k] for k in ("top1_agreement", "max_logit_difference", "test_accuracy")}
        agreement[label]["onnx_bytes"] = len(blob)
    print(agreement, flush=True)
    fp32_blob = to_onnx(model, example).SerializeToString()
    int8_blob = to_onnx(q, example).SerializeToString()
    joins_blob = to_onnx(qj, example).SerializeToString()
    # int8 weights: onnxruntime's uint8 x int8 kernels, exact only on CPUs with VNNI (the default uint8 weights are
    # exact everywhere)
    joins_int8_blob = to_onnx(qj, example, weight_type="int8").SerializeToString()
    test = data.test_batches()
    accuracy = {"torch fp32": _accuracy(_torch_runner(model), test), "torchshrink W8A8": _accuracy(_torch_runner(q), test),
                "torchshrink W8A8 joins": _accuracy(_torch_runner(qj), test),
                "onnxruntime fp32": _accuracy(_ort_runner(fp32_blob, 2), test),
                "onnxruntime W8A8": _accuracy(_ort_runner(int8_blob, 2), test),
                "onnxruntime W8A8 joins": _accuracy(_ort_runner(joins_blob, 2), test),
                "onnxruntime W8A8 joins, int8 weights": _accuracy(_ort_runner(joins_int8_blob, 2), test)}  # fmt: skip
    print(accuracy, flush=True)
    speed: dict[str, Any] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runners = {"torch fp32": _torch_runner(model), "onnxruntime fp32": _ort_runner(fp32_blob, threads),
                   "onnxruntime W8A8": _ort_runner(int8_blob, threads),
                   "onnxruntime W8A8 joins": _ort_runner(joins_blob, threads),
                   "onnxruntime W8A8 joins, int8 weights": _ort_runner(joins_int8_blob, threads)}  # fmt: skip
        for batch in (1, 256):
            x = data.test_batches(batch_size=batch).__iter__().__next__()[0].numpy()
            speed[f"{threads} threads, batch {batch}"] = _speed(runners, x, args.rounds)
            print(threads, batch, speed[f"{threads} threads, batch {batch}"], flush=True)
    x256 = next(iter(data.test_batches(batch_size=256)))[0].numpy()
    write_result("inference_residual", {
        "model": "examples/compress_your_model.py ResNetish, BatchNorm folded", "epochs": args.epochs,
        "onnx_bytes": {"fp32": len(fp32_blob), "W8A8": len(int8_blob), "W8A8 joins": len(joins_blob)},
        "test_accuracy": accuracy, "onnxruntime_agreement": agreement, "images_per_second": speed,
        "speedup_over_onnxruntime_fp32": {k: {r: round(v[r] / v["onnxruntime fp32"], 2) for r in v} for k, v in speed.items()},
        "profile_int8_batch256_2threads": _profile(int8_blob, 2, x256),
        "profile_int8_joins_batch256_2threads": _profile(joins_blob, 2, x256),
        "profile_int8_joins_int8_weights_batch256_2threads": _profile(joins_int8_blob, 2, x256),
        "profile_fp32_batch256_2threads": _profile(fp32_blob, 2, x256),
    })  # fmt: skip


if __name__ == "__main__":
    main()
