"""ONNX export: onnxruntime's outputs checked against torchshrink's own (fp32, and fake quant at 8 and 4 bits)."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from onnx_checks import LEVELS, check_agreement, run_ort, run_torch
from torchshrink.data import FashionMNIST
from torchshrink.errors import ConfigError
from torchshrink.export import export_onnx, to_onnx
from torchshrink.models import MLP, build_model
from torchshrink.quant import FakeQuant, QuantConfig, QuantSpec, quantized_layers
from torchshrink.quant.export import export_layers
from torchshrink.recipes import ptq


@pytest.fixture(scope="module")
def trained(trained_tiny: nn.Module) -> nn.Module:
    return trained_tiny


@pytest.fixture(scope="module")
def test_images(fmnist: FashionMNIST) -> torch.Tensor:
    """The first 512 real Fashion-MNIST test images, normalised."""
    return torch.cat([batch[0] for batch in fmnist.subset(test=512).test_batches()])[:512]


@pytest.fixture(scope="module")
def calibration(fmnist: FashionMNIST) -> list[torch.Tensor]:
    return [torch.cat([batch[0] for batch in fmnist.subset(val=256).val_batches()])[:256]]


# --- fp32 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn_tiny", "mlp"])
def test_fp32_export_matches_torch_with_dynamic_batch(name: str) -> None:
    """An fp32 model exports plainly; onnxruntime's logits equal torch's to 1e-4 at another batch size."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    proto = to_onnx(model, torch.zeros(1, 1, 28, 28))
    assert not any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    x = torch.randn(7, 1, 28, 28)
    np.testing.assert_allclose(run_ort(proto, x), run_torch(model, x), rtol=1e-4, atol=1e-4)


def test_fp32_export_of_trained_model_on_real_images(trained: nn.Module, test_images: torch.Tensor) -> None:
    """The trained model on 512 real test images: logits within 1e-4."""
    proto = to_onnx(trained, test_images[:1])
    np.testing.assert_allclose(run_ort(proto, test_images), run_torch(trained, test_images), rtol=1e-4, atol=1e-4)


# --- QDQ ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("integer_bias", [None, False], ids=["default_bias", "float_bias"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("which", ["trained_cnn_tiny", pytest.param("random_cnn", marks=pytest.mark.slow)])
def test_qdq_export_agrees_with_fake_quant_on_real_images(
    trained: nn.Module,
    calibration: list[torch.Tensor],
    test_images: torch.Tensor,
    which: str,
    bits: int,
    integer_bias: bool | None,
) -> None:
    """W8A8 and W4A4 (Clip path) on 512 real test images, with and without onnxruntime's graph optimisations:
    top-1 equal on >= 99.9%, logits off only by the rounding-tie flips of :func:`check_agreement` and the
    bias's int32 rounding (W8A8 by default). (Measured at 8 bits with float biases: 1 of 16,384 codes flipped
    for the trained cnn_tiny, ~100 of 131,072 for the random full-size cnn; none at 4 bits.) The random cnn's
    near-tied logits flip one of 512 top-1 answers with int32 biases: 99% there."""
    torch.manual_seed(0)
    model = trained if which == "trained_cnn_tiny" else build_model("cnn").eval()
    q = ptq(model, calibration, QuantConfig(bits=bits)).model
    proto = to_onnx(q, test_images[:1], integer_bias=integer_bias)
    fused = integer_bias is None and bits == 8
    assert any(n.name.endswith(".bias") and n.op_type == "DequantizeLinear" for n in proto.graph.node) == fused
    for level in LEVELS:
        check_agreement(q, proto, test_images, level, top1=0.99 if fused and which == "random_cnn" else 0.999)


