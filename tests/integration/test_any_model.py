"""Every capability on a user's own model and data: four model families defined in tests/zoo.py, fed by plain
DataLoaders on synthetic data. Each check would fail if the capability silently skipped a layer or family."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from torchshrink import (
    CompressConfig,
    GradualConfig,
    IterativeConfig,
    QuantConfig,
    Task,
    TrainConfig,
    codebook,
    compress_model,
    fit,
    gradual_prune,
    iterative_prune,
    load_compressed,
    make_permanent,
    prune_,
    ptq,
    qat,
    save_compressed,
    structured_prune_,
)
from torchshrink.layers import default_filter, prunable_layers, skipped_layers
from torchshrink.pruning.config import PruneConfig, StructuredConfig
from torchshrink.quant import quantized_layers
from torchshrink.quant.sharing import codebook_layers
from torchshrink.recipes.quantize import CodebookConfig
from zoo import FAMILIES, Family, make_loader, make_model

QUICK = TrainConfig(epochs=1, lr=0.01, channels_last=False)
ids = [f.name for f in FAMILIES]


def _task(family: Family) -> Task:
    return Task(train=make_loader(family), val=make_loader(family, n=128, seed=1, shuffle=False))


def _inputs(family: Family, n: int = 64) -> torch.Tensor:
    return family.inputs(torch.Generator().manual_seed(7), n)


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_a_dataloader_trains_the_model(family):
    model = make_model(family).train()
    history = fit(model, _task(family), TrainConfig(epochs=3, lr=0.02, channels_last=False), progress=False, log=None)
    assert history[-1].train_loss < history[0].train_loss
    assert 0 <= history[-1].val_accuracy <= 1


@pytest.mark.parametrize("scope", ["global", "layer", "lamp"])
@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_pruning_reaches_every_accepted_layer(family, scope):
    model = make_model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the transformer's skipped parameters are reported by a warning
        prune_(model, PruneConfig(0.6, scope))
    layers = prunable_layers(model)
    zeros = sum(int((w.tensor == 0).sum()) for w in layers.values())
    total = sum(w.tensor.numel() for w in layers.values())
    assert abs(zeros / total - 0.6) < 0.01
    if scope == "layer":
        for name, w in layers.items():
            assert abs(float((w.tensor == 0).float().mean()) - 0.6) < 0.02, name


def test_what_is_not_pruned_is_listed_with_a_reason():
    family = next(f for f in FAMILIES if f.name == "transformer")
    model = make_model(family)
    assert skipped_layers(model) == {}  # embeddings and attention's packed projections are layers too
    layers = prunable_layers(model)
    assert {"embed", "encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj"} <= set(layers)
    model.extra = nn.Parameter(torch.randn(4, 4))  # a weight of no layer: listed, with its reason
    assert set(skipped_layers(model)) == {"extra"}
    with pytest.warns(UserWarning, match="extra: TinyTransformer is not a layer kind"):
        prune_(model, PruneConfig(0.5))


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
@pytest.mark.parametrize("bits", [8, 4])
def test_post_training_quantization_covers_every_layer(family, bits):
    model = make_model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = ptq(model, make_loader(family), QuantConfig(bits=bits)).model  # a DataLoader of (inputs, targets) calibrates
    assert set(quantized_layers(q)) == set(prunable_layers(model, default_filter))
    x = _inputs(family)
    with torch.no_grad():
        ref, out = model(x), q(x)
    error = float((out - ref).norm() / ref.norm())
    assert error < (0.05 if bits == 8 else 0.5), error  # W8A8 is close to float; W4A4 is still the same function


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_a_few_qat_steps_train_weights_and_step_sizes(family):
    model = make_model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = ptq(model, make_loader(family), QuantConfig(bits=4)).model
        result = qat(model, _task(family), QuantConfig(bits=4), train=QUICK, log=None, progress=False)
        q, history = result.model, result.history
    layer = next(iter(quantized_layers(q)))
    fq_before = before.get_submodule(layer).parametrizations.weight[-1]
    fq_after = q.get_submodule(layer).parametrizations.weight[-1]  # the first weight is a module's 'weight'
    assert not torch.equal(fq_before.scale, fq_after.scale)  # LSQ moved the step sizes
    assert len(history) == 1


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
def test_codebooks_share_weights_in_every_layer(family):
    model = make_model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = codebook(model, _task(family), CodebookConfig(3, act_bits=8), log=None, train=None).model
    books = codebook_layers(q)
    assert set(books) == set(prunable_layers(model))
    for name, w in prunable_layers(q).items():
        values = w.tensor.unique()
        assert len(values[values != 0]) <= 7, name


@pytest.mark.parametrize("family", FAMILIES, ids=ids)
@pytest.mark.parametrize("kind", ["w8a8", "w4a4-pruned", "codebook"])
def test_the_file_loads_into_a_fresh_instance_with_identical_predictions(family, kind, tmp_path):
    model = make_model(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "w4a4-pruned":
            prune_(model, PruneConfig(0.7))
            make_permanent(model)
        q = (codebook(model, _task(family), CodebookConfig(4, act_bits=8), log=None, train=None).model if kind == "codebook"
             else ptq(model, make_loader(family), QuantConfig(bits=8 if kind == "w8a8" else 4)).model)  # fmt: skip
        save_compressed(q, tmp_path / "m.tshrink")
        loaded = load_compressed(tmp_path / "m.tshrink", model=make_model(family, seed=99))
    x = _inputs(family)
    with torch.no_grad():
        expected, got = q(x), loaded(x)
    assert torch.equal(expected.argmax(1), got.argmax(1))
    assert torch.allclose(expected, got, atol=1e-5), float((expected - got).abs().max())


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.structured], ids=lambda f: f.name)
def test_structured_pruning_rebuilds_a_smaller_model_that_still_saves(family, tmp_path):
    model = make_model(family)
    small = copy.deepcopy(model)
    changes = structured_prune_(small, StructuredConfig(0.5))
    assert changes and all(after < before for before, after in changes.values())
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    q = ptq(small, make_loader(family), QuantConfig(bits=8)).model
    save_compressed(q, tmp_path / "s.tshrink")
    loaded = load_compressed(tmp_path / "s.tshrink", model=copy.deepcopy(small))
    x = _inputs(family)
    with torch.no_grad():
        assert torch.allclose(q(x), loaded(x), atol=1e-5)


def test_dataloaders_drive_every_procedure_end_to_end(tmp_path):
    family = next(f for f in FAMILIES if f.name == "conv1d")
    task = _task(family)
    model = make_model(family).train()
    fit(model, task, QUICK, progress=False, log=None)
    steps = iterative_prune(copy.deepcopy(model), task, IterativeConfig(0.5, 2, QUICK), log=None).steps
    assert abs(steps[-1].achieved - 0.5) < 1e-3 and steps[-1].val_acc_retrained is not None
    pruned = gradual_prune(copy.deepcopy(model), task, GradualConfig(0.5, QUICK), log=None)
    assert abs(pruned.sparsity - 0.5) < 1e-3
    cfg = CompressConfig(IterativeConfig(0.5, 1, QUICK), QuantConfig(bits=4), finetune=QUICK)
    done = compress_model(model, task, cfg, log=None)
    compressed, record = done.model, done.record
    assert quantized_layers(compressed) and record["prune_steps"]
    save_compressed(compressed, tmp_path / "c.tshrink")
    loaded = load_compressed(tmp_path / "c.tshrink", model=make_model(family))
    x = _inputs(family)
    with torch.no_grad():
        assert torch.equal(compressed(x).argmax(1), loaded(x).argmax(1))


def test_a_custom_loss_and_metric_are_used():
    family = next(f for f in FAMILIES if f.name == "mlp_layernorm")
    seen = {"loss": 0, "metric": 0}

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen["loss"] += 1
        return nn.functional.cross_entropy(outputs, targets)

    def metric(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen["metric"] += 1
        return torch.ones(len(targets)).sum()  # "always right": the metric reported must be exactly 1

    task = Task(train=make_loader(family), val=make_loader(family, n=64, seed=1), loss=loss, metric=metric)
    history = fit(make_model(family).train(), task, QUICK, progress=False, log=None)
    assert seen["loss"] == len(task.train) + 2 and seen["metric"] == 2  # training steps + validation batches
    assert history[0].val_accuracy == 1.0


def test_a_codebook_model_in_memory_equals_its_file_bit_for_bit(tmp_path):
    """The shared-gradient trick must not move the centroids' values by an ulp (``c * g + (c - c * g).detach()``
    did, for about 1 in 1,000 values): the weights in memory are exactly the stored centroids."""
    from torchshrink.quant.sharing import Codebook

    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    cb = Codebook(weight, 8)
    with torch.no_grad():
        cb.centroids.copy_(torch.randn(255))
    cb.inverse_counts.copy_(1.0 / torch.randint(1, 5000, (255,)).float())  # many cluster sizes
    used = cb(weight)  # centroids require grad here, as during fine-tuning
    exact = torch.cat([torch.zeros(1), cb.centroids.detach()])[cb.indices]
    assert torch.equal(used, exact)
    used.sum().backward()  # and the gradient is still the cluster mean: count * (1 / count) = 1 per centroid
    counts = torch.zeros(256).index_add_(0, cb.indices.flatten(), torch.ones(cb.indices.numel()))[1:]
    assert torch.allclose(cb.centroids.grad, counts * cb.inverse_counts)
    family = next(f for f in FAMILIES if f.name == "resnet")
    q = codebook(make_model(family), _task(family), CodebookConfig(4, act_bits=8), train=QUICK, log=None).model
    save_compressed(q, tmp_path / "cb.tshrink")
    loaded = load_compressed(tmp_path / "cb.tshrink", model=make_model(family, seed=3))
    x = _inputs(family)
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))


def test_qat_on_a_regression_model_with_its_own_loss_and_metric():
    """Nothing assumes a classifier: a regressor trains with its MSE loss and is scored by its own metric."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 2)  # (N, 2) real-valued targets
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

    def neg_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -((outputs - targets) ** 2).sum(dim=1).sum()

    task = Task(train=loader, val=loader, loss=nn.functional.mse_loss, metric=neg_squared_error)
    fit(model, task, TrainConfig(epochs=5, lr=0.02, channels_last=False), progress=False, log=None)
    result = qat(model, task, QuantConfig(bits=8), train=QUICK, log=None, progress=False)
    q, history = result.model, result.history
    assert history[0].val_accuracy < 0 and q(x[:4]).shape == (4, 2)


