"""Fuzzing the loaders at scale: ~100k mutated checkpoints, data files and study configs.

Every case must load correctly or be refused with its area's error naming the file; crashes (any other
exception, or a load that differs from the file), hangs and unclear messages must all be 0. The generators
live with the CI-sized test (``tests/test_fuzz_inputs.py``); this adds a 4 GiB gzip bomb and the volume.

    python benchmarks/fuzz_inputs.py [--cases 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the generators are defined with the tests
from test_fuzz_inputs import MEMORY_MIB, Tally, _bomb, fuzz, make_bases, peak_rss_mib  # noqa: E402
from torchshrink.data import find_data_dir  # noqa: E402

SHARES = {"checkpoint": 0.4, "data": 0.2, "config": 0.4}  # of the cases; data cases are the slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000, help="total cases over the three areas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bomb-gib", type=float, default=4.0, help="decompressed size of the largest bomb")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        bases = make_bases(root / "bases", find_data_dir(download=False))
        bases.bombs.append(_bomb(int(args.bomb_gib * (1 << 30))))  # the finding: 4 MB on disk, 8.3 GiB inflated
        print(f"bases ready in {time.perf_counter() - t0:.1f}s; bombs: "
              f"{', '.join(f'{len(b):,} B' for b in bases.bombs)}; peak RSS {peak_rss_mib():.0f} MiB")  # fmt: skip
        rows = {}
        for area, share in SHARES.items():
            folder = root / area
            folder.mkdir()
            t0 = time.perf_counter()
            tally = fuzz(area, int(args.cases * share), args.seed, bases, folder)
            rows[area] = _row(tally, time.perf_counter() - t0)
            _print(area, rows[area], tally)
    total = {k: sum(r[k] for r in rows.values()) for k in ("cases", "refused", "loaded", "warned", "crashes",
                                                             "unclear", "slow", "hangs", "memory")}  # fmt: skip
    total["peak_rss_mib"] = peak_rss_mib()
    total["max_case_seconds"] = max(r["max_case_seconds"] for r in rows.values())
    print(f"\n{'all':<11} {total['cases']:>7} cases  {total['refused']:>7} refused  {total['loaded']:>7} loaded  "
          f"{total['crashes']} crashes  {total['hangs']} hangs  {total['unclear']} unclear  {total['slow']} slow  "
          f"{total['memory']} over {MEMORY_MIB} MiB  "
          f"slowest {total['max_case_seconds']:.2f}s  peak RSS {total['peak_rss_mib']:.0f} MiB")  # fmt: skip
    write_result("fuzz_inputs", {"seed": args.seed, "bomb_gib": args.bomb_gib, "areas": rows, "total": total})
    if total["crashes"] or total["hangs"] or total["unclear"] or total["slow"] or total["memory"]:
        sys.exit(1)


def _row(tally: Tally, seconds: float) -> dict:
    return {"cases": tally.cases, "refused": tally.refused, "loaded": tally.loaded, "warned": tally.warned,
            "crashes": len(tally.crashes), "unclear": len(tally.unclear), "slow": len(tally.slow),
            "hangs": len(tally.hangs), "memory": len(tally.memory), "max_case_seconds": tally.max_seconds,
            "seconds": seconds, "failures": tally.failures[:20], "ops": dict(sorted(tally.ops.items()))}  # fmt: skip


def _print(area: str, row: dict, tally: Tally) -> None:
    print(f"{area:<11} {row['cases']:>7} cases  {row['refused']:>7} refused  {row['loaded']:>7} loaded "
          f"({row['warned']} warned)  {row['crashes']} crashes  {row['hangs']} hangs  {row['unclear']} unclear  "
          f"{row['slow']} slow  {row['memory']} over {MEMORY_MIB} MiB  slowest {row['max_case_seconds']:.2f}s  "
          f"{row['seconds']:.0f}s  peak RSS {peak_rss_mib():.0f} MiB")  # fmt: skip
    for line in tally.failures[:5]:
        print(f"    {line}")


if __name__ == "__main__":
    main()