def test_qdq_export_runs_as_integer_kernels_in_onnxruntime(trained: nn.Module, calibration: list[torch.Tensor]) -> None:
    """W8A8 by default: onnxruntime's optimizer turns every conv and linear into an integer kernel and keeps the
    pooling on int8 (nothing left in float between the first QuantizeLinear and the logits); a model written
    with float biases keeps float convs."""
    q = ptq(trained, calibration, QuantConfig(bits=8)).model

    def optimized_ops(proto: onnx.ModelProto, folder: Path) -> list[str]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(folder / "optimized.onnx")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable ops only
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]

    with tempfile.TemporaryDirectory() as folder:
        fused = optimized_ops(to_onnx(q, torch.zeros(1, 1, 28, 28)), Path(folder))
        exact = optimized_ops(to_onnx(q, torch.zeros(1, 1, 28, 28), integer_bias=False), Path(folder))
    convs = sum(isinstance(m, nn.Conv2d) for m in q.modules())
    assert fused.count("QLinearConv") == convs and fused.count("QGemm") == 2, fused
    assert not {"Conv", "Gemm", "Relu", "DequantizeLinear"} & set(fused), fused  # nothing computed in float
    assert "Conv" in exact and "QLinearConv" not in exact


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_qdq_export_of_random_model_on_random_inputs(bits: int) -> None:
    """Random weights, random normalised inputs (no data needed), W8A8 / W4A4 / W2A2."""
    torch.manual_seed(1)
    q = ptq(build_model("cnn_tiny").eval(), [torch.randn(128, 1, 28, 28)], QuantConfig(bits=bits)).model
    x = torch.randn(256, 1, 28, 28)
    proto = to_onnx(q, x[:1])
    for level in LEVELS:
        check_agreement(q, proto, x, level, top1=0.99)  # random logits: near-ties in the argmax too


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in proto.graph.initializer}


@pytest.mark.parametrize("weight_type", ["uint8", "int8"])
@pytest.mark.parametrize("bits", [8, 4])
def test_qdq_graph_holds_integer_codes_and_clips_narrow_ranges(bits: int, weight_type: str) -> None:
    """Weights are integer codes dequantized per output channel (axis 0): 8-bit ones UINT8 ``code + 128`` with
    zero point 128 by default, INT8 with zero point 0 as ``weight_type="int8"`` and at narrower widths; activations
    after a ReLU are uint8, the image int8; an activation range narrower than its container (4 bits) gets a Clip;
    weight codes are in range already."""
    torch.manual_seed(0)
    q = ptq(build_model("cnn_tiny"), [torch.randn(64, 1, 28, 28)], QuantConfig(bits=bits)).model
    proto = to_onnx(q, torch.zeros(1, 1, 28, 28), weight_type=weight_type)
    inits = _initializers(proto)
    nodes = {n.name: n for n in proto.graph.node}
    shifted = bits == 8 and weight_type == "uint8"
    for name, layer in quantized_layers(q).items():
        codes = inits[f"{name}.weight_codes"]
        assert codes.data_type == inits[f"{name}.weight_zero_point"].data_type
        assert codes.data_type == (TensorProto.UINT8 if shifted else TensorProto.INT8)
        assert (numpy_helper.to_array(inits[f"{name}.weight_zero_point"]) == (128 if shifted else 0)).all()
        assert numpy_helper.to_array(codes).shape == tuple(layer.tensor.shape)
        assert {a.name: a.i for a in nodes[f"{name}.weight"].attribute} == {"axis": 0}
        assert f"{name}.weight" not in inits  # no float copy of a quantized weight
        # its input quantizer: at the layer, or moved back to the op producing the ReLU / pooling chain before it
        zero_point = next(v for k, v in inits.items() if k.startswith(f"{name}.input") and k.endswith("zero_point"))
        assert zero_point.data_type == (TensorProto.INT8 if name == "features.conv1" else TensorProto.UINT8)
        clipped = any(n.startswith(f"{name}.input") and n.endswith(".clip") for n in nodes)
        assert clipped == (name != "features.conv1" and bits < 8)  # the image's input is 8-bit at any width
    assert (
        max(
            np.abs(numpy_helper.to_array(inits[f"{n}.weight_codes"]).astype(np.int32) - (128 if shifted else 0)).max()
            for n in quantized_layers(q)
        )
        <= 2 ** (bits - 1) - 1
    )


