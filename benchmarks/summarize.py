"""Print the benchmark results (benchmarks/results/*.json) as markdown tables, for the README.

python benchmarks/summarize.py
"""

from __future__ import annotations

import json

from _common import RESULTS


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table(head: list[str], rows: list[list[object]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])  # fmt: skip


def host(result: dict) -> str:
    """When and on what a result was measured: vector width changes rounding, hence retrained accuracies."""
    isa = result["machine"].get("cpu_capability")  # recorded since 2026-11-29 13:40
    return result["date"][5:16].replace("T", " ") + (f", {isa}" if isa else "")


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    base = load("train_baseline")
    if base:
        p = base["pipeline"]
        print(f"Baseline ({base['date']}, {base['machine']['cpu']}, {base['machine']['cores']} cores): "
              f"test accuracy {pct(base['test_accuracy'])}%, validation {pct(base['val_accuracy'])}%, "
              f"{base['config']['epochs']} epochs in {base['train_seconds']:.0f} s "
              f"({base['images_per_second']:.0f} images/s); {base['parameters']:,} parameters, "
              f"{base['fp32_bytes']:,} bytes fp32. Training loop / bare forward+backward: "
              f"{p['loop_images_per_second']:.0f} / {sum(p['bare_images_per_second']) / 2:.0f} images/s "
              f"= {p['ratio']:.2f}.\n")  # fmt: skip
    pr = load("pruning")
    if pr:
        one = pr["oneshot"]
        print(
            table(
                ["One-shot sparsity", "layer-wise (%)", "global (%)"],
                [[f"{100 * float(s):.0f}%", pct(one["layer"][s]), pct(one["global"][s])] for s in one["layer"]],
            )
        )
        print()
        print(table(["Step-by-step sparsity", "test accuracy (%)", "vs baseline (points)", "cumulative wall (s)"],
                    [[f"{100 * r['sparsity']:.1f}%", pct(r["test_accuracy"]), f"{r['delta_points']:+.2f}",
                      f"{r['wall_seconds']:.0f}"] for r in pr["iterative"]]))  # fmt: skip
        s = pr["structured"]
        print()
        print(table(["Structured, 50% of conv channels", "before", "after", "ratio"], [
            ["parameters", f"{s['params_before']:,}", f"{s['params_after']:,}", f"{s['params_before'] / s['params_after']:.2f}x"],
            ["multiply-adds", f"{s['macs_before']:,}", f"{s['macs_after']:,}", f"{s['macs_before'] / s['macs_after']:.2f}x"],
            ["CPU latency batch 256 (ms)", f"{1e3 * s['latency']['256']['dense_s']:.1f}",
             f"{1e3 * s['latency']['256']['pruned_s']:.1f}", f"{s['latency']['256']['speedup']:.2f}x"],
            ["CPU latency batch 1 (ms)", f"{1e3 * s['latency']['1']['dense_s']:.2f}",
             f"{1e3 * s['latency']['1']['pruned_s']:.2f}", f"{s['latency']['1']['speedup']:.2f}x"],
            ["test accuracy (%)", pct(pr["baseline_test_accuracy"]), pct(s["test_accuracy_finetuned"]),
             f"{s['delta_points']:+.2f} points"]]))  # fmt: skip
        print()
    q = load("quantization")
    if q:
        print(table(["W/A bits", "first/last 8-bit", "PTQ (%)", "QAT (%)", "QAT vs float (points)", "weight bytes",
                     "ratio", "QAT wall (s)"],
                    [[f"{r['bits']}/{r['act_bits']}", "yes" if r["first_last_8bit"] else "no",
                      pct(r["ptq_test_accuracy"]), pct(r["qat_test_accuracy"]), f"{r['qat_delta_points']:+.2f}",
                      f"{r['weight_bytes']:,.0f}", f"{r['ratio_vs_fp32']:.1f}x", f"{r['qat_seconds']:.0f}"]
                     for r in q["rows"]]))  # fmt: skip
        print()
    recipes = sorted(RESULTS.glob("pruning_recipes_*.json"))
    if recipes:
        rows = []
        for path in recipes:
            d = json.loads(path.read_text())
            for r in d["recipes"]:
                s = d["settings"]
                kd = f", distill {s['distill']:g} T {s.get('temperature', 4):g}" if "distill" in r["recipe"] else ""
                warm = f"from {100 * r['initial_sparsity']:.0f}%: " if r["initial_sparsity"] else ""
                how = (f"{warm}{s['gradual_epochs']} epochs, lr {s['gradual_lr']:g}{kd}, window {s['window']}, "
                       f"seed {s.get('seed', 0)}" if r["recipe"].startswith("gradual")
                       else f"from {100 * r['initial_sparsity']:.0f}%: {s['steps']} steps x {s['epochs_per_step']} "
                            f"epochs" + (f" + {s['final_epochs']} final" if "final" in r["recipe"] else ""))  # fmt: skip
                rows.append([(r["sparsity"], d["date"]), r["recipe"], how, f"{100 * r['sparsity']:.1f}%", pct(r["val_accuracy"]),
                             f"{r['val_delta_points']:+.2f}", pct(r["test_accuracy"]),
                             f"{r['test_delta_points']:+.2f}", f"{r['seconds']:.0f}", host(d)])  # fmt: skip
        print(table(["recipe", "schedule", "sparsity", "val (%)", "val vs base", "test (%)", "test vs base",
                     "wall (s)", "run"], [row[1:] for row in sorted(rows, key=lambda row: row[0])]))  # fmt: skip
        print()
    c = load("compression")
    if c:
        print(table(["point", "storage", "bits", "theoretical B", "file B", "ratio", "val (%)", "test (%)",
                     "vs fp32 (points)"],
                    [[r["label"], r["storage"], "/".join(map(str, r["bits"])), f"{r['theoretical_weight_bytes']:,.0f}",
                      f"{r['file_bytes']:,}", f"{r['ratio']:.1f}x", pct(r.get("val_accuracy")),
                      pct(r["test_accuracy"]), f"{r['delta_points']:+.2f}"] for r in c["rows"]]))  # fmt: skip
    extra = sorted(RESULTS.glob("compression_*.json"), key=lambda path: json.loads(path.read_text())["date"])
    if extra:
        print()
        rows = []
        for path in extra:
            d = json.loads(path.read_text())
            for r in d["rows"]:
                if r.get("storage") != "huffman+auto":  # rows without storage: points refused (an "error")
                    continue
                mp = r.get("mixed_precision") or {}
                widths = "/".join(str(b) for b in mp.get("bits", {}).values()) or "/".join(map(str, r["bits"]))
                rows.append([r["label"], r["pruned_from"], d["settings"]["epochs"], widths, f"{r['file_bytes']:,}",
                             f"{r['ratio']:.1f}x", pct(r.get("val_accuracy")),
                             f"{r['val_loss']:.4f}" if "val_loss" in r else "-", pct(r["test_accuracy"]),
                             f"{r['delta_points']:+.2f}", host(d)])  # fmt: skip
        print(table(["point", "pruned model", "fine-tune epochs", "widths", "file B", "ratio", "val (%)", "val loss",
                     "test (%)", "vs fp32 (points)", "run"], rows))  # fmt: skip
    families()
    inference()
    distributed()
    threads()
    low_bit()
    low_bit("low_bit_w2a2_erase")
    structured_recipes()
    structured_recipes("structured_recipes_erase")
    baseline_recipes()
    shapes()


