from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.utils.prune as tprune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.models import MLP, build_model
from torchshrink.pruning import (
    MASKS,
    agp_schedule,
    get_mask,
    global_magnitude_masks,
    lamp_scores,
    layer_magnitude_mask,
    linear_schedule,
    make_permanent,
    prune_,
    prune_from_zeros_,
    sparsity_report,
)
from torchshrink.pruning.config import PruneConfig
from torchshrink.pruning.masks import min_density_masks


def _total_sparsity(model: nn.Module) -> float:
    rows = sparsity_report(model)
    return 1 - sum(r.nonzeros for r in rows) / sum(r.params for r in rows)


# --- pure masks against torch.nn.utils.prune ---------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.77, 0.95])
def test_layer_mask_matches_torch_l1_unstructured(amount):
    torch.manual_seed(1)
    layer = nn.Conv2d(8, 16, 3)
    ours = layer_magnitude_mask(layer.weight, amount)
    tprune.l1_unstructured(layer, "weight", amount=amount)
    assert torch.equal(ours, layer.weight_mask)  # continuous random weights: no ties


@pytest.mark.parametrize("amount", [0.2, 0.6, 0.9])
def test_global_mask_matches_torch_global_unstructured(amount):
    torch.manual_seed(2)
    model = build_model("cnn_tiny")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ours = global_magnitude_masks([m.weight for m in layers], amount)
    tprune.global_unstructured([(m, "weight") for m in layers], tprune.L1Unstructured, amount=amount)
    for mask, m in zip(ours, layers, strict=True):
        assert torch.equal(mask, m.weight_mask)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    amount=st.floats(0, 0.99),
    quantize=st.booleans(),
)
def test_achieved_sparsity_is_exact_even_with_ties(shape, amount, quantize):
    """The number of zeros is round(amount * n) whatever the shape, amount or ties in the values."""
    w = torch.randn(shape)
    if quantize:
        w = w.round()  # many exact ties
    mask = layer_magnitude_mask(w, amount)
    assert int((mask == 0).sum()) == round(amount * w.numel())
    masks = global_magnitude_masks([w, w * 2], amount)
    assert int(sum((m == 0).sum() for m in masks)) == round(amount * 2 * w.numel())


@settings(max_examples=40, deadline=None)
@given(first=st.floats(0, 0.9), second=st.floats(0, 0.9))
def test_a_pruned_weight_is_never_revived(first, second):
    """Iterative masks only ever add zeros, even when surviving weights shrink below pruned ones."""
    w = torch.randn(64)
    m1 = layer_magnitude_mask(w, first)
    w2 = w * m1 + 10 * (1 - m1)  # pruned entries now have the largest magnitudes
    m2 = layer_magnitude_mask(w2, max(first, second), m1)
    assert not bool(((m1 == 0) & (m2 == 1)).any())


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(37,), (6, 5), (4, 3, 2, 2)])
def test_mask_table_matches_torch_on_random_tensors(shape, amount):
    """MASKS['layer'] keeps what l1_unstructured keeps and MASKS['global'] what global_unstructured keeps."""
    torch.manual_seed(len(shape))
    holders = [nn.Module() for _ in range(3)]
    for i, h in enumerate(holders):
        h.w = nn.Parameter(torch.randn(shape) * (i + 1))  # different scales: global differs from per-layer
    tensors = [h.w.detach().clone() for h in holders]
    per_layer = MASKS["layer"](tensors, amount, [None] * 3)
    together = MASKS["global"](tensors, amount, [None] * 3)
    reference = copy.deepcopy(holders)
    for h in reference:
        tprune.l1_unstructured(h, "w", amount=amount)
    tprune.global_unstructured([(h, "w") for h in holders], tprune.L1Unstructured, amount=amount)
    for ours, ref in zip(per_layer, reference, strict=True):
        assert torch.equal(ours, ref.w_mask)
    for ours, ref in zip(together, holders, strict=True):
        assert torch.equal(ours, ref.w_mask)


@pytest.mark.parametrize("first, second", [(0.3, 0.6), (0.5, 0.8), (0.2, 0.9)])
def test_iterative_layer_mask_matches_torch_pruning_the_remaining_weights(first, second):
    """With a previous mask, pruning to ``second`` in total is torch pruning the extra count among survivors."""
    torch.manual_seed(3)
    holder = nn.Module()
    holder.w = nn.Parameter(torch.randn(10, 12))
    n = holder.w.numel()
    m1 = layer_magnitude_mask(holder.w, first)
    ours = layer_magnitude_mask(holder.w, second, m1)
    tprune.custom_from_mask(holder, "w", m1)
    tprune.l1_unstructured(holder, "w", amount=round(second * n) - round(first * n))  # a count: of what is left
    assert torch.equal(ours, holder.w_mask)


