"""Quantization benchmark: test accuracy for W/A at 8/8, 6/6, 4/4, 2/2 with PTQ and QAT (all layers at the
width, and the variant with first/last layers at 8 bits), weight storage bytes, and QAT wall time.

    python benchmarks/quantization.py [--checkpoint runs/baseline] [--qat-epochs 2]
"""

from __future__ import annotations

import argparse
import time

from _common import write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.data import load_fashion_mnist
from torchshrink.models import fp32_bytes
from torchshrink.quant import QuantConfig, storage_report
from torchshrink.recipes import ptq, qat
from torchshrink.recipes.train import TrainConfig, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/baseline")
    parser.add_argument("--bits", default="8,6,4,2")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--calibration", default="percentile")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    base = load_checkpoint(args.checkpoint).model
    float_acc, _ = evaluate(base, data.test_batches())
    float_val, _ = evaluate(base, data.val_batches())
    print(f"float test accuracy {100 * float_acc:.2f}%")
    rows = []
    for bits in (int(b) for b in args.bits.split(",")):
        for edge8 in (False, True):
            if edge8 and bits not in (4, 2):  # the variant matters below 6 bits
                continue
            config = QuantConfig(bits=bits, keep_first_last_8bit=edge8, act_calibration=args.calibration)
            q = ptq(base, data, config).model
            storage = sum(r.total_bytes for r in storage_report(q))
            ptq_acc, _ = evaluate(q, data.test_batches())
            ptq_val, _ = evaluate(q, data.val_batches())
            start = time.perf_counter()
            result = qat(base, data, config, train=TrainConfig(epochs=args.qat_epochs, lr=args.lr), log=None)
            q, history = result.model, result.history
            qat_seconds = time.perf_counter() - start
            qat_acc, _ = evaluate(q, data.test_batches())
            row = {
                "bits": bits, "act_bits": config.activation_bits, "first_last_8bit": edge8,
                "weight_bytes": storage, "ratio_vs_fp32": fp32_bytes(base) / storage,
                "ptq_test_accuracy": ptq_acc, "ptq_val_accuracy": ptq_val,
                "qat_test_accuracy": qat_acc, "qat_val_accuracy": history[-1].val_accuracy,
                "qat_seconds": qat_seconds, "qat_epochs": args.qat_epochs,
                "ptq_delta_points": 100 * (ptq_acc - float_acc), "qat_delta_points": 100 * (qat_acc - float_acc),
            }  # fmt: skip
            rows.append(row)
            print(f"W{bits}A{bits}{' (first/last 8-bit)' if edge8 else ''}: PTQ {100 * ptq_acc:.2f}% "
                  f"({row['ptq_delta_points']:+.2f}), QAT {100 * qat_acc:.2f}% ({row['qat_delta_points']:+.2f}) "
                  f"in {qat_seconds:.0f}s, weights {storage:,.0f} B ({row['ratio_vs_fp32']:.1f}x)", flush=True)  # fmt: skip
    write_result("quantization", {"float_test_accuracy": float_acc, "float_val_accuracy": float_val,
                                  "fp32_bytes": fp32_bytes(base), "rows": rows, "settings": vars(args)})  # fmt: skip


if __name__ == "__main__":
    main()
