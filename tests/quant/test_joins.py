"""Quantizers on the inputs of residual adds and concatenations (``QuantConfig(quantize_joins=True)``): which calls
are joins, the arithmetic against torch's own fake quant, QAT, and what they buy in onnxruntime."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from torchshrink import QuantConfig
from torchshrink.errors import ConfigError
from torchshrink.quant import set_scales_trainable
from torchshrink.quant.adds import discover_joins_, join_quantizers
from torchshrink.quant.fake_quant import FakeQuant
from torchshrink.recipes import ptq
from zoo import FAMILIES, TinyResNet, TinyTransformer, UNetish, make_model


def _ptq(model: nn.Module, calibration: list[torch.Tensor], **kw: object) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the list of what stays float
        return ptq(model, calibration, QuantConfig(**kw)).model


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) + self.b(x))


def _reference_fake_quant(x: torch.Tensor, fq: FakeQuant) -> torch.Tensor:
    """torch's own per-tensor fake quant with the quantizer's settings: an independent reference."""
    scale, zero = float(fq.effective_scale[0]), int(fq.zero_point[0])
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, fq.spec.qmin, fq.spec.qmax)


def test_an_add_of_two_layer_outputs_rounds_both_operands_as_torch_fake_quant_does():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    q = _ptq(TwoBranches().eval(), [x], bits=8, quantize_joins=True)
    ((qa, qb),) = list(q.join_quant)  # one join, two operands
    assert qa.enabled and qb.enabled and qa.spec.bits == qb.spec.bits == 8
    with torch.no_grad():
        joined = _reference_fake_quant(q.a(x), qa) + _reference_fake_quant(q.b(x), qb)
        expected = q.head(joined)
        got = q(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    plain = _ptq(TwoBranches().eval(), [x], bits=8)
    with torch.no_grad():
        assert not torch.equal(plain(x), got), "without the option the add is float"


@pytest.mark.parametrize(("make", "inputs", "joins"), [
    (TinyResNet, lambda g: torch.randn(16, 3, 16, 16, generator=g), ["block1: add", "block2: add"]),
    (UNetish, lambda g: torch.randn(16, 3, 8, 8, generator=g), ["(model): cat"]),
    (TinyTransformer, lambda g: torch.randint(0, 50, (16, 12), generator=g), ["encoder: add", "encoder: add"]),
])  # fmt: skip
def test_joins_are_found_in_user_forwards_and_nowhere_else(make, inputs, joins):
    torch.manual_seed(0)
    model = make().eval()
    x = inputs(torch.Generator().manual_seed(0))
    q = _ptq(model, [x], bits=8, quantize_joins=True)
    assert discover_joins_(q, x) == joins  # known once: a second look finds the same and adds nothing
    quantizers = join_quantizers(q)
    assert len(quantizers) == sum(2 for _ in joins) and all(fq.enabled for fq in quantizers.values())
    assert all(torch.isfinite(fq.scale).all() for fq in quantizers.values())
    with torch.no_grad():
        assert torch.isfinite(q(x)).all()


class NotJoins(nn.Module):
    """Adds of a parameter (a positional embedding), of a broadcast (a mask), and an attention's own arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(4, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 4, 8)
        x = x + self.pos
        x = x + x.mean(dim=1, keepdim=True)  # a broadcast
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(dim=1))


def test_parameters_broadcasts_and_attention_internals_are_not_joins():
    torch.manual_seed(0)
    x = torch.randn(16, 4, 8)
    q = _ptq(NotJoins().eval(), [x], bits=8, quantize_joins=True)
    assert join_quantizers(q) == {}


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if x.shape[0] > 8:  # a second join only for large batches
            y = y + self.a(x)
        return self.b(y + x)


def test_a_forward_whose_joins_change_is_refused_naming_the_cause():
    torch.manual_seed(0)
    q = _ptq(Branchy().eval(), [torch.randn(16, 4)], bits=8, quantize_joins=True)
    assert len(q.join_quant) == 2
    with pytest.raises(ConfigError, match="change from call to call"), torch.no_grad():
        q(torch.randn(4, 4))


def test_qat_trains_the_join_scales():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    q = _ptq(TwoBranches().train(), [x], bits=4, quantize_joins=True)
    set_scales_trainable(q, True)
    ((qa, _qb),) = list(q.join_quant)
    before = qa.scale.detach().clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        q(x).square().mean().backward()
        opt.step()
    assert qa.scale.grad is not None and not torch.equal(qa.scale.detach(), before)


