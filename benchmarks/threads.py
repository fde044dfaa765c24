"""Training throughput idle and beside another busy process, for several thread settings: a machine that is
shared (a second job, a browser, a CI neighbour) should slow training down gracefully, not by 3x.

Each setting runs the training step of the study's CNN (batch 256, SGD, channels-last) in a fresh process
(OpenMP reads its settings when torch loads), idle and beside a busy process that keeps one core at 100%;
settings and loads interleaved over rounds, medians reported.

    python benchmarks/threads.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import write_result

STEP = r"""
import sys, torch
sys.path.insert(0, BENCHMARKS)
from _train_step import train_images_per_second
from torchshrink.models import build_model
torch.manual_seed(0)
print(train_images_per_second(build_model("cnn"), STEPS, warmup=3), torch.get_num_threads())
"""

BUSY = "while True: pass"  # one core at 100%, as a CPU-bound neighbour does

SETTINGS: dict[str, dict[str, str]] = {
    "torchshrink's default (nothing set)": {},
    "2 threads (torch default here)": {"OMP_NUM_THREADS": "2"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "2 threads, GOMP_SPINCOUNT=10000": {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": "10000"},
}


def _run(env: dict[str, str], steps: int) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))}
    # the explicit settings import torch first, so that torchshrink's own default (set on its import, when
    # torch is not loaded yet) does not apply; "nothing set" imports torchshrink first, as its command line does
    code = ("import torchshrink\n" if not env else "") + STEP.replace("STEPS", str(steps)).replace(
        "BENCHMARKS", repr(str(Path(__file__).resolve().parent))
    )
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return float(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per measurement")
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {name: {"idle": [], "busy": []} for name in SETTINGS}
    for _ in range(args.rounds):
        for load in ("idle", "busy"):
            neighbour = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
            try:
                time.sleep(0.5 if neighbour else 0)
                for name, env in SETTINGS.items():
                    times[name][load].append(_run(env, args.steps))
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    ref = statistics.median(times["2 threads (torch default here)"]["idle"])
    rows = {}
    print(f"{'setting':<36} {'idle img/s':>10} {'busy img/s':>10} {'busy/idle':>9} {'idle vs default':>15}")
    for name, t in times.items():
        idle, busy = statistics.median(t["idle"]), statistics.median(t["busy"])
        rows[name] = {"env": SETTINGS[name], "idle": t["idle"], "busy": t["busy"], "idle_images_per_second": idle,
                      "busy_images_per_second": busy, "busy_over_idle": busy / idle, "idle_over_default": idle / ref}  # fmt: skip
        print(f"{name:<36} {idle:>10,.0f} {busy:>10,.0f} {busy / idle:>9.2f} {idle / ref:>15.2f}")
    write_result("threads", {"rows": rows, "steps": args.steps, "rounds": args.rounds, "neighbour": BUSY})


if __name__ == "__main__":
    main()
