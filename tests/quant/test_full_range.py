"""Full-range signed weight codes (``QuantConfig.full_range_weights``, LSQ-style): 4 levels at 2 bits instead of
ternary, zero still exact, and every consumer downstream (the file, its reader, the ONNX exporters, the
mixed-precision planner, the CLI) exact with them or refusing them. Tiny tensors and random ``cnn_tiny`` models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from pack.test_independent_reader import independent_read
from torchshrink.checkpoint import save_checkpoint
from torchshrink.cli import main
from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pack import encode_compressed, load_compressed, read_compressed, save_compressed
from torchshrink.pack.encode import encoded_uniform_bytes
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import (
    FakeQuant,
    QuantConfig,
    QuantSpec,
    calibrated_weight_quantizer,
    qrange,
    quantize,
    quantize_,
    quantized_layers,
    weight_quantizer,
)
from torchshrink.quant.apply import attach_input_quant_
from torchshrink.quant.export import export_layers
from torchshrink.recipes import CompressConfig, ptq
from torchshrink.recipes.mixed_uniform import uniform_weight_bytes


def _codes(w: torch.Tensor, fq: FakeQuant) -> torch.Tensor:
    """The integer codes the file writer stores for ``w`` (per-channel quantizer, zero point 0)."""
    return quantize(w, fq.effective_scale, fq.zero_point, fq.spec.qmin, fq.spec.qmax, fq.spec.axis)


def _mse(w: torch.Tensor, fq: FakeQuant) -> float:
    with torch.no_grad():
        return float((fq(w) - w).pow(2).mean())


@pytest.fixture
def gaussian() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(16, 8, 3, 3)


@pytest.mark.parametrize("method", ["mse", "minmax"])
def test_2bit_full_range_codes_use_all_four_levels_with_less_error(gaussian, method):
    full = calibrated_weight_quantizer(gaussian, 2, method=method, full_range=True)
    narrow = calibrated_weight_quantizer(gaussian, 2, method=method)
    assert (full.spec.qmin, full.spec.qmax) == (-2, 1) and (narrow.spec.qmin, narrow.spec.qmax) == (-1, 1)
    codes = _codes(gaussian, full)
    assert int(codes.min()) == -2 and int(codes.max()) == 1
    assert sorted(codes.unique().tolist()) == [-2, -1, 0, 1]  # 4 levels in 2 bits
    assert sorted(_codes(gaussian, narrow).unique().tolist()) == [-1, 0, 1]
    assert _mse(gaussian, full) < 0.9 * _mse(gaussian, narrow)  # measured: 0.165 vs 0.209 (mse), 0.531 vs 0.595


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_mse_search_of_the_full_range_is_never_worse_per_channel(gaussian, bits):
    """The full range tries every scale the narrow one does, and the extra code only brings values nearer."""
    full = calibrated_weight_quantizer(gaussian, bits, full_range=True)
    narrow = calibrated_weight_quantizer(gaussian, bits)
    with torch.no_grad():
        err_full = (full(gaussian) - gaussian).pow(2).flatten(1).sum(1)
        err_narrow = (narrow(gaussian) - gaussian).pow(2).flatten(1).sum(1)
    assert bool((err_full <= err_narrow).all())


def test_minmax_scale_maps_each_side_to_its_own_end_of_the_codes():
    """Negative side larger: -absmax goes to qmin (-2), nothing is clipped; positive side larger: absmax to qmax."""
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.25], [-0.25, 0.0, 0.5, 1.0]])
    fq = calibrated_weight_quantizer(w, 2, method="minmax", full_range=True)
    torch.testing.assert_close(fq.scale.data, torch.tensor([0.5, 1.0]))
    assert _codes(w, fq).tolist() == [[-2, -1, 0, 0], [0, 0, 0, 1]]  # 0.25 / 0.5 rounds half to even


def test_zeros_stay_exact_zero_codes(gaussian):
    w = gaussian.clone()
    w[w.abs() < 0.7] = 0.0  # about half the weights pruned
    for bits in (2, 4):
        fq = calibrated_weight_quantizer(w, bits, full_range=True)
        with torch.no_grad():
            assert bool((fq(w)[w == 0] == 0).all())
        assert bool((_codes(w, fq)[w == 0] == 0).all())


def test_defaults_are_unchanged():
    assert qrange(2, True, narrow=True) == (-1, 1) and qrange(2, True) == (-2, 1) and qrange(8, False) == (0, 255)
    assert not QuantConfig().full_range_weights and not CompressConfig().quant.full_range_weights
    assert (QuantSpec(bits=2).qmin, QuantSpec(bits=2).qmax) == (-1, 1)
    assert (QuantSpec(bits=2, symmetric=False).qmin, QuantSpec(bits=4, signed=False).qmin) == (-2, 0)
    assert (QuantSpec(bits=2, narrow=True).qmin, QuantSpec(bits=4, signed=False, narrow=False).qmax) == (-1, 15)
    q = quantize_(build_model("cnn_tiny"), QuantConfig(bits=2, quantize_inputs=False))
    for layer in quantized_layers(q).values():
        spec = weight_quantizer(layer.module).spec
        assert spec.narrow is None and (spec.qmin, spec.qmax) == (-1, 1)  # ternary, as before


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="full_range_weights"):
        QuantConfig(full_range_weights="yes")
    with pytest.raises(ConfigError, match="narrow"):
        QuantSpec(narrow=1)
    with pytest.raises(ConfigError, match="codebook"):
        CompressConfig(quant=QuantConfig(full_range_weights=True), codebook=True)


def _full_range_model(bits: int) -> nn.Module:
    """A random cnn_tiny, half pruned, W{bits}A{bits} PTQ with full-range weights."""
    torch.manual_seed(1)
    model = build_model("cnn_tiny").eval()
    prune_(model, PruneConfig(0.5))
    make_permanent(model)
    return ptq(model, [torch.randn(64, 1, 28, 28)], QuantConfig(bits=bits, full_range_weights=True)).model


@pytest.fixture(scope="module", params=[2, 4])
def saved(request, tmp_path_factory):
    """(bits, the quantized model, its file)."""
    q = _full_range_model(request.param)
    path = tmp_path_factory.mktemp("full") / "m.tshrink"
    save_compressed(q, path, "cnn_tiny")
    return request.param, q, path


def test_file_round_trip_is_bit_identical(saved):
    bits, q, path = saved
    header, _ = read_compressed(path)
    offsets = {t["code_offset"] for t in header["tensors"] if t["encoding"] == "uniform"}
    assert offsets == {-(2 ** (bits - 1))}  # the full range's qmin, recorded per tensor
    assert min(int(layer.codes.min()) for layer in export_layers(q)) == -(2 ** (bits - 1))  # the extra code is used
    loaded = load_compressed(path)
    state = loaded.state_dict()
    for name, layer in quantized_layers(q).items():
        assert torch.equal(state[f"{name}.weight"], layer.tensor.detach())
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    # a reader written from docs/FORMAT.md alone (it takes the range from code_offset) reads the same weights
    for name, array in independent_read(path.read_bytes()).items():
        np.testing.assert_array_equal(array, state[name].numpy(), err_msg=name)


def test_onnx_exports_agree_with_the_model(saved):
    pytest.importorskip("onnxruntime")
    from onnx_checks import check_agreement, run_ort
    from torchshrink.export import load_for_export, to_onnx

    bits, q, path = saved
    x = torch.randn(256, 1, 28, 28)
    proto = to_onnx(q, x[:1])
    check_agreement(q, proto, x, "disable_all", top1=0.99)  # random logits: near-ties in the argmax too
    model, weights, float_layers = load_for_export(path)
    assert float_layers == [] and set(weights) == set(quantized_layers(q))
    for layer in export_layers(q):
        assert torch.equal(weights[layer.name].codes, layer.codes)
        spec = weights[layer.name].spec
        assert (spec.qmin, spec.qmax) == (layer.spec.qmin, layer.spec.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    from_file = to_onnx(model, x[:1], weights=weights)
    np.testing.assert_allclose(run_ort(from_file, x, "disable_all"), run_ort(proto, x, "disable_all"), atol=1e-5)


def test_planner_bytes_are_the_files_bytes():
    """The mixed-precision planner measures a full-range weight with the writer's own qmin (-2 at 2 bits)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    original = model[0].weight.detach().clone()
    q = quantize_(model, QuantConfig(bits=2, full_range_weights=True, quantize_inputs=False))
    fq = weight_quantizer(q[0])
    header = encode_compressed(q)[1]
    entry = next(t for t in header["tensors"] if t["name"] == "0.weight")
    assert entry["code_offset"] == -2
    assert uniform_weight_bytes(original, fq) == sum(s["length"] for s in entry["sections"].values())
    codes = _codes(original, fq).numpy()
    assert encoded_uniform_bytes(codes, fq.effective_scale.numpy(), 2, -2) == uniform_weight_bytes(original, fq)


