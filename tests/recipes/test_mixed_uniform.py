"""Mixed precision for uniform codes: per-layer widths in QuantConfig, the width tables, the plans under their
budgets, and the pipeline writing a file that fits."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from torchshrink.errors import ConfigError
from torchshrink.pack import encode_compressed, inspect_compressed, load_compressed, save_compressed
from torchshrink.pruning import make_permanent, prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import QuantConfig, fold_batchnorm, input_quantizer, quantize_, snap_floats_, weight_quantizer
from torchshrink.quant.export import export_layers
from torchshrink.recipes import (
    CompressConfig,
    TrainConfig,
    allocate_bits,
    compress_model,
    fit_plan_to_file,
    plan_activation_widths,
    plan_uniform_mixed_precision,
    ptq,
    uniform_width_table,
    write_and_verify,
)
from torchshrink.recipes.mixed_activations import input_elements

LAYERS = ["features.conv1", "features.conv2", "features.conv3", "classifier.fc1", "classifier.fc2"]  # cnn_tiny


@pytest.fixture(scope="module")
def quick_task(small):
    """Few validation and calibration images: every width table evaluates the model once per layer and width."""
    return small.subset(train=500, val=300).task(batch_size=64, augment=False, calibration_images=128)


@pytest.fixture(scope="module")
def pruned(trained_tiny):
    model = copy.deepcopy(trained_tiny)
    prune_(model, PruneConfig(0.5))
    make_permanent(model)
    return model.eval()


def _file_bytes(model, task, layer_bits):
    q = ptq(model, task, QuantConfig(bits=8, layer_bits=layer_bits)).model
    snap_floats_(q)
    return len(encode_compressed(q, "cnn_tiny")[0])


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_a_layer_width_applies_to_that_layer_only(trained_tiny, quick_task, bits):
    q = ptq(trained_tiny, quick_task, QuantConfig(bits=8, layer_bits={"features.conv2": bits},
                                                  layer_act_bits={"classifier.fc1": bits})).model  # fmt: skip
    for layer in export_layers(q):
        width = bits if layer.name == "features.conv2" else 8
        assert layer.spec.bits == width
        for channel in layer.codes:  # symmetric codes: at most 2**b - 1 levels per output channel
            assert len(torch.unique(channel)) <= 2**width - 1
    modules = dict(q.named_modules())
    inputs = {name: input_quantizer(modules[name]).spec.bits for name in LAYERS}
    assert inputs == {name: bits if name == "classifier.fc1" else 8 for name in LAYERS}


def test_the_first_input_stays_8_bit_unless_named(trained_tiny, quick_task):
    modules = dict(ptq(trained_tiny, quick_task, QuantConfig(bits=4)).model.named_modules())
    assert input_quantizer(modules["features.conv1"]).spec.bits == 8
    assert input_quantizer(modules["features.conv2"]).spec.bits == 4
    modules = dict(
        ptq(trained_tiny, quick_task, QuantConfig(bits=4, layer_act_bits={"features.conv1": 6})).model.named_modules()
    )
    assert input_quantizer(modules["features.conv1"]).spec.bits == 6


@pytest.mark.parametrize("field", ["layer_bits", "layer_act_bits"])
def test_an_unknown_layer_name_is_refused_by_name(trained_tiny, field):
    model = fold_batchnorm(copy.deepcopy(trained_tiny))
    with pytest.raises(ConfigError, match=f"QuantConfig.{field} names 'features.conv9': not a layer"):
        quantize_(model, QuantConfig(**{field: {"features.conv2": 4, "features.conv9": 4}}))
    assert not any(weight_quantizer(m) is not None for m in model.modules())  # refused before anything changed


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"layer_bits": {"features.conv2": 9}}, "layer_bits\\['features.conv2'\\]: bits=9"),
        ({"layer_act_bits": {"features.conv2": 1}}, "layer_act_bits\\['features.conv2'\\]: bits=1"),
        ({"layer_bits": [("features.conv2", 4)]}, "expected a mapping"),
        ({"layer_act_bits": {"features.conv2": 4}, "quantize_inputs": False}, "quantize_inputs=False"),
    ],
)
def test_impossible_layer_widths_are_refused_when_the_config_is_made(settings, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig(**settings)


def test_a_config_with_layer_widths_stays_hashable_and_serialisable():
    widths = {"features.conv2": 4, "classifier.fc1": 3}
    a = QuantConfig(bits=8, layer_bits=widths)
    widths["features.conv2"] = 2  # the caller's dict changes; the frozen config does not
    b = QuantConfig(bits=8, layer_bits={"classifier.fc1": 3, "features.conv2": 4})
    assert a == b and hash(a) == hash(b) and a.layer_bits == {"features.conv2": 4, "classifier.fc1": 3}
    assert json.loads(json.dumps(a.to_dict()))["layer_bits"] == {"features.conv2": 4, "classifier.fc1": 3}


def test_a_file_with_mixed_widths_loads_back_to_the_same_outputs(pruned, small, quick_task, tmp_path):
    layer_bits = dict(zip(LAYERS, (8, 2, 3, 5, 6), strict=True))
    layer_act_bits = dict(zip(LAYERS, (8, 4, 3, 6, 5), strict=True))
    q = ptq(pruned, quick_task, QuantConfig(bits=8, layer_bits=layer_bits, layer_act_bits=layer_act_bits)).model
    snap_floats_(q)
    path = tmp_path / "mixed.tshrink"
    header = save_compressed(q, path, "cnn_tiny")
    assert {
        t["name"].removesuffix(".weight"): t["bits"] for t in header["tensors"] if t["encoding"] == "uniform"
    } == layer_bits
    assert {a["layer"]: a["bits"] for a in header["activations"]} == layer_act_bits
    loaded = load_compressed(path)
    x = (small.test_x[:500].float() / 255 - 0.2860) / 0.3530
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))


def test_the_table_counts_the_bytes_the_file_spends(pruned, quick_task, tmp_path):
    _, _, table = uniform_width_table(pruned, quick_task, candidates=(2, 5), val_images=100, progress=False)
    assert {(r.layer, r.bits) for r in table} == {(n, b) for n in LAYERS for b in (2, 5)}
    for bits in (2, 5):
        q = ptq(pruned, None, QuantConfig(bits=bits, quantize_inputs=False)).model
        save_compressed(q, tmp_path / f"w{bits}.tshrink", "cnn_tiny")
        _, rows = inspect_compressed(tmp_path / f"w{bits}.tshrink")
        written = {r.name.removesuffix(".weight"): r.bytes for r in rows if r.encoding == "uniform"}
        assert written == {r.layer: r.bytes for r in table if r.bits == bits}  # codes, positions and scales
    for name in LAYERS:
        narrow, wide = (next(r for r in table if (r.layer, r.bits) == (name, b)) for b in (2, 5))
        assert narrow.bytes < wide.bytes


@pytest.fixture(scope="module")
def planned(pruned, quick_task):
    """A plan for a budget halfway between the narrowest and the widest file, fitted to the real file."""
    narrow = _file_bytes(pruned, quick_task, dict.fromkeys(LAYERS, 2))
    wide = _file_bytes(pruned, quick_task, dict.fromkeys(LAYERS, 8))
    budget = (narrow + wide) // 2
    plan = plan_uniform_mixed_precision(pruned, quick_task, budget, (2, 4, 8), val_images=300, progress=False, log=None)
    assert plan.estimated_bytes <= budget
    fitted = fit_plan_to_file(plan, lambda b: _file_bytes(pruned, quick_task, b), log=None)
    return budget, fitted


def test_the_plan_fits_the_budget_in_the_written_file(pruned, quick_task, planned, tmp_path):
    budget, plan = planned
    q = ptq(pruned, quick_task, QuantConfig(bits=8, layer_bits=plan.bits)).model
    snap_floats_(q)
    path = tmp_path / "planned.tshrink"
    header = save_compressed(q, path, "cnn_tiny")
    assert path.stat().st_size == plan.estimated_bytes <= budget  # measured on disk, not estimated
    assert {
        t["name"].removesuffix(".weight"): t["bits"] for t in header["tensors"] if t["encoding"] == "uniform"
    } == plan.bits
    assert len(set(plan.bits.values())) > 1  # halfway between all-2 and all-8: really mixed


def test_a_larger_budget_never_gives_a_narrower_total(planned):
    _, plan = planned
    rows = {(r.layer, r.bits): r for r in plan.table}
    smallest = sum(min(r.bytes for r in plan.table if r.layer == n) for n in LAYERS)
    largest = sum(max(r.bytes for r in plan.table if r.layer == n) for n in LAYERS)
    totals, losses = [], []
    for budget in range(smallest, largest + 200, 97):
        bits = allocate_bits(plan.table, budget, fixed=0)
        totals.append(sum(rows[(n, b)].bytes for n, b in bits.items()))
        losses.append(sum(rows[(n, b)].val_loss for n, b in bits.items()))
        assert totals[-1] <= budget
    assert totals == sorted(totals) and losses == sorted(losses, reverse=True)
    # with room for everything, each layer at its least-loss width (not always the widest: 8-bit and 4-bit
    # losses differ by noise)
    assert losses[-1] == pytest.approx(sum(min(r.val_loss for r in plan.table if r.layer == n) for n in LAYERS))


def test_the_activation_plan_respects_its_budget(pruned, quick_task):
    elements = input_elements(fold_batchnorm(copy.deepcopy(pruned)), torch.zeros(3, 1, 28, 28), LAYERS)
    assert elements == {"features.conv1": 784, "features.conv2": 4 * 14 * 14, "features.conv3": 8 * 7 * 7,
                        "classifier.fc1": 144, "classifier.fc2": 32}  # fmt: skip
    first = 784  # the image's bytes at 8 bits: counted, not planned
    narrow = first + sum(-(-elements[n] * 2 // 8) for n in LAYERS[1:])
    wide = first + sum(elements[n] for n in LAYERS[1:])
    budget = (narrow + wide) // 2
    plan = plan_activation_widths(pruned, quick_task, budget, (2, 4, 8), val_images=300, progress=False, log=None)
    assert set(plan.bits) == set(LAYERS[1:]) and plan.fixed_bytes == first
    spent = first + sum(-(-elements[n] * b // 8) for n, b in plan.bits.items())
    assert spent == plan.estimated_bytes <= budget and set(plan.bits.values()) != {8}
    q = ptq(pruned, quick_task, QuantConfig(bits=8, layer_act_bits=plan.bits)).model
    modules = dict(q.named_modules())
    assert {n: input_quantizer(modules[n]).spec.bits for n in LAYERS} == {"features.conv1": 8, **plan.bits}
    with pytest.raises(ConfigError, match="narrowest widths"):
        plan_activation_widths(pruned, quick_task, narrow - 1, (2, 4, 8), val_images=50, progress=False, log=None)


def test_compress_model_fits_a_budget_with_uniform_codes(trained_tiny, pruned, small, quick_task, tmp_path):
    narrow = _file_bytes(pruned, quick_task, dict.fromkeys(LAYERS, 2))
    wide = _file_bytes(pruned, quick_task, dict.fromkeys(LAYERS, 4))
    budget = (narrow + wide) // 2
    # inputs of one image: 784 bytes for the first layer's (8-bit), 1122 in all at 2 bits, 1460 at 4 bits
    cfg = CompressConfig(quant=QuantConfig(bits=4, act_bits=4), budget_bytes=budget,
                         finetune=TrainConfig(epochs=1, lr=0.01), act_budget_bytes=1300)
    torch.manual_seed(0)
    done = compress_model(trained_tiny, quick_task, cfg, log=None, pruned=pruned, model_name="cnn_tiny")
    model, record = done.model, done.record
    result = write_and_verify(model, trained_tiny, small.test_batches(), tmp_path / "c.tshrink", "cnn_tiny")
    plan = record["mixed_precision"]
    assert result["file_bytes"] <= budget and set(plan["bits"].values()) <= {2, 3, 4}
    assert result["bits"] == sorted(set(plan["bits"].values()))  # the file holds the planned widths
    acts = record["activation_precision"]
    assert acts["estimated_bytes"] <= 1300 and set(acts["bits"]) == set(LAYERS[1:])
    modules = dict(model.named_modules())
    assert {n: input_quantizer(modules[n]).spec.bits for n in acts["bits"]} == acts["bits"]
    assert result["test_accuracy"] > 0.5 and result["test_accuracy"] == result["fake_quant_test_accuracy"]


def test_a_model_that_is_not_registered_works_too(quick_task):
    """The tables and the knapsack only need the layers: a plain module without a registered name."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    plan = plan_uniform_mixed_precision(model, quick_task, 10**6, (2, 8), val_images=64, progress=False, log=None)
    assert set(plan.bits) == {"1", "3"} and plan.estimated_bytes <= 10**6
