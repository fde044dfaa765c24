"""Fuzzing the ``.tshrink`` reader at scale: 100k structure-aware mutations of small valid files.

Every case must load into a model that runs with finite outputs, or be refused by ``inspect`` and ``load``
alike with a one-line ``FormatError`` naming the file; crashes (any other exception, or refusal messages
that name no field), hangs (over 20 s) and slow cases (over 2 s) must all be 0. The mutator and the seed
files live with the CI-sized test (``tests/pack/test_fuzz_format.py``); this adds the volume and the memory
figures: the largest traced (Python + numpy) peak of any case and the process's peak RSS, which also counts
torch's allocations.

    python benchmarks/fuzz.py [--cases 100000] [--trace-every 10]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from _common import write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pack"))  # the mutator is defined with the tests
from test_fuzz_format import PEAK_BYTES, SLOW_SECONDS, make_seeds, mutate, run_case, warm_up  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000, help="total cases, spread evenly over the seeds")
    parser.add_argument("--trace-every", type=int, default=10,
                        help="trace Python/numpy allocations in every n-th case (tracing doubles the cost)")  # fmt: skip
    args = parser.parse_args()

    torch.set_num_threads(1)  # models of a few thousand weights: more threads only contend
    t0 = time.perf_counter()
    # the writer's xz preset 9e needs ~700 MiB: make the seeds in a child process, so that this process's
    # peak RSS is the reader's
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seeds = pool.apply(make_seeds)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as tmp:
        warm_up(seeds, Path(tmp))
    rss_seeds = peak_rss_mib()
    print(f"{len(seeds)} seed files ({', '.join(s.name for s in seeds)}) in {time.perf_counter() - t0:.1f}s; "
          f"peak RSS {rss_seeds:.0f} MiB after one load of each")  # fmt: skip
    counts: Counter[str] = Counter()
    by_seed: dict[str, Counter[str]] = {s.name: Counter() for s in seeds}
    failures: list[str] = []
    slowest, slowest_case, peak_traced, traced = 0.0, "", 0, 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-format-") as tmp:
        path = Path(tmp) / "case.tshrink"
        for n in range(args.cases):
            seed = seeds[n % len(seeds)]
            case = n // len(seeds)
            what, blob, contents_only = mutate(seed, case)
            trace = n % args.trace_every == 0
            outcome = run_case(path, seed, blob, contents_only, trace=trace)
            kind = outcome.kind if outcome.seconds <= SLOW_SECONDS or outcome.kind == "hang" else "slow"
            counts[kind] += 1
            by_seed[seed.name][kind] += 1
            traced += trace
            peak_traced = max(peak_traced, outcome.peak)
            if outcome.seconds > slowest:
                slowest, slowest_case = outcome.seconds, f"{seed.name}/{case} {what}"
            if kind not in ("refused", "loaded"):
                failures.append(f"{seed.name}/{case} {what}: {kind} {outcome.detail}"[:400])
            if (n + 1) % 10_000 == 0:
                print(f"  {n + 1:>7} cases  {dict(counts)}  {time.perf_counter() - t0:.0f}s  "
                      f"peak RSS {peak_rss_mib():.0f} MiB", flush=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    bad = {k: counts[k] for k in ("crash", "hang", "slow", "nonfinite", "disagree", "generic message")}
    total = {"cases": args.cases, "refusals": counts["refused"], "loads": counts["loaded"],
             "crashes": bad["crash"] + bad["generic message"] + bad["disagree"] + bad["nonfinite"],
             "hangs": bad["hang"], "slow": bad["slow"], "slowest_case_seconds": round(slowest, 3),
             "slowest_case": slowest_case, "peak_traced_mib": round(peak_traced / 2**20, 2), "traced_cases": traced,
             "peak_rss_mib": round(peak_rss_mib(), 1), "rss_before_cases_mib": round(rss_seeds, 1),
             "seconds": round(seconds, 1)}  # fmt: skip
    print(f"\n{total['cases']} cases in {seconds:.0f}s: {total['refusals']} refused, {total['loads']} loaded, "
          f"{total['crashes']} crashes {bad}, {total['hangs']} hangs, slowest {slowest:.2f}s ({slowest_case}), "
          f"peak traced {total['peak_traced_mib']} MiB over {traced} traced cases, peak RSS "
          f"{total['peak_rss_mib']} MiB ({rss_seeds:.0f} MiB before the first case)")  # fmt: skip
    for line in failures[:10]:
        print(f"    {line}")
    write_result("fuzz_format", {**total, "by_seed": {k: dict(v) for k, v in by_seed.items()},
                                 "failures": failures[:50], "limits": {"slow_seconds": SLOW_SECONDS,
                                 "peak_traced_bytes": PEAK_BYTES}})  # fmt: skip
    if total["crashes"] or total["hangs"] or total["slow"] or peak_traced > PEAK_BYTES:
        sys.exit(1)


if __name__ == "__main__":
    main()
