"""The study's report: ``report.md`` (tables) and four PNG plots, from the results dict alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchshrink._io import atomic_write, atomic_write_bytes

__all__ = ["STUDENT", "ANCHORS", "write_report", "summary_rows", "plot_all", "frontier"]

# The student project's reported figures ("Model Compression Results"): accuracy %, compression ratio.
STUDENT = {
    "original": (93.14, None),
    "pruned": (93.55, 1.5),
    "quantized": (93.24, 4.0),
    "pruned + quantized": (90.95, 4.0),
}
STUDENT_2BIT = 85.81

# The field's published compression ratios at about unchanged accuracy (LeNets on MNIST): drawn on the
# frontier plot at our fp32 size divided by each ratio, as a size to reach, not as measured points.
ANCHORS = (
    ("Deep Compression 39x", 39.0),
    ("100x", 100.0),
    ("soft weight sharing 162x", 162.0),
    ("Bayesian compression ~500x", 500.0),
)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier of ``(bytes, accuracy)`` points: each point no smaller file beats in accuracy,
    ordered by size (ties in size keep the more accurate)."""
    best: list[tuple[float, float]] = []
    for size, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or acc > best[-1][1]:
            best.append((size, acc))
    return best


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    rows = [r for r in rows if r.get(key) is not None]
    return max(rows, key=lambda r: r[key]) if rows else None


def _val(result: dict[str, Any]) -> float | None:
    """Validation accuracy of a pruned model: the gradual stages record it, step-by-step ones per step."""
    if result.get("val_accuracy") is not None:
        return result["val_accuracy"]
    steps = result.get("steps") or []
    return steps[-1].get("val_acc_retrained") if steps else None


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """The student project's table beside ours: technique, their accuracy/ratio, our accuracy/ratio, what we ran."""
    base = results["baseline"]
    fp32 = base["fp32_bytes"]
    it = [{**r, "how": "step-by-step"} for r in results["iterative"]]
    if "gradual" in results:
        it.append({**results["gradual"], "how": "gradual (distilled)"})
    if "continued" in results:
        it.append({**results["continued"], "how": "gradual (distilled, continued)"})
    it += [{**r, "how": "gradual (distilled, continued)"} for r in results.get("continued_more", [])]
    # our pruned row: the sparsest pruned model within 0.3 points of the baseline on the VALIDATION split (the
    # test set only reports), else the first one
    base_val = base["history"][-1]["val_accuracy"]
    ok = [r for r in it if (v := _val(r)) is not None and v >= base_val - 0.003]
    pruned = max(ok, key=lambda r: r["sparsity"]) if ok else it[0]
    q8 = next((r for r in results["quantization"] if r["bits"] == 8 and not r["first_last_8bit"]), None)
    # the point named by its role (config field), not by a substring of its free-text label
    student = next((r for r in results["combined"] if r.get("role") == "student"), results["combined"][0])
    rows = [
        ("Original Model", f"{STUDENT['original'][0]:.2f}", "-", _pct(base["test_accuracy"]), "1.0x",
         f"fp32, {base['parameters']:,} parameters, {fp32:,} bytes"),
        ("Pruned Model", f"{STUDENT['pruned'][0]:.2f}", "1.5x", _pct(pruned["test_accuracy"]),
         f"{1 / (1 - pruned['sparsity']):.1f}x (non-zeros)", f"{pruned['how']} to {100 * pruned['sparsity']:.0f}% sparsity"),
    ]  # fmt: skip
    if q8 is not None:
        acc = q8["qat_test_accuracy"] if q8["qat_test_accuracy"] is not None else q8["ptq_test_accuracy"]
        rows.append(("Quantized Model", f"{STUDENT['quantized'][0]:.2f}", "4x", _pct(acc),
                     f"{fp32 / q8['weight_bytes']:.1f}x (weights)", "W8A8, every layer"))  # fmt: skip
    rows.append(("Pruned + Quantized", f"{STUDENT['pruned + quantized'][0]:.2f}", "4x", _pct(student["test_accuracy"]),
                 f"{student['ratio']:.1f}x (file)", f"{student['label']}, real file loaded back"))  # fmt: skip
    return rows