def test_mask_table_functions_share_one_signature_and_unknown_scopes_list_them():
    torch.manual_seed(0)
    scores = [torch.randn(4, 5), torch.randn(7)]
    previous = [None, (torch.rand(7) > 0.5).float()]
    for name, fn in MASKS.items():
        masks = fn(scores, 0.5, previous)
        assert [m.shape for m in masks] == [s.shape for s in scores], name
        assert not bool(((previous[1] == 0) & (masks[1] == 1)).any()), name
    with pytest.raises(ConfigError, match="'layer', 'global', 'lamp'"):
        prune_(build_model("cnn_tiny"), PruneConfig(0.5, "magnitude"))


@pytest.mark.parametrize("scope", ["layer", "global", "lamp"])
def test_asking_for_less_than_the_previous_sparsity_revives_nothing(scope):
    """A layer already 50% sparse, pruned 'to 30%', keeps its 50% zeros (above the request, by design)."""
    torch.manual_seed(0)
    model = MLP(hidden=(64, 32))
    prune_(model, PruneConfig(0.5, "layer"))
    before = {n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None}
    masks = prune_(model, PruneConfig(0.3, scope))
    for name, mask in masks.items():
        assert torch.equal(mask, before[name])  # every old zero stays, and 30% < 50% adds none
    assert abs(_total_sparsity(model) - 0.5) < 1e-3
    w = torch.randn(100)
    old = layer_magnitude_mask(w, 0.5)
    assert torch.equal(layer_magnitude_mask(w, 0.3, old), old)  # the pure function alike


@settings(max_examples=40, deadline=None)
@given(first=st.floats(0, 0.9), second=st.floats(0, 0.9), density=st.floats(0, 1))
def test_no_mask_function_ever_revives_a_pruned_weight(first, second, density):
    """Whatever the amounts, every table function and the density floor only ever add zeros."""
    ws = [torch.randn(30), torch.randn(5, 4) * 0.01]
    previous = [layer_magnitude_mask(w, first) for w in ws]
    grown = [w * m + 10 * (1 - m) for w, m in zip(ws, previous, strict=True)]  # pruned entries now largest
    for fn in MASKS.values():
        masks = min_density_masks(grown, fn(grown, second, previous), previous, density)
        for old, new in zip(previous, masks, strict=True):
            assert not bool(((old == 0) & (new == 1)).any())


def _small_middle_layer() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # 1000x smaller than the others: first in line for a global threshold
    return model


def test_global_pruning_that_empties_a_layer_warns_and_min_density_keeps_a_floor():
    model = _small_middle_layer()
    with pytest.warns(UserWarning, match=r"2 \(0 of 4096 weights non-zero\).*scope='lamp'.*min_density") as record:
        prune_(copy.deepcopy(model), PruneConfig(0.8))
    assert len([w for w in record if "almost no weight" in str(w.message)]) == 1

    floored = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 5% kept: nothing to warn about
        masks = prune_(floored, PruneConfig(0.8, min_density=0.05))
    n = model[2].weight.numel()
    assert int(masks["2"].sum()) == math.ceil(0.05 * n)
    assert torch.equal(masks["2"], layer_magnitude_mask(model[2].weight, 1 - math.ceil(0.05 * n) / n))  # its top 5%
    rows = {r.name: r for r in sparsity_report(floored)}
    total = 1 - sum(r.nonzeros for r in rows.values()) / sum(r.params for r in rows.values())
    assert 0.75 < total < 0.8  # a little under the request, by the floor's extra weights


def test_lamp_does_not_empty_the_small_layer():
    model = _small_middle_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = prune_(model, PruneConfig(0.8, "lamp"))
    assert masks["2"].mean() > 0.05


def test_invalid_amounts_are_rejected():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="must be in"):
            layer_magnitude_mask(torch.randn(4), bad)


def test_schedules():
    assert [round(linear_schedule(0.8, 4)(i), 3) for i in range(5)] == [0, 0.2, 0.4, 0.6, 0.8]
    agp = agp_schedule(0.9, 5)
    values = [agp(i) for i in range(6)]
    assert values[0] == 0 and abs(values[-1] - 0.9) < 1e-12
    increments = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(x > y for x, y in zip(increments, increments[1:], strict=False))  # fast first, slow near the end
    with pytest.raises(ConfigError, match="steps=0"):
        linear_schedule(0.5, 0)