def test_compress_model_passes_the_range_to_quantization_and_the_planner(monkeypatch):
    import torchshrink.recipes.compress as compress

    seen = {}

    class Captured(Exception):
        pass

    def fake_ptq(model, task, qcfg, **_):
        seen["config"] = qcfg
        raise Captured

    def fake_plan(*args, **kwargs):
        seen["plan"] = kwargs.get("full_range")
        raise Captured

    monkeypatch.setattr(compress, "ptq", fake_ptq)
    monkeypatch.setattr(compress, "plan_uniform_mixed_precision", fake_plan)
    monkeypatch.setattr(compress, "smallest_file_bytes", lambda *a, **k: 0)  # the budget's floor is not under test
    pruned = build_model("cnn_tiny")
    with pytest.raises(Captured):
        compress.compress_model(pruned, None, CompressConfig(quant=QuantConfig(bits=2, full_range_weights=True),
                                                             finetune=None), log=None, pruned=pruned)  # fmt: skip
    assert seen["config"].full_range_weights
    with pytest.raises(Captured):
        compress.compress_model(pruned, None, CompressConfig(quant=QuantConfig(bits=4, full_range_weights=True),
                                                             finetune=None, budget_bytes=10_000), log=None,
                                pruned=pruned)  # fmt: skip
    assert seen["plan"] is True


