from __future__ import annotations

import copy
import warnings

import pytest
import torch

from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pruning import make_permanent, prune_, sparsity_report
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import (
    FakeQuant,
    QuantConfig,
    calibrate_,
    fold_batchnorm,
    quantize_,
    set_quant_enabled,
    storage_report,
    weight_quantizer,
)
from torchshrink.quant.apply import attach_input_quant_
from torchshrink.recipes import TrainConfig, evaluate, fit, ptq, qat


@pytest.fixture(scope="module")
def trained(small_task):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small_task, TrainConfig(epochs=3, lr=0.05), progress=False, log=None)
    return model.eval()


def test_fold_batchnorm_preserves_outputs(trained):
    x = torch.randn(16, 1, 28, 28)
    folded = fold_batchnorm(copy.deepcopy(trained))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(trained(x), folded(x), atol=1e-4)


def test_ptq_8bit_stays_close_to_float(trained, small, small_task):
    float_acc, _ = evaluate(trained, small.test_batches())
    q = ptq(trained, small_task, QuantConfig(bits=8)).model
    q_acc, _ = evaluate(q, small.test_batches())
    assert abs(q_acc - float_acc) < 0.01
    low = ptq(trained, small_task, QuantConfig(bits=2)).model
    # a 2-bit model really is coarser: its weights take at most 3 values per channel
    layer = dict(low.named_modules())["features.conv2"]
    assert len(torch.unique(layer.weight[0])) <= 3


def test_qat_trains_lsq_step_sizes_and_keeps_sparsity(trained, small_task):
    pruned = copy.deepcopy(trained)
    prune_(pruned, PruneConfig(0.5))
    make_permanent(pruned)
    zeros_before = {r.name: r.params - r.nonzeros for r in sparsity_report(pruned)}
    q = ptq(pruned, small_task, QuantConfig(bits=4)).model
    scales_before = {
        n: weight_quantizer(m).scale.detach().clone() for n, m in q.named_modules() if weight_quantizer(m) is not None
    }
    q2 = qat(pruned, small_task, QuantConfig(bits=4), train=TrainConfig(epochs=1, lr=0.01), log=None, progress=False).model
    changed = [
        not torch.equal(weight_quantizer(m).scale, scales_before[n])
        for n, m in q2.named_modules()
        if weight_quantizer(m) is not None
    ]
    assert all(changed)
    assert q2.classifier.fc1.input_quant.scale.requires_grad is False  # frozen again after training
    for r in sparsity_report(q2):
        assert r.params - r.nonzeros >= zeros_before[r.name]  # pruned weights are exact zeros after QAT


def test_storage_report_counts_bits(trained):
    q = ptq(trained, None, QuantConfig(bits=4, quantize_inputs=False)).model
    rows = storage_report(q)
    assert all(r.bits == 4 for r in rows)
    total_params = sum(r.params for r in rows)
    assert sum(r.weight_bytes for r in rows) == total_params / 2
    q8 = ptq(trained, None, QuantConfig(bits=4, keep_first_last_8bit=True, quantize_inputs=False)).model
    bits = [r.bits for r in storage_report(q8)]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {4}


def test_exported_codes_reproduce_the_fake_quantized_weights(trained, small_task):
    from torchshrink.quant.export import export_layers

    pruned = copy.deepcopy(trained)
    prune_(pruned, PruneConfig(0.6))
    q = ptq(pruned, small_task, QuantConfig(bits=3)).model
    layers = export_layers(q)
    modules = dict(q.named_modules())
    for layer in layers:
        assert int(layer.codes.min()) >= layer.spec.qmin and int(layer.codes.max()) <= layer.spec.qmax
        weight = layer.codes.float() * layer.scale.reshape(-1, *[1] * (layer.codes.ndim - 1))
        assert torch.allclose(weight, modules[layer.name].weight, atol=1e-6)
    zeros = sum(int((x.codes == 0).sum()) for x in layers)
    assert zeros >= 0.6 * sum(x.codes.numel() for x in layers) - 1  # pruned weights are zero codes


def _encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), torch.nn.Linear(16, 4)
    )


