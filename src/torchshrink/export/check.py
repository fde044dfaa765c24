"""How closely onnxruntime reproduces torchshrink's own model: top-1 agreement, accuracy, logit differences."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["onnx_agreement"]


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

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
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
            same += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
            worst = max(worst, float(np.abs(ours - theirs).max(initial=0.0)))
            if y is None:
                labelled = False
            else:
                correct += int((theirs.argmax(-1) == y.cpu().numpy()).sum())
            n += len(x)
    finally:
        model.train(was_training)
    return {"images": n, "top1_agreement": same / max(n, 1), "max_logit_difference": worst,
            "test_accuracy": correct / max(n, 1) if labelled and n else None, "onnxruntime": ort.__version__}  # fmt: skip
