from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.measure import count_macs
from torchshrink.models import MLP, ShrinkCNN, parameter_count
from torchshrink.pruning import conv_chain, filter_scores, structured_prune_


def _randomised_cnn(seed: int = 0) -> ShrinkCNN:
    torch.manual_seed(seed)
    model = ShrinkCNN(channels=((8, 8), 16, 32), hidden=24).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, as after training
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("flatten", [False, True])
def test_removing_dead_channels_keeps_the_function(flatten):
    """Channels whose folded filter and BatchNorm output are zero carry nothing: removing them is exact."""
    model = _randomised_cnn()
    if not flatten:  # global average pooling into one linear layer instead of the flattened (C, 3, 3) map
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x = torch.randn(8, 1, 28, 28)
    links = conv_chain(model)
    with torch.no_grad():
        for link in links:
            dead = torch.arange(0, link.conv.out_channels, 2)  # half of the channels
            link.conv.weight[dead] = 0
            link.bn.weight[dead] = 0
            link.bn.bias[dead] = 0
    before = model(x)
    params = parameter_count(model)
    macs = count_macs(model)
    changes = structured_prune_(model, 0.5)
    after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert all(a == b // 2 for b, a in changes.values())
    assert parameter_count(model) < (0.6 if flatten else 0.35) * params  # conv weights shrink both ways
    assert count_macs(model) < 0.35 * macs


def test_scores_rank_by_the_folded_filter():
    model = _randomised_cnn()
    link = conv_chain(model)[0]
    with torch.no_grad():
        link.bn.weight[3] = 0  # a zero gamma kills the channel whatever its filter
    assert filter_scores(link)[3] == 0
    structured_prune_(model, 0.25)
    assert model.features.conv1.out_channels == 6
    assert ShrinkCNN(**model.arguments()).state_dict().keys() == model.state_dict().keys()
    assert [v.shape for v in ShrinkCNN(**model.arguments()).state_dict().values()] == [
        v.shape for v in model.state_dict().values()
    ]


def test_rebuilt_model_trains_and_saves():
    model = _randomised_cnn().train()
    structured_prune_(model, 0.5)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_models_without_a_chain_are_rejected():
    with pytest.raises(ConfigError, match="no Conv2d"):
        structured_prune_(MLP(), 0.5)
    with pytest.raises(ConfigError, match="must be in"):
        structured_prune_(_randomised_cnn(), 1.0)