# --- masks attached to a model ------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_zeros_survive_training_with_momentum_and_weight_decay(optimizer):
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    # warm the optimizer state first, so momentum would push pruned weights if nothing stopped it
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        if optimizer == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    )
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    prune_(model, PruneConfig(0.7, "layer"))
    params = list(model.parameters())  # the originals now, plus the rest
    opt2 = type(opt)(params, **{k: v for k, v in opt.defaults.items() if k in ("lr", "weight_decay", "momentum")})
    for _ in range(5):
        opt2.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt2.step()
    assert abs(_total_sparsity(model) - 0.7) < 0.01
    for m in model.modules():
        if get_mask(m) is not None:
            assert bool((m.weight[get_mask(m) == 0] == 0).all())


def test_make_permanent_leaves_plain_weights_with_the_zeros():
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    prune_(model, PruneConfig(0.5))
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    before = model(x)
    make_permanent(model)
    assert not any("parametrizations" in k for k in model.state_dict())
    assert torch.equal(model(x), before)
    assert abs(_total_sparsity(model) - 0.5) < 1e-3
    masks = prune_from_zeros_(model)
    assert sum(int((m == 0).sum()) for m in masks.values()) == sum(
        r.params - r.nonzeros for r in sparsity_report(model)
    )


def test_global_prunes_small_layers_harder_and_layer_scope_is_uniform():
    torch.manual_seed(0)
    model = MLP(hidden=(64, 32))  # the second architecture
    with torch.no_grad():
        model.net[3].weight.mul_(0.01)  # a layer of small weights
    g = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="net.3"):  # emptied: the warning says so
        prune_(g, PruneConfig(0.5, "global"))
    rows = {r.name: r for r in sparsity_report(g)}
    assert rows["net.3"].sparsity > 0.9 and rows["net.1"].sparsity < 0.5
    prune_(model, PruneConfig(0.5, "layer"))
    assert all(abs(r.sparsity - 0.5) < 0.01 for r in sparsity_report(model))


def test_filter_that_matches_nothing_is_an_error():
    with pytest.raises(ConfigError, match="no prunable layer"):
        prune_(build_model("cnn_tiny"), PruneConfig(0.5), lambda m, n: False)
    with pytest.raises(ConfigError, match="no prunable layer named"):
        prune_(build_model("cnn_tiny"), PruneConfig({"nope": 0.5}, "layer"))


def test_permanent_copy_leaves_the_original_masked():
    from torchshrink.pruning import permanent_copy, prunable_layers

    model = build_model("cnn_tiny")
    prune_(model, PruneConfig(0.5))
    plain = permanent_copy(model)
    assert get_mask(plain.features.conv1) is None and get_mask(model.features.conv1) is not None
    assert len(prunable_layers(model)) == 5  # the original still has its weights and masks
    prune_(model, PruneConfig(0.7))  # and can go on pruning, never reviving what the copy has as zeros
    revived = (plain.features.conv1.weight == 0) & (get_mask(model.features.conv1) == 1)
    assert not bool(revived.any())


def test_lamp_scores_follow_the_definition_and_ignore_layer_scale():
    w = torch.tensor([0.5, -2.0, 1.0, 0.0])
    # sorted squares 0, .25, 1, 4: each over the sum of itself and everything larger
    expected = torch.tensor([0.25 / 5.25, 4.0 / 4.0, 1.0 / 5.0, 0.0 / 5.25])
    assert torch.allclose(lamp_scores(w), expected)
    assert torch.allclose(lamp_scores(w * 1000), expected)  # scale-free
    assert lamp_scores(w, torch.tensor([1.0, 1.0, 0.0, 1.0]))[2] == -1  # pruned entries stay pruned
    torch.manual_seed(0)
    model = MLP(hidden=(64, 32))
    with torch.no_grad():
        model.net[3].weight.mul_(0.01)  # global magnitude would empty this layer first; LAMP does not care
    lamp = copy.deepcopy(model)
    prune_(lamp, PruneConfig(0.8, "lamp"))
    assert abs(_total_sparsity(lamp) - 0.8) < 1e-3
    torch.manual_seed(0)
    unscaled = MLP(hidden=(64, 32))
    prune_(unscaled, PruneConfig(0.8, "lamp"))
    assert [get_mask(m).sum() for m in lamp.modules() if get_mask(m) is not None] == [
        get_mask(m).sum() for m in unscaled.modules() if get_mask(m) is not None
    ]
