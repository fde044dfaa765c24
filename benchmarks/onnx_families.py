"""Quantized ONNX export across model families: the study's CNN, a residual net with a depthwise block, a
depthwise + squeeze-excite + hardswish net, a U-Net-style net (ConvTranspose, concatenation), a Conv1d model, a
Transformer encoder (token embedding, attention) and an LSTM (tests/zoo.py).

For fp32, W8A8 and W4A4 (PTQ): onnxruntime's top-1 agreement with torchshrink's model and the largest logit
difference (relative to the largest logit) on 2,000 random inputs, the ONNX file's bytes and the ``.tshrink``
file's. Random weights, synthetic inputs: agreement is what is measured, not accuracy.

    python benchmarks/onnx_families.py      # about a minute
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the families are defined with the tests
import onnxruntime as ort  # noqa: E402

from torchshrink import QuantConfig, build_model, ptq, save_compressed  # noqa: E402
from torchshrink.export import to_onnx  # noqa: E402
from zoo import EXPORT_FAMILIES, FAMILIES, Family, make_model  # noqa: E402

CNN = Family("study_cnn", lambda: build_model("cnn"), lambda g, n: torch.randn(n, 1, 28, 28, generator=g), 10, True)


def _agreement(model: torch.nn.Module, onnx_bytes: bytes, x: torch.Tensor) -> dict[str, float]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": b.numpy()})[0] for b in x.split(500)])
    with torch.no_grad():
        expected = torch.cat([model(b) for b in x.split(500)]).numpy()
    return {"top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()),
            "max_logit_difference": float(np.abs(got - expected).max() / np.abs(expected).max())}  # fmt: skip


def _tshrink_bytes(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tshrink"
        save_compressed(model, path)
        return path.stat().st_size


def run(family: Family) -> list[dict[str, Any]]:
    model = make_model(family)
    g = torch.Generator().manual_seed(1)
    calibration, x = family.inputs(g, 256), family.inputs(g, 2000)
    rows = []
    for label, bits in (("fp32", None), ("W8A8", 8), ("W4A4", 4)):
        row: dict[str, Any] = {"family": family.name, "variant": label}
        m = model
        if bits is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = ptq(model, [calibration], QuantConfig(bits=bits)).model
            row["tshrink_bytes"] = _tshrink_bytes(m)
        try:
            proto = to_onnx(m, x[:1]).SerializeToString()
        except Exception as exc:  # a refusal is a result: named in the table
            row["refused"] = str(exc)[:300]
            rows.append(row)
            continue
        row["onnx_bytes"] = len(proto)
        row |= _agreement(m, proto, x)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    torch.set_num_threads(2)
    rows = [row for family in [CNN, *FAMILIES, *EXPORT_FAMILIES] for row in run(family)]
    write_result("onnx_families", {"inputs": 2000, "rows": rows})


if __name__ == "__main__":
    main()
