"""How closely onnxruntime reproduces torchshrink's own model (top-1 agreement, accuracy, logit differences),
and how fast it runs it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["onnx_agreement", "onnx_speed"]


def _session(onnx_bytes: bytes, threads: int) -> Any:
    """An onnxruntime CPU session with every graph optimisation (its default) and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def onnx_agreement(model: nn.Module, onnx_bytes: bytes, batches: Iterable[Any], threads: int = 0) -> dict[str, Any]:
    """Run ``model`` (in eval mode, on CPU) and the ONNX model on the same inputs and compare.

    Args:
        model: the torchshrink model the ONNX file was exported from.
        onnx_bytes: the serialized ONNX model; run with onnxruntime's CPU provider and every graph optimisation
            (the setting a user gets by default).
        batches: ``(inputs, targets)`` batches (then the accuracy is reported too) or input tensors.
        threads: onnxruntime's intra-op threads (0: its default).

    Returns:
        ``images``, ``top1_agreement`` (share of inputs whose top-1 class is the same), ``max_logit_difference``,
        ``test_accuracy`` (``None`` without targets) and the ``onnxruntime`` version.
    """
    import onnxruntime as ort

    session = _session(onnx_bytes, threads)
    name = session.get_inputs()[0].name
    was_training = model.training
    model.eval()
    same = correct = n = 0
    worst = 0.0
    labelled = True
    try:
        for batch in batches:
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            ours = model(x.cpu()).numpy()
            theirs = session.run(None, {name: x.cpu().numpy()})[0]
            # a row holding inf or NaN on either side agrees with nothing: argmax of NaN is not a prediction
            finite = np.isfinite(ours).reshape(len(ours), -1).all(1) & np.isfinite(theirs).reshape(len(x), -1).all(1)
            same += int(((ours.argmax(-1) == theirs.argmax(-1)).reshape(len(x), -1).all(1) & finite).sum())
            gap = np.abs(ours - theirs).max(initial=0.0) if finite.all() else np.inf
            worst = max(worst, float(gap))
            if y is None:
                labelled = False
            else:
                correct += int((theirs.argmax(-1) == y.cpu().numpy()).sum())
            n += len(x)
    finally:
        model.train(was_training)
    return {"images": n, "top1_agreement": same / max(n, 1), "max_logit_difference": worst,
            "test_accuracy": correct / max(n, 1) if labelled and n else None, "onnxruntime": ort.__version__}  # fmt: skip


def onnx_speed(
    model: nn.Module,
    onnx_bytes: bytes,
    sample_shape: tuple[int, ...],
    batches: tuple[int, ...] = (1, 256),
    rounds: int = 5,
    threads: int = 0,
) -> dict[str, dict[str, float]]:
    """Images/s of the ONNX model in onnxruntime and of ``model`` in torch (eval, CPU), per batch size: the
    median of ``rounds`` timings, the two interleaved so that both see the same machine load.

    Returns:
        ``{str(batch): {"onnxruntime": images/s, "torch": images/s}}``.
    """
    import statistics
    import time

    session = _session(onnx_bytes, threads)
    name = session.get_inputs()[0].name
    was_training = model.training
    model.eval()

    runners = {"onnxruntime": lambda x: session.run(None, {name: x.numpy()}), "torch": model}

    def per_second(run: Any, x: torch.Tensor) -> float:
        repeats = max(3, 256 // len(x))
        run(x)
        start = time.perf_counter()
        for _ in range(repeats):
            run(x)
        return len(x) * repeats / (time.perf_counter() - start)

    result: dict[str, dict[str, float]] = {}
    try:
        for batch in batches:
            x = torch.randn(batch, *sample_shape, generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {key: [] for key in runners}
            with torch.no_grad():
                for _ in range(rounds):
                    for key, run in runners.items():
                        times[key].append(per_second(run, x))
            result[str(batch)] = {key: statistics.median(v) for key, v in times.items()}
    finally:
        model.train(was_training)
    return result