def _table(head: list[str], rows: list[tuple[Any, ...]] | list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write ``report.md`` and the plots into ``out``; return the report's path."""
    out = Path(out)
    plot_all(results, out)
    base = results["baseline"]
    meta = results["meta"]
    fp32 = base["fp32_bytes"]
    parts = [
        "# torchshrink study report",
        f"{meta['date']} on {meta['machine']['cpu']} ({meta['machine'].get('cpu_capability', '?')}, "
        f"{meta['machine']['cores']} cores, {meta['device']}); "
        f"torch {meta['versions']['torch']}; {meta['train_images']:,} training images, "
        f"{meta['test_images']:,} test images. Accuracies are test-set accuracies.",
        "## Model Compression Results (the student project's table, with ours beside it)",
        _table(
            ["Technique", "Their accuracy (%)", "Their ratio", "Our accuracy (%)", "Our ratio", "Ours is"],
            summary_rows(results),
        ),  # fmt: skip
        "## Memory",
        "Ratio = fp32 bytes of all baseline parameters and buffers / bytes of the file on disk.",
        _table(
            [
                "Model",
                "Parameters",
                "Non-zeros",
                "Bits",
                "Theoretical weight bytes",
                "File bytes",
                "Ratio",
                "Test accuracy (%)",
            ],
            [
                [
                    "fp32 baseline",
                    f"{base['parameters']:,}",
                    f"{base['parameters']:,}",
                    32,
                    f"{fp32:,}",
                    "-",
                    "1.0x",
                    _pct(base["test_accuracy"]),
                ]
            ]
            + [
                [
                    r["label"],
                    f"{r['weight_params']:,}",
                    f"{r['nonzeros']:,}",
                    "/".join(map(str, r["bits"])),
                    f"{r['theoretical_weight_bytes']:,.0f}",
                    f"{r['file_bytes']:,}",
                    f"{r['ratio']:.1f}x",
                    _pct(r["test_accuracy"]),
                ]
                for r in results["combined"]
            ],
        ),  # fmt: skip
        "## Pruning",
        "One-shot (no retraining), test accuracy (%):",
        _table(
            ["Sparsity", "Layer-wise", "Global"],
            [
                [
                    f"{100 * float(s):.0f}%",
                    _pct(results["oneshot"]["test_accuracy"]["layer"][s]),
                    _pct(results["oneshot"]["test_accuracy"]["global"][s]),
                ]
                for s in results["oneshot"]["test_accuracy"]["layer"]
            ],
        ),  # fmt: skip
        "Step-by-step (AGP schedule, retraining after each step):",
        _table(
            ["Target", "Sparsity", "Non-zeros", "Test accuracy (%)", "Seconds"],
            [
                [
                    f"{100 * r['target']:.0f}%",
                    f"{100 * r['sparsity']:.1f}%",
                    f"{r['nonzeros']:,}",
                    _pct(r["test_accuracy"]),
                    f"{r['stage_seconds']:.0f}",
                ]
                for r in results["iterative"]
            ],
        ),  # fmt: skip
        *_gradual_part(results),
        "## Quantization (W/A at the same width)",
        _table(
            ["Bits", "First/last 8-bit", "PTQ (%)", "QAT (%)", "Weight bytes", "Ratio", "Seconds"],
            [
                [
                    f"{r['bits']} (full range)" if r.get("full_range") else r["bits"],
                    "yes" if r["first_last_8bit"] else "no",
                    _pct(r["ptq_test_accuracy"]),
                    _pct(r["qat_test_accuracy"]),
                    f"{r['weight_bytes']:,.0f}",
                    f"{fp32 / r['weight_bytes']:.1f}x",
                    f"{r['stage_seconds']:.0f}",
                ]
                for r in results["quantization"]
            ],
        ),  # fmt: skip
    ]
    parts += _quant_points_part(results)
    s = results["structured"]
    parts += [
        "## Structured pruning (whole channels removed, model rebuilt)",
        _table(
            ["", "Before", "After", "Ratio"],
            [
                [
                    "Conv channels",
                    "/".join(str(before) for before, _ in s["channels"].values()),
                    "/".join(str(after) for _, after in s["channels"].values()),
                    "",
                ],
                [
                    "Parameters",
                    f"{s['params_before']:,}",
                    f"{s['params_after']:,}",
                    f"{s['params_before'] / s['params_after']:.2f}x",
                ],
                [
                    "Multiply-adds",
                    f"{s['macs_before']:,}",
                    f"{s['macs_after']:,}",
                    f"{s['macs_before'] / s['macs_after']:.2f}x",
                ],
                [
                    "CPU latency, batch 256 (ms)",
                    f"{1e3 * s['latency']['256']['dense_s']:.1f}",
                    f"{1e3 * s['latency']['256']['pruned_s']:.1f}",
                    f"{s['latency']['256']['speedup']:.2f}x",
                ],
                [
                    "CPU latency, batch 1 (ms)",
                    f"{1e3 * s['latency']['1']['dense_s']:.2f}",
                    f"{1e3 * s['latency']['1']['pruned_s']:.2f}",
                    f"{s['latency']['1']['speedup']:.2f}x",
                ],
                ["Test accuracy (%)", _pct(base["test_accuracy"]), _pct(s["test_accuracy"]), ""],
                *([["Validation accuracy (%)", _pct(base["val_accuracy"]), _pct(s["val_accuracy"]), ""]]
                  if "val_accuracy" in s and "val_accuracy" in base else []),  # studies before it kept none
            ],
        ),  # fmt: skip
        "## Time per stage (seconds, when computed)",
        _table(["Stage", "Seconds"], [[k, f"{v['stage_seconds']:.0f}"] for k, v in _stage_times(results)]),
        "## Plots",
        "![accuracy vs sparsity](accuracy_vs_sparsity.png)\n\n![accuracy vs bits](accuracy_vs_bits.png)\n\n"
        "![accuracy vs file size](accuracy_vs_size.png)\n\n![sensitivity](sensitivity.png)",
    ]
    path = out / "report.md"
    atomic_write_bytes(path, ("\n\n".join(parts) + "\n").encode())
    return path


def _gradual_part(results: dict[str, Any]) -> list[str]:
    if "gradual" not in results:
        return []
    g = results["gradual"]
    cfg = g["train_config"]
    runs = [(f"{cfg['epochs']} epochs from the dense baseline", g)]
    for more in [results["continued"]] if "continued" in results else []:
        runs.append((f"then {more['train_config']['epochs']} more epochs from that model", more))
    for more in results.get("continued_more", []):
        runs.append((f"then {more['train_config']['epochs']} more epochs from the model above", more))
    return [
        f"Gradual pruning during training (Zhu & Gupta's cubic schedule, mask updated every few steps), distilled "
        f"from the baseline (weight {cfg['distill']:g}, temperature {cfg.get('temperature', 4):g}):",
        _table(
            ["Target", "Run", "Sparsity", "Non-zeros", "Validation accuracy (%)", "Test accuracy (%)", "Seconds"],
            [
                [
                    f"{100 * r['target']:.0f}%",
                    how,
                    f"{100 * r['sparsity']:.1f}%",
                    f"{r['nonzeros']:,}",
                    _pct(r["val_accuracy"]),
                    _pct(r["test_accuracy"]),
                    f"{r['stage_seconds']:.0f}",
                ]
                for how, r in runs
            ],
        ),  # fmt: skip
    ]


def _quant_points_part(results: dict[str, Any]) -> list[str]:
    points = results.get("quant_points", [])
    if not points:
        return []
    base = results["baseline"]

    def epochs(n: int) -> str:
        return f"{n} epoch{'s' * (n != 1)}"

    def how(r: dict[str, Any]) -> str:
        steps = "".join(f"{b}-bit QAT {epochs(r['step_epochs'])}, then " for b in r["steps"])
        distilled = f", distilled ({r['distill']:g})" if r["distill"] else ""
        return f"{steps}{r['bits']}-bit QAT {epochs(r['epochs'])}{distilled}"

    return [
        "Longer low-bit runs (W/A at the same width), against the baseline's "
        f"{_pct(base['test_accuracy'])}% test / {_pct(base['val_accuracy'])}% validation:",
        _table(
            ["Bits", "First/last 8-bit", "Run", "Validation (%)", "Test (%)", "Test delta (points)", "Weight bytes",
             "Seconds"],
            [[f"{r['bits']} (full range)" if r["full_range"] else r["bits"], "yes" if r["first_last_8bit"] else "no",
              how(r), _pct(r["val_accuracy"]), _pct(r["test_accuracy"]),
              f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f}", f"{r['weight_bytes']:,.0f}",
              f"{r['seconds']:.0f}"] for r in points],
        ),
    ]  # fmt: skip


