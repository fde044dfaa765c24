"""What each conv width of the default CNN costs on this CPU: forward latency at batch 256 (what channel
pruning buys) and training-step throughput (what a wider baseline costs), for several ``ShrinkCNN(channels=...)``
shapes, all timed interleaved in one process so that they see the same machine load; medians of the rounds.
Random weights: speed depends on the shape only.

    python benchmarks/shapes.py
"""

from __future__ import annotations

import argparse
import statistics

import torch

from _common import write_result
from _train_step import train_images_per_second
from torchshrink.measure import latency
from torchshrink.models import ShrinkCNN, parameter_count

DEFAULT = (32, 64, 128)
PRUNED = [(16, 32, 64), (8, 32, 64), (8, 32, 96), (16, 32, 48), (24, 32, 64), (8, 48, 64)]  # channel-pruned shapes
WIDER = [(32, 64, (128, 128)), (16, 64, (128, 128)), (32, (64, 64), 128), (32, 96, 192)]  # baseline candidates


def _label(shape: tuple) -> str:
    return "/".join("+".join(map(str, s)) if isinstance(s, tuple) else str(s) for s in shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps timed per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {_label(s): ShrinkCNN(channels=s) for s in [DEFAULT, *PRUNED, *WIDER]}
    latencies: dict[str, list[float]] = {k: [] for k in models}
    throughputs: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            latencies[name].append(latency(model, 256, repeats=5))
            if name == _label(DEFAULT) or name in map(_label, WIDER):
                throughputs[name].append(train_images_per_second(model, args.steps))
    base_latency = statistics.median(latencies[_label(DEFAULT)])
    base_speed = statistics.median(throughputs[_label(DEFAULT)])
    rows = []
    for name, model in models.items():
        ms = statistics.median(latencies[name])
        row = {"channels": name, "parameters": parameter_count(model), "latency_256_ms": 1e3 * ms,
               "speedup_256": base_latency / ms}  # fmt: skip
        if throughputs[name]:
            speed = statistics.median(throughputs[name])
            row.update(train_images_per_second=speed, train_time_vs_default=base_speed / speed)
        rows.append(row)
        train = f"  train {row['train_time_vs_default']:.2f}x the default's time" if throughputs[name] else ""
        print(f"{name:<16} {row['parameters']:>8,} params  {1e3 * ms:6.1f} ms  {row['speedup_256']:.2f}x{train}")
    write_result("shapes", {"rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