def test_filter_fn_chooses_the_layers_of_every_high_level_call():
    family = next(f for f in FAMILIES if f.name == "conv1d")
    model = make_model(family)

    def not_the_head(module: nn.Module, name: str) -> bool:
        return default_filter(module, name) and name != "head"

    q = ptq(model, make_loader(family), QuantConfig(bits=4), filter_fn=not_the_head).model
    assert set(quantized_layers(q)) == {"conv1", "conv2"}
    cb = codebook(model, _task(family), CodebookConfig(4, act_bits=8), log=None, filter_fn=not_the_head, train=None).model
    assert set(codebook_layers(cb)) == {"conv1", "conv2"}
    cfg = CompressConfig(IterativeConfig(0.5, 1, TrainConfig(epochs=1, lr=0.02)), QuantConfig(bits=4), finetune=None)
    compressed = compress_model(model, _task(family), cfg, log=None, filter_fn=not_the_head).model
    assert set(quantized_layers(compressed)) == {"conv1", "conv2"}
    assert bool((compressed.head.weight != 0).all())  # neither pruned nor quantized


def test_mixed_precision_fits_a_budget_on_a_user_model(tmp_path):
    family = next(f for f in FAMILIES if f.name == "conv1d")
    model = make_model(family)
    prune_(model, PruneConfig(0.5))
    make_permanent(model)
    cfg = CompressConfig(quant=QuantConfig(bits=5), codebook=True, finetune=None, budget_bytes=4000)
    done = compress_model(model, _task(family), cfg, log=None)
    compressed, record = done.model, done.record
    save_compressed(compressed, tmp_path / "mixed.tshrink")
    assert (tmp_path / "mixed.tshrink").stat().st_size <= 4000
    assert set(record["mixed_precision"]["bits"]) == set(prunable_layers(model))
