"""The frontier's headline figures over seeds: docs/frontier.yaml run at each seed, each in its own study
folder (cached and resumable like any study: a killed run goes on where it stopped), then the mean and spread of
every headline figure on test and on validation, and each target met or missed by the mean.

    python benchmarks/frontier_seeds.py                   # seeds 0, 1, 2 (seed 0 is `torchshrink study
                                                          # --config docs/frontier.yaml --out runs/frontier`)
    python benchmarks/frontier_seeds.py --summarize-only  # read the finished folders, run nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from _common import write_result
from torchshrink.study import load_config, run_study

ROOT = Path(__file__).resolve().parents[1]


def folder(runs: Path, seed: int) -> Path:
    return runs / "frontier" if seed == 0 else runs / f"frontier-seed{seed}"


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The figures the targets read, from one study's results.json (accuracies in %)."""
    base = results["baseline"]
    fp32 = base["fp32_bytes"]
    out = {"baseline test": 100 * base["test_accuracy"], "baseline val": 100 * base["val_accuracy"]}
    for r in results["combined"]:
        out[f"{r['label']}: test"] = 100 * r["test_accuracy"]
        out[f"{r['label']}: val"] = 100 * r["val_accuracy"]
        out[f"{r['label']}: bytes"] = r["file_bytes"]
    # the 100x file: of the files at least 100x smaller, the best on VALIDATION (the test set only reports it)
    small = [r for r in results["combined"] if fp32 / r["file_bytes"] >= 100]
    if small:
        best = max(small, key=lambda r: r["val_accuracy"])
        out["100x file (chosen on validation): test delta"] = 100 * (best["test_accuracy"] - base["test_accuracy"])
        out["100x file (chosen on validation): val delta"] = 100 * (best["val_accuracy"] - base["val_accuracy"])
        out["100x file (chosen on validation): bytes"] = best["file_bytes"]
    for r in results.get("quant_points", []):
        out[f"{r['label']}: test delta"] = 100 * (r["test_accuracy"] - base["test_accuracy"])
        out[f"{r['label']}: val delta"] = 100 * (r["val_accuracy"] - base["val_accuracy"])
    for r in results["quantization"]:
        if r["qat_test_accuracy"] is not None:
            tag = f"W{r['bits']}A{r['bits']} quick QAT{' (first/last 8-bit)' if r['first_last_8bit'] else ''}"
            out[f"{tag}: test delta"] = 100 * (r["qat_test_accuracy"] - base["test_accuracy"])
            out[f"{tag}: val delta"] = 100 * (r["qat_val_accuracy"] - base["val_accuracy"])
    s = results["structured"]
    out["structured: test delta"] = 100 * (s["test_accuracy"] - base["test_accuracy"])
    out["structured: val delta"] = 100 * (s["val_accuracy"] - base["val_accuracy"])
    out["structured: speedup at batch 256"] = s["latency"]["256"]["speedup"]
    out["study minutes"] = (
        results["meta"]["wall_seconds_this_run"] / 60 if not results["meta"]["cached_stages"] else float("nan")
    )
    return out


def summarize(rows: dict[int, dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = [k for k in next(iter(rows.values())) if all(k in r for r in rows.values())]
    out = {}
    for k in keys:
        values = [r[k] for r in rows.values() if r[k] == r[k]]  # NaN: not measured (a resumed run's time)
        if values:
            out[k] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--config", default=str(ROOT / "docs" / "frontier.yaml"))
    p.add_argument("--runs", default=str(ROOT / "runs"), help="where the study folders are (default: runs/)")
    p.add_argument("--summarize-only", action="store_true", help="read the finished studies; run nothing")
    args = p.parse_args()
    cfg, runs = load_config(args.config), Path(args.runs)
    rows: dict[int, dict[str, float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = folder(runs, seed)
        if args.summarize_only:
            if not (out / "results.json").is_file():
                print(f"seed {seed}: no finished study in {out}")
                continue
            results = json.loads((out / "results.json").read_text())
        else:
            results = run_study(dataclasses.replace(cfg, seed=seed), out)
        rows[seed] = headline(results)
    if not rows:
        raise SystemExit("no finished study to summarize")
    summary = summarize(rows)
    width = max(map(len, summary))
    print(f"{'figure':<{width}}  {'mean':>9} {'min':>9} {'max':>9}  seeds")
    for k, v in summary.items():
        print(f"{k:<{width}}  {v['mean']:9.2f} {v['min']:9.2f} {v['max']:9.2f}  {v['n']}")
    write_result("frontier_seeds", {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
                                    "seeds": sorted(rows), "per_seed": {str(s): r for s, r in rows.items()},
                                    "summary": summary})  # fmt: skip


if __name__ == "__main__":
    main()