@pytest.mark.parametrize("fast_path", [False, True])
def test_attention_reads_its_quantized_projections(fast_path):
    """nn.MultiheadAttention passes in_proj_weight and out_proj.weight to its functional call (or torch's fused
    fast path): the parametrized, quantized ones."""
    model = _encoder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of attention is left in float any more
        q = quantize_(copy.deepcopy(model), QuantConfig(bits=3, quantize_inputs=False))
    attention = q[0].self_attn
    reference = copy.deepcopy(model[0].self_attn)
    for attr in ("in_proj_weight",):
        quantized = getattr(attention, attr).detach().clone()
        assert not torch.equal(quantized, getattr(model[0].self_attn, attr))
        assert len(torch.unique(quantized[0])) <= 7  # 3-bit codes of one row
        with torch.no_grad():
            getattr(reference, attr).copy_(quantized)
    quantized = attention.out_proj.weight.detach().clone()
    assert len(torch.unique(quantized[0])) <= 7
    with torch.no_grad():
        reference.out_proj.weight.copy_(quantized)
    x = torch.randn(2, 5, 16)
    for m in (attention, reference, model[0].self_attn):
        m.train(not fast_path)  # eval + no_grad takes torch's fused fast path, training mode the Python one
    with torch.set_grad_enabled(not fast_path):
        got, _ = attention(x, x, x)
        expected, _ = reference(x, x, x)
        plain, _ = model[0].self_attn(x, x, x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-4)


def test_calibration_names_a_layer_whose_input_saw_nothing():
    model = _encoder()
    with pytest.warns(UserWarning):
        q = quantize_(model, QuantConfig(bits=4))
    attach_input_quant_(q[0].self_attn.out_proj, 8)  # what quantize_ avoids: attention never calls it
    with pytest.raises(ConfigError, match=r"'0.self_attn.out_proj' saw no data: its forward was never called"):
        calibrate_(q, [torch.randn(2, 5, 16)])
    assert not any(fq.observing for fq in q.modules() if isinstance(fq, FakeQuant))  # left as it was
    with pytest.raises(ConfigError, match="batches are empty"):
        calibrate_(q, [])


def test_dequantized_copy_is_the_latent_float_model(trained, small_task):
    """QAT at a narrower width starts from a trained quantized model: its latent weights, no quantizer left."""
    from torch.nn.utils import parametrize

    from torchshrink.recipes import dequantized_copy

    pruned = copy.deepcopy(trained)
    prune_(pruned, PruneConfig(0.5))
    q = ptq(pruned, small_task, QuantConfig(bits=4)).model
    with torch.no_grad():  # latent weights off the 4-bit grid, so dropping the quantizer visibly changes them
        for m in q.modules():
            if weight_quantizer(m) is not None:
                m.parametrizations.weight.original.add_(1e-3)
    plain = dequantized_copy(q)
    assert not any(parametrize.is_parametrized(m) or hasattr(m, "input_quant") for m in plain.modules())
    assert not any(m._forward_pre_hooks for m in plain.modules())
    for name, m in q.named_modules():
        if weight_quantizer(m) is not None:
            chain = m.parametrizations.weight
            latent = chain.original * chain[0].mask  # the mask first, then the quantizer
            assert torch.equal(plain.get_submodule(name).weight, latent)
            assert torch.equal(plain.get_submodule(name).weight == 0, m.weight == 0)  # pruned weights stay zero
            assert not torch.equal(plain.get_submodule(name).weight, m.weight)  # not the quantized values
    x = torch.randn(8, 1, 28, 28)
    off = copy.deepcopy(q)  # the quantized model with its quantizers switched off computes the same
    set_quant_enabled(off, False)
    assert torch.allclose(plain(x), off(x), atol=1e-6) and not torch.allclose(plain(x), q(x), atol=1e-3)
    assert weight_quantizer(q.features.conv1) is not None and hasattr(q.features.conv1, "input_quant")  # untouched
    again = qat(plain, small_task, QuantConfig(bits=2), train=TrainConfig(epochs=1, lr=0.01), log=None).model
    assert len(torch.unique(again.features.conv2.weight[0])) <= 3  # quantizes afresh at the new width


def test_dequantized_copy_refuses_codebooks(trained):
    from torchshrink.recipes import codebook, dequantized_copy
    from torchshrink.recipes.quantize import CodebookConfig

    cb = codebook(trained, None, CodebookConfig(bits=3), train=None, log=None).model
    with pytest.raises(ConfigError, match="codebook layer keeps no float weights"):
        dequantized_copy(cb)
