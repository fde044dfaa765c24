"""Weight sharing refuses a codebook it cannot compute in float32, naming the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.quant import codebook_quantize_


def test_centroids_that_overflow_are_refused_by_layer_name():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():  # finite weights whose sums overflow: the k-means means become inf
        model[1].weight.fill_(3e38)
        model[1].weight[0, 0] = -3e38
    with pytest.raises(ConfigError, match=r"^1: its codebook's centroids are not finite: .* as large as 3e\+38"):
        codebook_quantize_(model, 2)


def test_finite_weights_cluster_as_before():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    codebook_quantize_(model, 2)
    assert torch.isfinite(model[0].weight).all()