def shapes() -> None:
    """Cost of each conv width: latency at batch 256 and training-step time (benchmarks/shapes.py)."""
    d = load("shapes")
    if not d:
        return
    rows = [[r["channels"], f"{r['parameters']:,}", f"{r['latency_256_ms']:.1f}", f"{r['speedup_256']:.2f}x",
             f"{r['train_time_vs_default']:.2f}x" if "train_time_vs_default" in r else "-"] for r in d["rows"]]  # fmt: skip
    print(f"\nCNN shapes ({host(d)}; interleaved, medians of {d['rounds']} rounds; the first row is the default):\n")
    print(table(["channels", "parameters", "ms per batch of 256", "speedup", "training-step time"], rows))


def baseline_recipes() -> None:
    """Baseline training recipes (benchmarks/baseline_recipes.py)."""
    d = load("baseline_recipes")
    if not d:
        return
    rows = [[r["label"], pct(r["val_accuracy"]), f"{r['val_loss']:.4f}", pct(r["test_accuracy"]),
             f"{r['train_seconds']:.0f}"] for r in d["rows"]]  # fmt: skip
    best = max(d["rows"], key=lambda r: r["val_accuracy"])["label"]
    print(f"\nBaseline recipes ({host(d)}; seed 0 unless the label names one; best on validation: {best}):\n")
    print(table(["recipe", "val (%)", "val loss", "test (%)", "train seconds"], rows))


def inference() -> None:
    """torch and onnxruntime, fp32 and W8A8, dense and channel-removed (benchmarks/inference.py)."""
    d = load("inference")
    if not d or "profiles_batch_256" not in d:
        return
    rows = [[name, pct(r["val_accuracy"]), pct(r["test_accuracy"]), f"{r['images_per_second_256']:,.0f}",
             f"{r['ratio_256']:.2f}x", f"{r['images_per_second_1']:,.0f}", f"{r['ratio_1']:.2f}x"]
            for name, r in d["rows"].items()]  # fmt: skip
    c = d["channels_removed"]
    print(f"\nInference ({host(d)}, {d['threads']} threads, onnxruntime {d['onnxruntime']}; medians of interleaved "
          f"rounds; channels removed: {100 * c['amount']:.0f}% of every conv's, then {c['finetune_epochs']} epochs "
          "of fine-tuning):\n")  # fmt: skip
    print(table(["model", "val (%)", "test (%)", "images/s, batch 256", "vs torch fp32", "images/s, batch 1",
                 "vs torch fp32"], rows))  # fmt: skip
    print("\nonnxruntime's profile at batch 256 (share of kernel time):\n")
    for name, shares in d["profiles_batch_256"].items():
        print(f"- {name}: " + ", ".join(f"{op} {100 * v:.0f}%" for op, v in list(shares.items())[:5]))


