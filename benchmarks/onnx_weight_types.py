"""onnxruntime speed of a W8A8 export with uint8 weights (the default: exact on every CPU) and with int8 weights
(exact only where onnxruntime's uint8 x int8 kernels do not saturate: x86 with VNNI), beside the fp32 export:
images/s at batch 1 and 256, 1 and 2 threads, interleaved in one run (the machine is noisy), with each W8A8
graph's agreement with torchshrink's fake-quant model.

    python benchmarks/onnx_weight_types.py                # the study's CNN, random weights
    python benchmarks/onnx_weight_types.py --model cnn_tiny

Random weights and inputs are enough for speed; the agreement column shows what int8 weights cost on a CPU
without VNNI (onnxruntime adds two uint8 x int8 products in a saturating int16 there).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from _common import write_result
from torchshrink.export import onnx_agreement, to_onnx
from torchshrink.models import build_model
from torchshrink.quant import QuantConfig
from torchshrink.recipes import ptq

BATCHES = (1, 256)
THREADS = (1, 2)


def _vnni() -> bool:
    """Whether the CPU has VNNI (AVX512-VNNI or AVX-VNNI): then onnxruntime's uint8 x int8 kernels are exact."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _session(blob: bytes, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def _seconds_per_batch(session: Any, x: np.ndarray, reps: int) -> float:
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    start = time.perf_counter()
    for _ in range(reps):
        session.run(None, {name: x})
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", help="a registered model name (random weights)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    base = build_model(args.model).eval()
    q = ptq(base, [torch.randn(256, 1, 28, 28)], QuantConfig(bits=8)).model.eval()
    example = torch.zeros(1, 1, 28, 28)
    blobs = {
        "onnxruntime fp32": to_onnx(base, example).SerializeToString(),
        "onnxruntime W8A8, uint8 weights": to_onnx(q, example).SerializeToString(),
        "onnxruntime W8A8, int8 weights": to_onnx(q, example, weight_type="int8").SerializeToString(),
    }
    inputs = {b: torch.randn(b, 1, 28, 28, generator=torch.Generator().manual_seed(1)).numpy() for b in BATCHES}
    sessions = {(name, t): _session(blob, t) for name, blob in blobs.items() for t in THREADS}
    times: dict[tuple[str, int, int], list[float]] = {(n, t, b): [] for (n, t) in sessions for b in BATCHES}
    for _ in range(args.rounds):
        for (name, t), session in sessions.items():  # interleaved: every graph sees the same machine load
            for b, x in inputs.items():
                times[name, t, b].append(_seconds_per_batch(session, x, reps=4 if b == 256 else 500))
    checks = [torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(2))]
    rows: dict[str, dict[str, Any]] = {}
    for name, blob in blobs.items():
        agreement = None if "fp32" in name else onnx_agreement(q, blob, checks, threads=1)
        rows[name] = {"onnx_bytes": len(blob), "agreement": agreement, "images_per_second": {}}
        for t in THREADS:
            for b in BATCHES:
                label = f"{t} thread{'s' if t > 1 else ''}, batch {b}"
                rows[name]["images_per_second"][label] = b / statistics.median(times[name, t, b])
    fp32 = rows["onnxruntime fp32"]["images_per_second"]
    columns = list(fp32)
    print(f"{'graph':<33} " + " ".join(f"{c:>22}" for c in columns) + f" {'top-1 agree':>11} {'max |logit diff|':>16}")
    for name, row in rows.items():
        speeds = " ".join(f"{row['images_per_second'][c]:>10,.0f} ({row['images_per_second'][c] / fp32[c]:4.2f}x)"
                          f"{'':>3}" for c in columns)  # fmt: skip
        agree = row["agreement"]
        tail = f" {agree['top1_agreement']:>11.4f} {agree['max_logit_difference']:>16.2e}" if agree else ""
        print(f"{name:<33} {speeds}{tail}")
    write_result("onnx_weight_types", {"model": args.model, "weights": "random (seed 0), W8A8 PTQ on random inputs",
                                       "vnni": _vnni(), "onnxruntime": ort.__version__, "rounds": args.rounds,
                                       "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
