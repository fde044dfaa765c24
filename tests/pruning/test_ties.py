"""A weight two modules share (a language model's head tied to its embedding) gets one mask for both uses, and is
never masked for one of them alone: that would make the model silently different once the mask is permanent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.layers import default_filter, find_parametrization
from torchshrink.pruning import PruneConfig, make_permanent, prune_, prune_from_zeros_
from torchshrink.pruning.apply import Mask


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 50, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(tokens))))


@pytest.mark.filterwarnings("ignore:prune_ left")  # the embedding's N(0, 1) weights outrank the rest globally
@pytest.mark.parametrize("scope", ["layer", "global", "lamp"])
def test_a_tied_pair_gets_one_mask_and_stays_one_tensor(scope):
    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 50, (4, 7))
    masks = prune_(model, PruneConfig(0.8, scope))
    assert masks["embed"] is masks["head"]  # one mask, ranked once
    assert find_parametrization(model.embed, Mask) is find_parametrization(model.head, Mask)
    assert torch.equal(model.embed.weight, model.head.weight)  # both uses read the pruned values while training
    masked = model(tokens)
    make_permanent(model)
    assert model.embed.weight is model.head.weight  # still one tensor, pruned for both
    zeros = float((model.embed.weight == 0).float().mean())
    assert zeros == pytest.approx(0.8, abs=1e-3) if scope == "layer" else 0 < zeros < 1
    assert torch.equal(model(tokens), masked)


@pytest.mark.filterwarnings("ignore:prune_ left")
def test_the_tie_is_pruned_as_one_tensor_in_the_global_ranking():
    torch.manual_seed(0)
    model = TiedLM()
    prune_(model, PruneConfig(0.5, "global"))
    weights = [model.embed.weight, model.body.weight]  # the head is the embedding: counted once
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.5 * sum(w.numel() for w in weights))


@pytest.mark.parametrize("attach", [lambda m, f: prune_(m, PruneConfig(0.8), f), prune_from_zeros_])
def test_a_tie_with_a_layer_left_out_is_refused_by_both_names_and_nothing_changes(attach):
    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 50, (4, 7))
    before = model(tokens)
    only_head = lambda m, name: name != "embed" and default_filter(m, name)  # noqa: E731
    with pytest.raises(ConfigError, match=r"head.weight is the same tensor as embed.weight.*filter_fn"):
        attach(model, only_head)
    make_permanent(model)
    assert torch.equal(model(tokens), before) and bool((model.embed.weight != 0).all())


def test_leaving_both_tied_layers_out_prunes_the_rest():
    model = TiedLM()
    masks = prune_(model, PruneConfig(0.5), filter_fn=lambda m, name: name == "body")
    assert set(masks) == {"body"}


def test_one_module_reached_under_two_names_is_not_a_tie():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    masks = prune_(model, PruneConfig(0.5))
    assert set(masks) == {"0"}
    prune_(model, PruneConfig(0.7))  # pruning again: the parametrized original is the layer's own
