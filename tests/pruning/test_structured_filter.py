"""``structured_prune_(model, config, filter_fn)``: the filter keeps the groups it rejects whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.pruning import StructuredConfig, structured_prune_


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))


def test_the_filter_keeps_the_groups_it_rejects_whole():
    model = _net()
    changes = structured_prune_(model, StructuredConfig(0.5), filter_fn=lambda m, name: name != "2")
    assert changes == {"0": (8, 4)}
    assert model[0].out_channels == 4 and model[2].in_channels == 4 and model[2].out_channels == 8


def test_a_filter_that_rejects_every_group_is_an_error():
    with pytest.raises(ConfigError, match="filter_fn accepts no group"):
        structured_prune_(_net(), StructuredConfig(0.5), filter_fn=lambda m, name: False)


@pytest.mark.parametrize("kwargs", [{"sparsity": 1.0}, {"sparsity": 0.5, "multiple_of": 0},
                                    {"sparsity": 0.5, "min_channels": 0},
                                    {"sparsity": 0.5, "layer_sparsity": {"0": -0.1}}])  # fmt: skip
def test_impossible_settings_are_refused_when_the_config_is_made(kwargs):
    with pytest.raises(ConfigError):
        StructuredConfig(**kwargs)
