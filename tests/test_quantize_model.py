from __future__ import annotations

import copy

import pytest
import torch

from torchshrink.models import build_model
from torchshrink.pruning import make_permanent, prune_, sparsity_report
from torchshrink.quant import (
    QuantConfig,
    fold_batchnorm,
    ptq,
    qat,
    storage_report,
    weight_quantizer,
)
from torchshrink.train import TrainConfig, evaluate, fit


@pytest.fixture(scope="module")
def trained(small):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    fit(model, small, TrainConfig(epochs=3, lr=0.05, batch_size=64, augment=False), "cpu", progress=False, log=None)
    return model.eval()


def test_fold_batchnorm_preserves_outputs(trained):
    x = torch.randn(16, 1, 28, 28)
    folded = fold_batchnorm(copy.deepcopy(trained))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(trained(x), folded(x), atol=1e-4)


def test_ptq_8bit_stays_close_to_float(trained, small):
    float_acc, _ = evaluate(trained, small.test_x, small.test_y)
    q = ptq(trained, small, QuantConfig(bits=8))
    q_acc, _ = evaluate(q, small.test_x, small.test_y)
    assert abs(q_acc - float_acc) < 0.01
    low = ptq(trained, small, QuantConfig(bits=2))
    # a 2-bit model really is coarser: its weights take at most 3 values per channel
    layer = dict(low.named_modules())["features.conv2"]
    assert len(torch.unique(layer.weight[0])) <= 3


def test_qat_trains_lsq_step_sizes_and_keeps_sparsity(trained, small):
    pruned = copy.deepcopy(trained)
    prune_(pruned, 0.5)
    make_permanent(pruned)
    zeros_before = {r.name: r.params - r.nonzeros for r in sparsity_report(pruned)}
    q = ptq(pruned, small, QuantConfig(bits=4))
    scales_before = {
        n: weight_quantizer(m).scale.detach().clone() for n, m in q.named_modules() if weight_quantizer(m) is not None
    }
    q2, _ = qat(
        pruned,
        small,
        QuantConfig(bits=4),
        TrainConfig(epochs=1, lr=0.01, batch_size=64, augment=False),
        log=None,
        progress=False,
    )
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
    q = ptq(trained, None, QuantConfig(bits=4, quantize_inputs=False))
    rows = storage_report(q)
    assert all(r.bits == 4 for r in rows)
    total_params = sum(r.params for r in rows)
    assert sum(r.weight_bytes for r in rows) == total_params / 2
    q8 = ptq(trained, None, QuantConfig(bits=4, keep_first_last_8bit=True, quantize_inputs=False))
    bits = [r.bits for r in storage_report(q8)]
    assert bits[0] == 8 and bits[-1] == 8 and set(bits[1:-1]) == {4}


def test_exported_codes_reproduce_the_fake_quantized_weights(trained, small):
    from torchshrink.quant.export import export_layers

    pruned = copy.deepcopy(trained)
    prune_(pruned, 0.6)
    q = ptq(pruned, small, QuantConfig(bits=3))
    layers = export_layers(q)
    modules = dict(q.named_modules())
    for layer in layers:
        assert int(layer.codes.min()) >= layer.spec.qmin and int(layer.codes.max()) <= layer.spec.qmax
        weight = layer.codes.float() * layer.scale.reshape(-1, *[1] * (layer.codes.ndim - 1))
        assert torch.allclose(weight, modules[layer.name].weight, atol=1e-6)
    zeros = sum(int((x.codes == 0).sum()) for x in layers)
    assert zeros >= 0.6 * sum(x.codes.numel() for x in layers) - 1  # pruned weights are zero codes