def test_writer_refuses_a_full_range_input_quantizer():
    """Input ranges are stored as bits/signed/symmetric, which the reader turns into a narrow symmetric range:
    a hand-made full-range symmetric input quantizer would load clipping differently, so it is refused."""
    q = quantize_(nn.Sequential(nn.Linear(8, 4)), QuantConfig(bits=4, quantize_inputs=False))
    fq = FakeQuant(QuantSpec(bits=4, signed=True, symmetric=True, narrow=False), is_activation=True)
    fq.enabled = True
    attach_input_quant_(q[0], fq)
    with pytest.raises(ConfigError, match="input quantizer"):
        encode_compressed(q)
    fq.spec = QuantSpec(bits=4, signed=True, symmetric=True)
    encode_compressed(q)  # the narrow one is what the file records


def test_cli_flag_reaches_the_model(tmp_path, data_dir, capsys):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    ckpt = save_checkpoint(tmp_path / "ckpt", model, "cnn_tiny", model.arguments())
    out = tmp_path / "q"
    assert main(["quantize", str(ckpt), "--bits", "2", "--full-range", "--data-dir", data_dir, "--out", str(out)]) == 0
    assert json.loads((out / "quantization.json").read_text())["config"]["full_range_weights"] is True
    codes = safetensors.torch.load_file(str(out / "codes.safetensors"))
    weight_codes = [v for k, v in codes.items() if k.endswith("weight_codes")]
    assert min(int(c.min()) for c in weight_codes) == -2 and max(int(c.max()) for c in weight_codes) <= 1
    assert main(["compress", str(ckpt), "--sparsity", "0.5", "--bits", "2", "--full-range", "--codebook",
                 "--data-dir", data_dir, "--out", str(tmp_path / "c.tshrink")]) == 2  # a usage error  # fmt: skip
    assert "--full-range" in capsys.readouterr().err and not (tmp_path / "c.tshrink").exists()
