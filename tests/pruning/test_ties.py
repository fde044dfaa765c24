"""A weight two modules share (a language model's head tied to its embedding) is never masked for one of them
alone: that would make the model silently different once the mask is made permanent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.layers import default_filter
from torchshrink.pruning import PruneConfig, make_permanent, prune_, prune_from_zeros_


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 50, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(tokens))))


@pytest.mark.parametrize("attach", [lambda m: prune_(m, PruneConfig(0.8)), prune_from_zeros_])
def test_a_tied_weight_is_refused_by_both_names_and_nothing_changes(attach):
    torch.manual_seed(0)
    model = TiedLM()
    tokens = torch.randint(0, 50, (4, 7))
    before = model(tokens)
    with pytest.raises(ConfigError, match=r"head.weight is the same tensor as embed.weight.*filter_fn"):
        attach(model)
    make_permanent(model)
    assert torch.equal(model(tokens), before) and bool((model.embed.weight != 0).all())


def test_leaving_the_tied_layer_out_prunes_the_rest():
    model = TiedLM()
    masks = prune_(model, PruneConfig(0.5), filter_fn=lambda m, name: name != "head" and default_filter(m, name))
    assert set(masks) == {"body"}


def test_one_module_reached_under_two_names_is_not_a_tie():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    masks = prune_(model, PruneConfig(0.5))
    assert set(masks) == {"0"}
    prune_(model, PruneConfig(0.7))  # pruning again: the parametrized original is the layer's own
