"""Compression benchmark: real files on disk, loaded back and evaluated on the full test set.

* the student project's point: 40% pruned + 8 bits (it reported 90.95% at 4x);
* a frontier over sparsity x bits x (uniform | codebook) x (entropy coding on | off), each with theoretical
  weight bytes and actual file bytes. Ratio = fp32 bytes of all baseline parameters and buffers / file bytes.

Pruned starting points come from the pruning benchmark (``runs/baseline-pruned-iterative-S``) when present.

    python benchmarks/compression.py [--checkpoint runs/baseline] [--qat-epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from _common import write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.compress import CompressConfig, compress_model, write_and_verify
from torchshrink.data import load_fashion_mnist
from torchshrink.pruning import iterative_prune, make_permanent
from torchshrink.train import TrainConfig, evaluate


def pruned_start(base, data, checkpoint: str, sparsity: float):
    path = Path(f"{checkpoint}-pruned-iterative-{sparsity:g}")
    if sparsity == 0:
        return copy.deepcopy(base), "baseline"
    if path.is_dir():
        return load_checkpoint(path).model, str(path)
    model = copy.deepcopy(base)
    iterative_prune(model, data, sparsity, 2, TrainConfig(epochs=1, lr=0.02), log=None)
    return make_permanent(model), "pruned here (2 steps x 1 epoch)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/baseline")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--sparsities", default="0.4,0.9,0.95")
    parser.add_argument("--out", default="runs/compressed")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_fashion_mnist(args.data_dir)
    ckpt = load_checkpoint(args.checkpoint)
    base, name, margs = ckpt.model, ckpt.meta["model"], ckpt.meta.get("model_args", {})
    base_acc, _ = evaluate(base, data.test_x, data.test_y)
    print(f"baseline test accuracy {100 * base_acc:.2f}%")
    # (bits, act_bits, codebook, fine-tune epochs)
    variants = [(8, 8, False, 0), (4, 4, False, args.qat_epochs), (4, 8, True, 1), (2, 8, True, 1)]
    rows = []
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        start_model, origin = pruned_start(base, data, args.checkpoint, sparsity)
        for bits, act_bits, use_codebook, epochs in variants:
            cfg = CompressConfig(sparsity=sparsity, bits=bits, act_bits=act_bits, codebook=use_codebook,
                                 qat_epochs=epochs)  # fmt: skip
            t0 = time.perf_counter()
            model, record = compress_model(base, data, cfg, log=None, pruned=start_model)
            seconds = time.perf_counter() - t0
            tag = f"s{sparsity:g}-w{bits}a{act_bits}-{'codebook' if use_codebook else 'uniform'}"
            for compression in ("none", "auto"):
                path = Path(args.out) / f"{tag}-{compression}.tshrink"
                result = write_and_verify(model, base, data, path, name, margs, compression)
                row = {"config": cfg.to_dict(), "pruned_from": origin, "entropy_coding": compression != "none",
                       **result, "delta_points": 100 * (result["test_accuracy"] - base_acc),
                       "seconds": seconds}  # fmt: skip
                rows.append(row)
                print(f"{tag:<28} {'entropy' if compression != 'none' else 'raw    '} {result['file_bytes']:>8,} B "
                      f"{result['ratio']:6.1f}x  test {100 * result['test_accuracy']:.2f}% "
                      f"({row['delta_points']:+.2f})  theory {result['theoretical_weight_bytes']:,.0f} B", flush=True)  # fmt: skip
    within = [r for r in rows if r["delta_points"] >= -0.5]
    best_ratio = max(within, key=lambda r: r["ratio"]) if within else None
    keep93 = [r for r in rows if r["test_accuracy"] >= 0.93]
    smallest93 = min(keep93, key=lambda r: r["file_bytes"]) if keep93 else None
    student = [r for r in rows if r["config"]["sparsity"] == 0.4 and r["config"]["bits"] == 8
               and not r["config"]["codebook"]]  # fmt: skip
    write_result("compression", {"baseline_test_accuracy": base_acc, "rows": rows,
                                 "student_point": student,
                                 "best_ratio_within_0.5_points": best_ratio, "smallest_file_at_93": smallest93,
                                 "settings": vars(args)})  # fmt: skip
    if best_ratio:
        print(f"best ratio within 0.5 points: {best_ratio['file']} {best_ratio['ratio']:.1f}x "
              f"{100 * best_ratio['test_accuracy']:.2f}%")  # fmt: skip
    if smallest93:
        print(f"smallest file >= 93.0%: {smallest93['file']} {smallest93['file_bytes']:,} B "
              f"{100 * smallest93['test_accuracy']:.2f}%")  # fmt: skip


if __name__ == "__main__":
    main()