def test_the_option_is_off_by_default_and_absent_from_old_records():
    assert "quantize_joins" not in QuantConfig().to_dict()
    assert QuantConfig(quantize_joins=True).to_dict()["quantize_joins"] is True
    with pytest.raises(ConfigError, match="quantize_inputs=False"):
        QuantConfig(quantize_joins=True, quantize_inputs=False)
    with pytest.raises(ConfigError, match="True or False"):
        QuantConfig(quantize_joins=1)  # type: ignore[arg-type]


def test_a_copy_quantizes_with_its_own_quantizers():
    import copy

    torch.manual_seed(0)
    x = torch.randn(32, 6)
    q = _ptq(TwoBranches().eval(), [x], bits=8, quantize_joins=True)
    clone = copy.deepcopy(q)
    clone.join_quant[0][0].enabled = False
    with torch.no_grad():
        assert not torch.equal(clone(x), q(x)), "the copy's hooks use the copy's quantizers"


def test_export_with_joins_agrees_and_lets_onnxruntime_fuse_more_integer_convolutions(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from torchshrink.export import to_onnx

    family = FAMILIES[0]  # the residual net
    model = make_model(family)
    g = torch.Generator().manual_seed(1)
    calibration, x = family.inputs(g, 64), family.inputs(g, 64)
    fused = {}
    for joins in (False, True):
        q = _ptq(model, [calibration], bits=8, quantize_joins=joins)
        proto = to_onnx(q, x[:1])
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{joins}.onnx")
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            expected = q(x).numpy()
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
        assert np.median(np.abs(got - expected)) <= 1e-3 * np.abs(expected).max()
        optimized = onnx.load(str(tmp_path / f"{joins}.onnx"))
        fused[joins] = sum(n.op_type == "QLinearConv" for n in optimized.graph.node)
    assert fused[True] > fused[False], fused


def test_a_file_keeps_the_join_quantizers_and_loads_back_into_the_same_model(tmp_path):
    from torchshrink.pack import load_compressed, read_header, save_compressed

    family = FAMILIES[0]
    model = make_model(family)
    x = family.inputs(torch.Generator().manual_seed(1), 32)
    q = _ptq(model, [x], bits=8, quantize_joins=True)
    path = tmp_path / "joins.tshrink"
    save_compressed(q, path)
    header = read_header(path)
    assert header["version"] == 4
    assert [j["at"] for j in header["joins"]] == ["block1: add", "block2: add"]
    loaded = load_compressed(path, make_model(family))
    assert len(join_quantizers(loaded)) == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), q(x), rtol=0, atol=1e-5)
    plain = tmp_path / "plain.tshrink"
    save_compressed(_ptq(model, [x], bits=8), plain)
    assert read_header(plain)["version"] == 3 and "joins" not in read_header(plain)


def test_compress_model_trains_the_joins_with_qat_and_the_file_runs_the_same_model(tmp_path):
    """The whole pipeline with joins: prune, QAT (join scales trained with the rest), the file (version 4)
    loaded into a fresh instance gives the compressed model's outputs."""
    from torchshrink.data import Task
    from torchshrink.pack import load_compressed, save_compressed
    from torchshrink.recipes import IterativeConfig, TrainConfig
    from torchshrink.recipes.compress import CompressConfig, compress_model
    from zoo import make_loader

    family = FAMILIES[0]
    loader = make_loader(family, n=128, batch_size=32)
    model = make_model(family)
    cfg = CompressConfig(
        prune=IterativeConfig(0.5, steps=1, finetune=TrainConfig(epochs=1, lr=0.01)),
        quant=QuantConfig(bits=4, act_bits=8, quantize_joins=True),
        finetune=TrainConfig(epochs=1, lr=0.01),
    )
    results = {}
    for finetune in (None, cfg.finetune):  # PTQ, then QAT, from the same pruned model
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results[finetune is not None] = compress_model(model, Task(train=loader, val=loader),
                                                           replace(cfg, finetune=finetune), log=None)  # fmt: skip
    q = results[True].model
    assert results[True].record["config"]["quant"]["quantize_joins"] is True
    ptq_scales, qat_scales = ({n: float(fq.scale[0]) for n, fq in join_quantizers(r.model).items()} for r in
                              (results[False], results[True]))  # fmt: skip
    assert len(qat_scales) == 4 and all(ptq_scales[n] != qat_scales[n] for n in qat_scales), "QAT trained them"
    path = tmp_path / "m.tshrink"
    save_compressed(q, path)
    x = next(iter(loader))[0]
    with torch.no_grad():
        torch.testing.assert_close(load_compressed(path, make_model(family))(x), q.eval()(x), rtol=0, atol=1e-5)
