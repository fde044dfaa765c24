"""Every capability on four user-style model families (tests/zoo.py: a ResNet-style net with a depthwise block,
a Conv1d sequence model, an MLP with LayerNorm, a Transformer encoder): what works, the real file size against
fp32, how closely the compressed model follows the float one, and the CPU speedup of channel pruning.

The models have random weights and the inputs are synthetic: accuracy means nothing here, so fidelity is
measured as top-1 agreement with the float model (on the model's own predictions) and relative output error.

    python benchmarks/model_families.py            # about a minute
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from _common import write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the families are defined with the tests
from torchshrink import (  # noqa: E402
    CodebookConfig,
    PruneConfig,
    QuantConfig,
    StructuredConfig,
    codebook,
    fp32_bytes,
    load_compressed,
    make_permanent,
    prune_,
    ptq,
    save_compressed,
    skipped_layers,
    structured_prune_,
)
from torchshrink.data import Task  # noqa: E402
from torchshrink.measure import latency  # noqa: E402
from zoo import FAMILIES, Family, make_loader, make_model  # noqa: E402


def _fidelity(reference: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        ref, out = reference(x), model(x)
    return {"top1_agreement": float((ref.argmax(1) == out.argmax(1)).float().mean()),
            "relative_error": float((out - ref).norm() / ref.norm())}  # fmt: skip


def _file(model: torch.nn.Module, fresh: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.tshrink"
        save_compressed(model, path)
        loaded = load_compressed(path, model=fresh)
        size = path.stat().st_size
    with torch.no_grad():
        same = bool(torch.allclose(model(x), loaded(x), atol=1e-5))
    return {"file_bytes": size, "ratio": fp32_bytes(reference) / size, "loaded_equals_memory": same,
            **_fidelity(reference, loaded, x)}  # fmt: skip


def run_family(family: Family, batch: int) -> dict[str, Any]:
    base = make_model(family)
    loader = make_loader(family, n=512)
    x = family.inputs(torch.Generator().manual_seed(5), 512)
    row: dict[str, Any] = {"family": family.name, "parameters": sum(p.numel() for p in base.parameters()),
                           "fp32_bytes": fp32_bytes(base), "skipped": skipped_layers(base)}  # fmt: skip
    row["w8a8"] = _file(ptq(base, loader, QuantConfig(bits=8)).model, make_model(family, 1), base, x)
    row["w4a4"] = _file(ptq(base, loader, QuantConfig(bits=4)).model, make_model(family, 1), base, x)
    sparse = copy.deepcopy(base)
    prune_(sparse, PruneConfig(0.8, scope="lamp"))
    make_permanent(sparse)
    row["lamp80_w8a8"] = _file(ptq(sparse, loader, QuantConfig(bits=8)).model, make_model(family, 1), base, x)
    clustered = codebook(sparse, Task(calibration=loader), CodebookConfig(4, act_bits=8), train=None, log=None).model
    row["lamp80_codebook4"] = _file(clustered, make_model(family, 1), base, x)
    if family.structured:
        small = copy.deepcopy(base)
        channels = structured_prune_(small, StructuredConfig(0.5))
        xb = family.inputs(torch.Generator().manual_seed(6), batch)
        dense_t, small_t = [], []
        for _ in range(3):  # interleaved: both see the same machine load
            dense_t.append(latency(base, batch, repeats=10, example_input=xb))
            small_t.append(latency(small, batch, repeats=10, example_input=xb))
        row["structured_50"] = {
            "groups": {k: list(v) for k, v in channels.items()},
            "parameters_after": sum(p.numel() for p in small.parameters()),
            "dense_ms": 1000 * min(dense_t), "pruned_ms": 1000 * min(small_t), "speedup": min(dense_t) / min(small_t),
            "batch": batch,
        }  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="batch of the latency measurement")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped parameters are recorded in the result instead
        for family in FAMILIES:
            rows.append(run_family(family, args.batch))
    print(f"{'family':<14} {'fp32 B':>8} {'W8A8':>7} {'W4A4':>7} {'80%+W8':>7} {'80%+cb4':>8} {'agree W4A4':>10} "
          f"{'struct 50% speedup':>18}")  # fmt: skip
    for r in rows:
        speed = f"{r['structured_50']['speedup']:.2f}x" if "structured_50" in r else "-"
        print(f"{r['family']:<14} {r['fp32_bytes']:>8,} {r['w8a8']['ratio']:>6.1f}x {r['w4a4']['ratio']:>6.1f}x "
              f"{r['lamp80_w8a8']['ratio']:>6.1f}x {r['lamp80_codebook4']['ratio']:>7.1f}x "
              f"{100 * r['w4a4']['top1_agreement']:>9.1f}% {speed:>18}")  # fmt: skip
    write_result("model_families", {"rows": rows})


if __name__ == "__main__":
    main()