class _Pooled(nn.Module):
    """Conv -> ReLU -> global average pool -> torch.flatten -> Linear: the functional ops and GlobalAveragePool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2, padding=1, groups=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


class _Tokens(nn.Module):
    """Linears applied to the last dim of a 4-D input: the MatMul path."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(28, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).relu())  # (N, 1, 28, 28) -> (N, 1, 28, 16) -> (N, 1, 28, 4)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("make", [_Pooled, _Tokens, lambda: MLP(hidden=(32,))], ids=["pooled", "tokens", "mlp"])
def test_qdq_export_of_other_supported_models(make: type[nn.Module], per_channel: bool) -> None:
    """GlobalAveragePool, functional relu/flatten, Dropout, MatMul on 4-D inputs, per-tensor weights."""
    torch.manual_seed(0)
    q = ptq(make().eval(), [torch.randn(64, 1, 28, 28)], QuantConfig(bits=8, per_channel=per_channel)).model
    x = torch.randn(16, 1, 28, 28)
    for level in LEVELS:  # float biases: only rounding ties flip codes; int32 biases move a few more by one step
        check_agreement(q, to_onnx(q, x[:1], integer_bias=False), x, level, top1=0.99)
        check_agreement(q, to_onnx(q, x[:1]), x, level, top1=0.99, flipped=0.05)


class _AtTheEnds(nn.Module):
    """One layer on the image, every weight +-1, then ReLU and a Linear to 10 classes. On inputs of +-1 its 8-bit
    weight codes are +-127 and its input codes +-127 (uint8 1 and 255 once onnxruntime shifts int8 inputs by 128):
    two products of a pair then add up to 2 * 255 * 127 = 64,770, past the int16 that uint8 x int8 kernels without
    VNNI add them in."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.layer = {"conv": nn.Conv2d(1, 8, 3), "gemm": nn.Linear(36, 16), "matmul": nn.Linear(6, 16)}[kind]
        self.fc = nn.Linear({"conv": 8 * 4 * 4, "gemm": 16, "matmul": 6 * 16}[kind], 10)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(self.layer.weight.shape).sign())
            self.layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gemm":
            x = torch.flatten(x, 1)  # (N, 1, 6, 6) -> (N, 36); conv: (N, 8, 4, 4), matmul: (N, 1, 6, 16)
        return self.fc(torch.flatten(torch.relu(self.layer(x)), 1))


def _at_the_ends(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _AtTheEnds(kind).eval()
    q = ptq(model, [torch.randn(256, 1, 6, 6).sign()], QuantConfig(bits=8)).model
    codes = next(layer.codes for layer in export_layers(q) if layer.name == "layer")
    assert codes.abs().min() == codes.abs().max() == 127  # every weight at the end of its range
    return q, torch.randn(256, 1, 6, 6).sign()


@pytest.mark.parametrize("kind", ["conv", "gemm", "matmul"])
def test_8bit_weights_at_the_range_ends_on_inputs_at_theirs_agree(kind: str) -> None:
    """8-bit weight and input codes at the ends of their ranges, on each integer kernel onnxruntime fuses them
    into (``QLinearConv``, ``QGemm``, ``MatMulIntegerToFloat``): the default export agrees on every CPU. (With
    int8 weights, onnxruntime 1.32 on an AVX2 CPU was off by 112-167 codes here: its uint8 x int8 kernels
    saturate.)"""
    q, x = _at_the_ends(kind)
    proto = to_onnx(q, x[:1])
    for level in LEVELS:
        check_agreement(q, proto, x, level, top1=0.99)


def _has_vnni() -> bool:
    """An x86 CPU with VNNI (AVX512-VNNI or AVX-VNNI), whose uint8 x int8 dot products add into int32 exactly."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


@pytest.mark.skipif(not _has_vnni(), reason="int8 weights are exact in onnxruntime only on x86 CPUs with VNNI")
@pytest.mark.parametrize("kind", ["conv", "gemm", "matmul"])
def test_int8_weights_agree_where_the_cpu_has_vnni(kind: str) -> None:
    """``weight_type="int8"``, the faster option on such CPUs, is exact there too."""
    q, x = _at_the_ends(kind)
    proto = to_onnx(q, x[:1], weight_type="int8")
    for level in LEVELS:
        check_agreement(q, proto, x, level, top1=0.99)


