"""What removing the units sparsity already killed would save in a file: measured, not built.

At high sparsity some units of the default CNN are dead: rows of ``fc1`` with no weight left (their output is a
constant, foldable into ``fc2``'s bias), hidden units ``fc2`` no longer reads, input columns no weight reads, and
conv channels whose every consumer weight is zero. Taking them out structurally changes no prediction; it makes
the remaining matrices denser, so the positions of their non-zeros cost fewer bits. This script measures, for
the pruned models of a study, how many units are dead and how many bytes of position codes the file would save
(the non-zero codes themselves stay: a dead unit's weights are zeros, except in rows nothing reads).

    python benchmarks/dead_units.py runs/frontier runs/study
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import write_result
from torchshrink.checkpoint import load_checkpoint
from torchshrink.models import ShrinkCNN
from torchshrink.pack.sparse import encode_positions


def position_bytes(w: torch.Tensor) -> int:
    """Bytes of the smallest position code of ``w``'s non-zeros (what the file stores for a sparse tensor)."""
    return encode_positions((w != 0).numpy().reshape(-1)).size


def analyse(model: ShrinkCNN) -> dict[str, Any]:
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    fc1, fc2 = model.classifier.fc1, model.classifier.fc2
    ws = [c.weight.detach() for c in convs] + [fc1.weight.detach(), fc2.weight.detach()]
    # hidden units: constant (their fc1 row is all zero) or unread (their fc2 column is all zero)
    w1, w2 = ws[-2], ws[-1]
    dead_hidden = ((w1 != 0).sum(1) == 0) | ((w2 != 0).sum(0) == 0)
    w1_kept, w2_kept = w1[~dead_hidden], w2[:, ~dead_hidden]
    # fc1 input columns nothing reads any more; conv3 channels whose 3x3 columns are all unread
    read_cols = (w1_kept != 0).sum(0) != 0
    spatial = w1.shape[1] // convs[-1].out_channels
    read_channels = read_cols.reshape(convs[-1].out_channels, spatial).any(1)
    before = {n: position_bytes(w) for n, w in zip(["conv1", "conv2", "conv3", "fc1", "fc2"], ws, strict=True)}
    after = dict(before)
    after["fc1"] = position_bytes(w1_kept[:, read_cols])
    after["fc2"] = position_bytes(w2_kept)
    after["conv3"] = position_bytes(ws[2][read_channels])
    wasted = int((ws[2][~read_channels] != 0).sum())  # non-zero conv3 weights of channels nothing reads
    nonzeros = sum(int((w != 0).sum()) for w in ws)
    return {
        "nonzeros": nonzeros, "sparsity": 1 - nonzeros / sum(w.numel() for w in ws),
        "dead_hidden_units": int(dead_hidden.sum()), "hidden_units": int(w1.shape[0]),
        "unread_fc1_columns": int((~read_cols).sum()), "unread_conv3_channels": int((~read_channels).sum()),
        "wasted_conv3_nonzeros": wasted,
        "position_bytes": sum(before.values()), "position_bytes_compacted": sum(after.values()),
        "position_bits_per_nonzero": 8 * sum(before.values()) / nonzeros,
        "by_layer": {n: {"before": before[n], "after": after[n]} for n in before},
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", help="study folders; every pruned model in their caches is measured")
    args = p.parse_args()
    rows = []
    for study in map(Path, args.studies):
        for folder in sorted((study / "cache").glob("*/model")):
            stage = folder.parent.name.rsplit("-", 1)[0]
            if not stage.startswith(("gradual", "continued", "iterative")):
                continue
            model = load_checkpoint(folder).model
            if not isinstance(model, ShrinkCNN):
                continue
            row = {"study": str(study), "stage": stage, **analyse(model)}
            rows.append(row)
            saved = row["position_bytes"] - row["position_bytes_compacted"]
            print(f"{study.name:>10} {stage:<16} {100 * row['sparsity']:5.1f}% sparse  "
                  f"{row['dead_hidden_units']:3d} dead hidden units, {row['unread_conv3_channels']:3d} unread conv3 "
                  f"channels; positions {row['position_bytes']:,} B ({row['position_bits_per_nonzero']:.2f} bits per "
                  f"non-zero), compacted {row['position_bytes_compacted']:,} B (-{saved:,} B)")  # fmt: skip
    write_result("dead_units", {"rows": json.loads(json.dumps(rows, default=lambda x: np.asarray(x).tolist()))})


if __name__ == "__main__":
    main()