def distributed() -> None:
    """Training images/s for 1 and 2 CPU processes (benchmarks/distributed.py)."""
    d = load("distributed")
    if not d:
        return
    rows = [[r["processes"], r["threads_per_process"], f"{max(r['images_per_second']):,.0f}", pct(r["val_accuracy"])]
            for r in d["runs"]]  # fmt: skip
    print(
        f"\nDistributed training ({host(d)}, {d['backend']}, {d['config']['images']:,} images, "
        f"{d['config']['epochs']} epoch, batch {d['config']['batch_size']}):\n"
    )
    print(table(["processes", "threads each", "images/s", "val (%)"], rows))


def threads() -> None:
    """Training images/s idle and beside a busy process per thread setting (benchmarks/threads.py)."""
    d = load("threads")
    if not d:
        return
    rows = [[name, f"{r['idle_images_per_second']:,.0f}", f"{r['busy_images_per_second']:,.0f}",
             f"{r['busy_over_idle']:.2f}", f"{r['idle_over_default']:.2f}"] for name, r in d["rows"].items()]  # fmt: skip
    print(f"\nTraining step beside a busy process ({host(d)}; medians of {d['rounds']} interleaved rounds):\n")
    print(table(["setting", "idle images/s", "busy images/s", "busy / idle", "idle vs torch default"], rows))


def low_bit(name: str = "low_bit_w2a2") -> None:
    """W2A2 QAT recipes (benchmarks/low_bit.py)."""
    d = load(name)
    if not d:
        return
    rows = [[r["label"], pct(r["val_accuracy"]), pct(r["test_accuracy"]), f"{r['delta_points']:+.2f}",
             f"{r['weight_bytes']:,.0f}", f"{r['seconds']:.0f}"] for r in d["rows"]]  # fmt: skip
    print(f"\nW2A2 QAT recipes ({host(d)}; baseline {pct(d['baseline_test_accuracy'])}% test; chosen on validation: "
          f"{d['chosen']}):\n")  # fmt: skip
    print(table(["recipe", "val (%)", "test (%)", "vs fp32 (points)", "weight bytes", "seconds"], rows))


def structured_recipes(name: str = "structured_recipes") -> None:
    """Channel pruning recipes: accuracy and torch speedup at batch 256 (benchmarks/structured_recipes.py)."""
    d = load(name)
    if not d:
        return
    rows = [[r["label"], "/".join(map(str, r.get("channels") or [])) or "-", pct(r["val_accuracy"]),
             pct(r["test_accuracy"]), f"{r['delta_points']:+.2f}", f"{r['speedup_256']:.2f}x", f"{r['seconds']:.0f}"]
            for r in d["rows"]]  # fmt: skip
    by_shape = d.get("speedup_by_shape") or {
        f"{100 * float(a):.0f}%": v for a, v in d.get("speedup_by_amount", {}).items()
    }
    speeds = ", ".join(f"{k} {v:.2f}x" for k, v in by_shape.items())
    print(f"\nChannel pruning recipes ({host(d)}; baseline {pct(d['baseline_test_accuracy'])}% test; speedup per "
          f"architecture, median of its runs: {speeds}; chosen: {d.get('chosen')}):\n")  # fmt: skip
    print(table(["recipe", "kept channels", "val (%)", "test (%)", "vs fp32 (points)", "torch speedup, batch 256",
                 "seconds"], rows))  # fmt: skip


def families() -> None:
    """Four user-style model families (benchmarks/model_families.py): file ratios, fidelity, channel pruning."""
    d = load("model_families")
    if not d:
        return
    print()
    rows = []
    for r in d["rows"]:
        st = r.get("structured_50")
        rows.append([r["family"], f"{r['parameters']:,}", f"{r['fp32_bytes']:,}",
                     *(f"{r[k]['ratio']:.1f}x" for k in ("w8a8", "w4a4", "lamp80_w8a8", "lamp80_codebook4")),
                     f"{100 * r['w8a8']['top1_agreement']:.1f} / {100 * r['w4a4']['top1_agreement']:.1f}",
                     f"{st['speedup']:.2f}x ({st['dense_ms']:.1f} -> {st['pruned_ms']:.1f} ms)" if st else "-",
                     ", ".join(sorted(r["skipped"])) or "-"])  # fmt: skip
    print(
        f"Model families ({host(d)}; random weights, synthetic inputs: fidelity is top-1 agreement with the float "
        "model; every file loaded back into a fresh instance):\n"
    )
    print(table(["family", "params", "fp32 B", "W8A8 file", "W4A4 file", "80% LAMP + W8A8", "80% LAMP + 4-bit codebook",
                 "agree W8A8 / W4A4 (%)", "50% channels, batch 256", "left in float"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