def test_layers_left_in_float_export_with_float_weights() -> None:
    """A layer the filter skipped keeps float weights in the graph, and the outputs still agree."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny").eval()
    q = ptq(model, [torch.randn(64, 1, 28, 28)], QuantConfig(bits=8), filter_fn=lambda m, n: n != "classifier.fc1").model
    proto = to_onnx(q, torch.zeros(1, 1, 28, 28))
    assert "classifier.fc1.weight" in _initializers(proto)
    check_agreement(q, proto, torch.randn(16, 1, 28, 28), "enable_all", top1=0.99)


# --- refusals and the file ----------------------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x)) + x


class _Flatten12(_Residual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1, 2)  # ONNX Flatten keeps exactly one leading dim: (1, 2) is not that


def test_operations_beyond_the_conv_chain_take_torchs_traced_graph(tmp_path: Path) -> None:
    """A quantized model with an op the conv-chain builder does not translate (a sigmoid, a residual add, a
    flatten of dims 1 to 2) is exported from torch's own traced graph with QDQ at its quantizers, and agrees."""
    x = torch.randn(16, 1, 28, 28)
    for model in (_Residual(), _Flatten12()):
        q = ptq(model.eval(), [torch.randn(8, 1, 28, 28)], QuantConfig(bits=8)).model
        target = tmp_path / "model.onnx"
        export_onnx(q, target, torch.zeros(1, 1, 28, 28))
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - q(x).numpy()).max() < 0.05


class _Branches(_Residual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if float(x.sum()) > 0 else -x


def test_an_export_refused_writes_no_file(tmp_path: Path) -> None:
    q = ptq(_Branches().eval(), [torch.randn(8, 1, 28, 28)], QuantConfig(bits=8)).model
    target = tmp_path / "model.onnx"
    with pytest.raises(ConfigError, match=r"decision on tensor values"):
        export_onnx(q, target, torch.ones(1, 1, 28, 28))
    assert not target.exists()


def test_a_fake_quant_the_conv_chain_builder_would_drop_is_kept() -> None:
    """An enabled fake quant that is not a weight or input quantizer of a translated layer is not dropped: the
    model goes through torch's traced graph, which computes it."""
    q = ptq(build_model("cnn_tiny").eval(), [torch.randn(8, 1, 28, 28)], QuantConfig(bits=8)).model
    stray = FakeQuant(QuantSpec(bits=4))
    stray.scale.data.fill_(0.05)
    stray.enabled = True
    model = nn.Sequential(q, stray).eval()  # the logits, rounded to 4-bit steps of 0.05
    x = torch.randn(16, 1, 28, 28)
    session = ort.InferenceSession(to_onnx(model, torch.zeros(1, 1, 28, 28)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    assert len(np.unique(expected)) <= 15 and np.abs(got - expected).max() <= 0.05 + 1e-6


def test_bad_example_input_and_weight_type_are_refused() -> None:
    with pytest.raises(ConfigError, match="example_input"):
        to_onnx(build_model("cnn_tiny"), torch.zeros(1, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"weight_type 'uint4': give one of 'uint8' \(exact on every CPU\)"):
        to_onnx(build_model("cnn_tiny"), torch.zeros(1, 1, 28, 28), weight_type="uint4")  # type: ignore[arg-type]


def test_export_onnx_writes_a_checked_file_and_keeps_the_mode(tmp_path: Path) -> None:
    """The file loads, passes the checker, runs at any batch size; the model's training flag is restored."""
    torch.manual_seed(0)
    q = ptq(build_model("cnn_tiny"), [torch.randn(32, 1, 28, 28)], QuantConfig(bits=8)).model.train()
    path = tmp_path / "sub" / "cnn.onnx"
    export_onnx(q, path, torch.zeros(2, 1, 28, 28))
    assert q.training
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert run_ort(proto, torch.randn(5, 1, 28, 28)).shape == (5, 10)