def _stage_times(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [("baseline", results["baseline"]), ("oneshot", results["oneshot"]), ("sensitivity", results["sensitivity"])]
    rows += [(f"iterative {r['target']:g}", r) for r in results["iterative"]]
    if "gradual" in results:
        rows.append((f"gradual {results['gradual']['target']:g}", results["gradual"]))
    if "continued" in results:
        rows.append((f"continued {results['continued']['target']:g}", results["continued"]))
    rows += [(f"continued {r['target']:g}", r) for r in results.get("continued_more", [])]
    rows += [(f"quant W{r['bits']}{' edge8' if r['first_last_8bit'] else ''}", r) for r in results["quantization"]]
    rows += [(r["label"] or f"quant W{r['bits']} longer", r) for r in results.get("quant_points", [])]
    rows += [(r["label"], r) for r in results["combined"]]
    rows.append(("structured", results["structured"]))
    return [(k, v) for k, v in rows if "stage_seconds" in v]


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plot_all(results: dict[str, Any], out: Path) -> None:
    """accuracy_vs_sparsity.png, accuracy_vs_bits.png, accuracy_vs_size.png, sensitivity.png"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_acc = 100 * results["baseline"]["test_accuracy"]
    fp32 = results["baseline"]["fp32_bytes"]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for scope, style in (("layer", "o--"), ("global", "s--")):
        curve = results["oneshot"]["test_accuracy"][scope]
        ax.plot([100 * float(s) for s in curve], [100 * a for a in curve.values()], style, label=f"one-shot, {scope}")
    it = results["iterative"]
    ax.plot([100 * r["sparsity"] for r in it], [100 * r["test_accuracy"] for r in it], "D-", lw=2,
            label="step-by-step (retrained)")  # fmt: skip
    if "gradual" in results:
        g = results["gradual"]
        runs = [g] + ([results["continued"]] if "continued" in results else []) + results.get("continued_more", [])
        ax.plot([100 * r["sparsity"] for r in runs], [100 * r["test_accuracy"] for r in runs], "P-", ms=11,
                color="green", zorder=5, label="gradual during training, distilled")  # fmt: skip
    ax.axhline(base_acc, color="gray", lw=1, ls=":", label=f"baseline {base_acc:.2f}%")
    ax.set(xlabel="sparsity (% of weights removed)", ylabel="test accuracy (%)", title="Pruning: accuracy vs sparsity")
    ax.set_ylim(max(0, min(base_acc - 20, ax.get_ylim()[0])), 100)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out / "accuracy_vs_sparsity.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for edge, tag in ((False, "all layers"), (True, "first/last 8-bit")):
        rows = sorted((r for r in results["quantization"] if r["first_last_8bit"] == edge or r["bits"] == 8),
                      key=lambda r: r["bits"])  # fmt: skip
        if edge and len(rows) <= 1:
            continue
        ax.plot([r["bits"] for r in rows], [100 * r["ptq_test_accuracy"] for r in rows], "o--", label=f"PTQ, {tag}")
        if all(r["qat_test_accuracy"] is not None for r in rows):
            ax.plot([r["bits"] for r in rows], [100 * r["qat_test_accuracy"] for r in rows], "s-", label=f"QAT, {tag}")
    for i, r in enumerate(results.get("quant_points", [])):  # the longer low-bit runs, beside the quick ones
        tag = "first/last 8-bit" if r["first_last_8bit"] else "all layers"
        ax.scatter([r["bits"] + 0.1 * (i + 1)], [100 * r["test_accuracy"]], marker="^", s=70, zorder=6,
                   color=("black", "purple", "saddlebrown", "teal")[i % 4],
                   label=f"{r['label'] or 'longer QAT'} ({tag})")  # fmt: skip
    ax.axhline(base_acc, color="gray", lw=1, ls=":", label=f"fp32 {base_acc:.2f}%")
    ax.scatter([8, 2], [STUDENT["quantized"][0], STUDENT_2BIT], marker="*", s=120, color="red", zorder=5,
               label="student project")  # fmt: skip
    ax.set(xlabel="bits (weights and activations)", ylabel="test accuracy (%)", title="Quantization: accuracy vs bits")
    ax.set_xticks(sorted({r["bits"] for r in results["quantization"]}))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out / "accuracy_vs_bits.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.2, 5.6))
    ax.scatter([fp32 / 1024], [base_acc], marker="o", s=60, color="black", label="fp32 baseline", zorder=4)
    for r in results["combined"]:  # named in the legend: labels written beside the points overlap
        ax.scatter([r["file_bytes"] / 1024], [100 * r["test_accuracy"]], marker="D", s=50, zorder=4,
                   label=f"{r['label']} ({r['ratio']:.0f}x)")  # fmt: skip
    student = [(fp32 / ratio / 1024, acc) for acc, ratio in (STUDENT["pruned"], STUDENT["quantized"],
                                                               STUDENT["pruned + quantized"])]  # fmt: skip
    ax.scatter(*zip(*student, strict=True), marker="*", s=140, color="red", zorder=5,
               label="student project's ratios, applied to our fp32 size")  # fmt: skip
    files = [(fp32 / 1024, base_acc)] + [
        (r["file_bytes"] / 1024, 100 * r["test_accuracy"]) for r in results["combined"]
    ]
    edge = frontier(files)
    ax.step(*zip(*edge, strict=True), where="post", color="black", lw=1, alpha=0.6, label="frontier of our files")
    ax.axhspan(base_acc - 0.5, base_acc, color="green", alpha=0.08, label="within 0.5 points of fp32")
    smallest = min(size for size, _ in files)
    for name, ratio in ANCHORS:
        x = fp32 / ratio / 1024
        ax.axvline(x, color="gray", ls="--", lw=0.7)
        ax.annotate(name, (x, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=6, va="top",
                    ha="right", color="gray")  # fmt: skip
        smallest = min(smallest, x)
    ax.set_xlim(smallest / 1.5, fp32 / 1024 * 1.5)
    ax.set_xscale("log")
    ax.set(xlabel="file size (KiB, log scale); dashed: published ratios at our fp32 size", ylabel="test accuracy (%)",
           title="Accuracy vs real file size (files loaded back)")  # fmt: skip
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.grid(alpha=0.3, which="both")
    _save(fig, out / "accuracy_vs_size.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, curve in results["sensitivity"]["val_accuracy"].items():
        ax.plot([100 * float(s) for s in curve], [100 * a for a in curve.values()], "o-", label=name)
    ax.set(xlabel="sparsity of this layer alone (%)", ylabel="validation accuracy (%)",
           title="Per-layer sensitivity (one-shot, no retraining)")  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out / "sensitivity.png")
    plt.close(fig)
