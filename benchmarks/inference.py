"""CPU inference speed of the study's CNN in torch and in onnxruntime, fp32 and W8A8 (QDQ), dense and with half
the conv channels removed: images/s at batch 256 and 1, interleaved in one run (the machine is noisy), with
each model's accuracy on the full test set.

    python benchmarks/inference.py CHECKPOINT        # e.g. runs/study/cache/baseline-*/model
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch

from _common import write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.export import to_onnx
from torchshrink.pruning import structured_prune_
from torchshrink.quant import QuantConfig
from torchshrink.recipes import ptq

Runner = Callable[[np.ndarray], np.ndarray]


def _torch_runner(model: torch.nn.Module) -> Runner:
    model = model.eval().to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    return run


def _ort_runner(model: torch.nn.Module, example: torch.Tensor, threads: int) -> tuple[Runner, int]:
    blob = to_onnx(model, example).SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), len(blob)


def _accuracy(run: Runner, data) -> float:
    correct = n = 0
    for x, y in data.test_batches(batch_size=500):
        correct += int((run(x.numpy()).argmax(1) == y.numpy()).sum())
        n += len(y)
    return correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    threads = torch.get_num_threads()
    data = load_fashion_mnist()
    base = load_checkpoint(args.checkpoint).model.eval()
    small = copy.deepcopy(base)
    structured_prune_(small, 0.5)  # not fine-tuned here: this measures speed; the study fine-tunes it
    calib = data.calibration_batches()
    example = next(iter(data.test_batches()))[0][:1]
    runners: dict[str, Runner] = {"torch fp32": _torch_runner(base)}
    sizes: dict[str, int] = {}
    runners["onnxruntime fp32"], sizes["onnxruntime fp32"] = _ort_runner(base, example, threads)
    q = ptq(base, calib, QuantConfig(bits=8))
    runners["torch W8A8 fake quant"] = _torch_runner(copy.deepcopy(q))
    runners["onnxruntime W8A8 QDQ"], sizes["onnxruntime W8A8 QDQ"] = _ort_runner(q, example, threads)
    runners["torch fp32, 50% channels"] = _torch_runner(small)
    qs = ptq(small, calib, QuantConfig(bits=8))
    runners["onnxruntime W8A8 QDQ, 50% channels"], sizes["onnxruntime W8A8 QDQ, 50% channels"] = _ort_runner(
        qs, example, threads)  # fmt: skip
    rows = {name: {"accuracy": _accuracy(run, data), "times": {"256": [], "1": []}} for name, run in runners.items()}
    inputs = {b: data.test_batches(batch_size=b).__iter__().__next__()[0].numpy() for b in (256, 1)}
    for _ in range(args.rounds):
        for name, run in runners.items():  # interleaved: every runner sees the same machine load
            for b, x in inputs.items():
                reps = 5 if b == 256 else 200
                run(x)
                start = time.perf_counter()
                for _ in range(reps):
                    run(x)
                rows[name]["times"][str(b)].append((time.perf_counter() - start) / reps)
    ref = {b: statistics.median(rows["torch fp32"]["times"][b]) for b in ("256", "1")}
    print(f"{'model':<36} {'acc %':>6} {'img/s b256':>11} {'x torch':>8} {'img/s b1':>9} {'x torch':>8}")
    for name, r in rows.items():
        med = {b: statistics.median(t) for b, t in r["times"].items()}
        r.update({"images_per_second_256": 256 / med["256"], "images_per_second_1": 1 / med["1"],
                  "ratio_256": ref["256"] / med["256"], "ratio_1": ref["1"] / med["1"], "onnx_bytes": sizes.get(name)})  # fmt: skip
        print(f"{name:<36} {100 * r['accuracy']:>6.2f} {r['images_per_second_256']:>11,.0f} {r['ratio_256']:>7.2f}x "
              f"{r['images_per_second_1']:>9,.0f} {r['ratio_1']:>7.2f}x")  # fmt: skip
    write_result("inference", {"threads": threads, "onnxruntime": ort.__version__, "rows": rows,
                               "note": "50% channels: removed without fine-tuning (speed only)"})  # fmt: skip


if __name__ == "__main__":
    main()
