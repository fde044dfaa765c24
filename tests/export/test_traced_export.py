"""Quantized ONNX export of models the conv-chain exporter does not translate (residual adds, concatenation,
ConvTranspose, squeeze-excite, Conv1d, LayerNorm, attention), through torch's own exporter with QDQ at the
quantizers; and the two ways an export could be silently wrong, refused or right."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from torchshrink import QuantConfig
from torchshrink.errors import ConfigError
from torchshrink.export import to_onnx
from torchshrink.quant import fold_batchnorm
from torchshrink.recipes import ptq
from zoo import EXPORT_FAMILIES, FAMILIES, UNetish

ort = pytest.importorskip("onnxruntime")


MODELS = {f.name: (f.make, f.inputs) for f in FAMILIES + EXPORT_FAMILIES}


def _quantized(model: nn.Module, calibration: list[torch.Tensor], bits: int) -> nn.Module:
    """PTQ at ``bits`` (WbAb), quietly: what stays float is listed by a warning these tests do not read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ptq(model, calibration, QuantConfig(bits=bits)).model


def _run(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", list(MODELS))
def test_any_quantized_model_exports_and_agrees_with_onnxruntime(name, bits):
    make, inputs = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    g = torch.Generator().manual_seed(1)
    calibration, x = inputs(g, 64), inputs(g, 64)
    q = _quantized(model, [calibration], bits)
    proto = to_onnx(q, x[:1])
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 2
    # 8-bit codes as uint8 code + 128 (exact in onnxruntime on every CPU), narrower ones as int8
    wanted = onnx.TensorProto.UINT8 if bits == 8 else onnx.TensorProto.INT8
    integer = {i.name for i in proto.graph.initializer if i.data_type == wanted and i.name.endswith(".codes")}
    assert integer, "the weights are integer codes, not floats"
    with torch.no_grad():
        expected = q(x).numpy()
    got = _run(proto, x)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95  # a value at a rounding tie may take the next code
    scale = np.abs(expected).max()
    assert np.median(np.abs(got - expected)) <= 1e-3 * scale


def test_integer_codes_make_the_weights_about_a_quarter_of_fp32():
    torch.manual_seed(0)
    model = UNetish().eval()
    x = torch.randn(16, 3, 8, 8)
    q = _quantized(model, [x], 8)
    def weight_bytes(proto: onnx.ModelProto) -> int:  # what grows with the model (node names do not)
        return sum(onnx.numpy_helper.to_array(i).nbytes for i in proto.graph.initializer)

    assert weight_bytes(to_onnx(q, x[:1])) < 0.33 * weight_bytes(to_onnx(model, x[:1]))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.mean() > 0 else self.b(x)  # a decision on values: one branch per input


@pytest.mark.parametrize("quantized", [False, True])
def test_a_forward_that_branches_on_values_is_refused(quantized):
    torch.manual_seed(0)
    model = Branchy().eval()
    x = torch.randn(8, 4).abs()
    if quantized:
        model = _quantized(model, [x, -x], 8)
    with pytest.raises(ConfigError, match="decision on tensor values at .*test_traced_export.py"):
        to_onnx(model, x[:1])


class StandardizedConv(nn.Conv2d):
    """Weight standardisation (BiT, NFNet): its own forward, not a plain convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def _standardized() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(StandardizedConv(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_batchnorm_is_not_folded_into_a_conv_with_its_own_forward():
    model = _standardized()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        with pytest.warns(UserWarning, match="its own forward"):
            fold_batchnorm(model)
        assert isinstance(model[1], nn.BatchNorm2d)  # left in place: the model computes what it did
        assert torch.allclose(model(x), before, atol=1e-6)


def test_a_conv_with_its_own_forward_exports_through_it():
    model = _standardized()
    x = torch.randn(32, 3, 8, 8)
    q = _quantized(model, [x], 8)
    with torch.no_grad():
        expected = q(x).numpy()
    got = _run(to_onnx(q, x[:1]), x)
    assert np.abs(got - expected).max() <= 1e-2 * np.abs(expected).max()


def test_outputs_that_are_not_finite_never_count_as_agreement():
    from torchshrink.export import onnx_agreement

    model = nn.Linear(4, 3).eval()
    with torch.no_grad():
        model.weight.fill_(1e38)  # overflows to inf in both runtimes: the same argmax, but no prediction
    x = torch.ones(5, 4)
    result = onnx_agreement(model, to_onnx(model, x[:1]).SerializeToString(), [x])
    assert result["top1_agreement"] == 0.0 and result["max_logit_difference"] == float("inf")


def test_from_opset_21_four_bit_codes_are_int4_initializers():
    torch.manual_seed(0)
    model = UNetish().eval()
    x = torch.randn(32, 3, 8, 8)
    q = _quantized(model, [x], 4)
    narrow, wide = to_onnx(q, x[:1]), to_onnx(q, x[:1], opset=21)
    codes = [i for i in wide.graph.initializer if i.name.endswith(".codes")]
    assert codes and all(i.data_type == onnx.TensorProto.INT4 for i in codes)
    assert len(wide.SerializeToString()) < len(narrow.SerializeToString())
    assert np.array_equal(_run(wide, x), _run(narrow, x))  # the same integers, the same graph otherwise


@pytest.mark.parametrize(("opset", "index_type"), [(17, onnx.TensorProto.UINT8), (21, onnx.TensorProto.UINT4)])
def test_a_codebook_model_exports_its_indices_and_tables_not_float_weights(opset, index_type):
    from torch.utils.data import DataLoader, TensorDataset

    from torchshrink.data import Task
    from torchshrink.recipes import codebook
    from torchshrink.recipes.quantize import CodebookConfig

    make, inputs = MODELS["resnet"]
    torch.manual_seed(0)
    model = make().eval()
    g = torch.Generator().manual_seed(1)
    calibration, x = inputs(g, 64), inputs(g, 64)
    loader = DataLoader(TensorDataset(calibration, torch.zeros(64, dtype=torch.long)), batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = codebook(model, Task(train=loader, val=loader), CodebookConfig(4, act_bits=8), log=None, train=None).model
    proto = to_onnx(q, x[:1], opset=opset)
    inits = {i.name: i for i in proto.graph.initializer}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0].endswith(".table")]
    assert len(gathers) == 9  # every conv and the head: a table of 16 floats each
    for node in gathers:
        table = onnx.numpy_helper.to_array(inits[node.input[0]])
        assert table.shape == (16,) and table[0] == 0  # the pruned zero, then the centroids
    indices = [i for i in proto.graph.initializer if i.name.endswith(".indices")]
    assert len(indices) == 9 and all(i.data_type == index_type for i in indices)
    floats = sum(onnx.numpy_helper.to_array(i).size for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1)
    assert floats < weights / 4, "no float copy of the weights"
    with torch.no_grad():
        expected = q(x).numpy()
    got = _run(proto, x)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert np.median(np.abs(got - expected)) <= 1e-3 * np.abs(expected).max()


def _ort(proto: onnx.ModelProto, x: torch.Tensor, optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", ["unet", "squeeze_excite"])
def test_onnxruntime_optimizations_do_not_change_a_narrow_model_by_rounding_its_biases(name):
    """Below 8 bits a layer's input keeps a scale onnxruntime does not fuse: fused into an integer kernel, its
    bias would be rounded to int32 codes of input scale x weight scale, a step coarse enough at 4 bits to change
    whole channels. Asked for (``integer_bias=True``), the fused graph is faster and not the same model."""
    make, inputs = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    g = torch.Generator().manual_seed(1)
    calibration, x = inputs(g, 64), inputs(g, 64)
    q = _quantized(model, [calibration], 4)
    exact = to_onnx(q, x[:1])
    np.testing.assert_allclose(_ort(exact, x, optimize=True), _ort(exact, x, optimize=False), atol=1e-5, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(exact, x, optimize=True), q(x).numpy(), atol=1e-4, rtol=0)
    rounded = to_onnx(q, x[:1], integer_bias=True)
    assert np.abs(_ort(rounded, x, optimize=True) - _ort(rounded, x, optimize=False)).max() > 5e-4


def test_8_bit_weight_codes_are_uint8_plus_128_unless_int8_is_asked_for():
    make, inputs = MODELS["resnet"]
    torch.manual_seed(0)
    model = make().eval()
    g = torch.Generator().manual_seed(1)
    calibration, x = inputs(g, 64), inputs(g, 64)
    q = _quantized(model, [calibration], 8)
    codes = {}
    for weight_type in ("uint8", "int8"):
        proto = to_onnx(q, x[:1], weight_type=weight_type)
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
        codes[weight_type] = {n: a for n, a in inits.items() if n.endswith(".codes")}
        zeros = {n: a for n, a in inits.items() if n.endswith(".zero")}
        assert {a.dtype.name for a in codes[weight_type].values()} == {weight_type}
        assert all((a == (128 if weight_type == "uint8" else 0)).all() for a in zeros.values())
        with torch.no_grad():
            np.testing.assert_allclose(_ort(proto, x, optimize=False), q(x).numpy(), atol=1e-4, rtol=0)
    for name, unsigned in codes["uint8"].items():
        np.testing.assert_array_equal(unsigned.astype(np.int16) - 128, codes["int8"][name].astype(np.int16))
