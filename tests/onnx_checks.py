"""Shared by the ONNX tests: run a model in onnxruntime and check it against torchshrink's, code by code."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto
from torch import nn

from torchshrink.quant import input_quantizer, quantized_layers, weight_quantizer

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def run_ort(proto: onnx.ModelProto, x: torch.Tensor, level: str = "enable_all", outputs: int = 1) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = session.run(None, {"input": x.numpy()})
    return results[0] if outputs == 1 else results


@torch.no_grad()
def run_torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return model.eval()(x).numpy()


def check_agreement(
    q: nn.Module,
    proto: onnx.ModelProto,
    x: torch.Tensor,
    level: str,
    top1: float = 0.999,
    flipped: float | None = None,
) -> int:
    """Compare onnxruntime with torchshrink's fake-quant model; return how many output-layer input codes differ.

    The two compute each float conv/matmul in a different order, so a value within float rounding of a
    rounding tie (``x / scale`` at ``k + 0.5``) can land on neighbouring codes. Asserted:

    * top-1 equal on at least ``top1`` of the samples;
    * at the output layer's input, a code is never more than one step off, and fewer than ``flipped`` are off
      (default: 1%; 2% in a graph with int32 biases, whose rounding moves codes by one step by itself, as many
      with every optimisation off as on: 0.7-1.3% of the trained cnn_tiny's over five training seeds);
    * each logit is off by at most what those flips explain: logit ``j`` is ``sum_k (a_k - z) s_a W_jk + b_j``,
      so it moves by ``sum_k |da_k| s_a |W_jk|``, plus the bias, stored as int32 codes of ``s_a * s_w_j`` (off by
      half of that at most), plus float rounding (1e-5).
    """
    if flipped is None:
        int32_biases = any(n.name.endswith(".bias") and n.op_type == "DequantizeLinear" for n in proto.graph.node)
        flipped = 0.02 if int32_biases else 0.01
    name, last = list(quantized_layers(q).items())[-1]
    last = last.module
    layer_node = next(n for n in proto.graph.node if n.name in (name, f"{name}.gemm", f"{name}.conv", f"{name}.matmul"))
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(layer_node.input[0], TensorProto.FLOAT, None))
    seen: dict[str, torch.Tensor] = {}
    hook = input_quantizer(last).register_forward_hook(lambda m, i, out: seen.setdefault("a", out))
    want = run_torch(q, x)
    hook.remove()
    got, a = run_ort(probe, x, level, outputs=2)
    scale = float(input_quantizer(last).effective_scale[0])
    steps = (a - seen["a"].numpy()) / scale  # code differences (whole numbers up to float rounding)
    flips = np.abs(np.round(steps))
    assert flips.max(initial=0) <= 1 and np.allclose(steps, np.round(steps), atol=1e-3)
    assert flips.mean() < flipped
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= top1
    bias_step = scale * weight_quantizer(last).effective_scale.detach().numpy() if last.bias is not None else 0.0
    bound = flips @ np.abs(last.weight.detach().numpy()).T * scale + bias_step / 2 + 1e-5 + 1e-5 * np.abs(want)
    assert (np.abs(got - want) <= bound).all()
    return int(flips.sum())
