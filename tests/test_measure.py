from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.measure import count_macs, latency
from torchshrink.models import ShrinkCNN


def test_conv1d_macs_by_hand():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, 5))
    # conv: 4 channels * 8 positions, each from 2 * 3 inputs; linear: 5 outputs, each from 32 inputs
    assert count_macs(model, example_input=torch.randn(1, 2, 10)) == 4 * 8 * 2 * 3 + 5 * 32
    assert count_macs(model, (3, 2, 10)) == 4 * 8 * 2 * 3 + 5 * 32  # per item of the batch


def test_depthwise_separable_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 8, 1))
    # depthwise: 4 * 36 outputs, each from 1 * 9 inputs; pointwise: 8 * 36 outputs, each from 4 inputs
    assert count_macs(model, (1, 4, 6, 6)) == 4 * 36 * 9 + 8 * 36 * 4


def test_linear_on_a_sequence_macs_by_hand():
    model = nn.Sequential(nn.Linear(6, 7), nn.GELU(), nn.Linear(7, 2))
    # (2, 5, 6) -> (2, 5, 7) -> (2, 5, 2): 5 positions per item
    assert count_macs(model, example_input=torch.randn(2, 5, 6)) == 5 * 7 * 6 + 5 * 2 * 7


def test_conv_transpose_macs_by_hand():
    model = nn.ConvTranspose2d(3, 2, 2, stride=2, groups=1)
    # each of the 3 * 16 input elements is spread over 2 channels * 2 * 2 kernel positions
    assert count_macs(model, (1, 3, 4, 4)) == 3 * 16 * 2 * 4


def test_default_shape_is_one_fashion_mnist_image():
    model = ShrinkCNN(channels=(4, 8, 16), hidden=32).train()
    assert count_macs(model) == count_macs(model, (1, 1, 28, 28)) == count_macs(model, (5, 1, 28, 28))
    assert model.training  # restored
    first = 4 * 28 * 28 * 9  # conv1: 4 channels of 28x28, each from 1 * 3 * 3 inputs
    assert count_macs(model) > first


def test_macs_follow_the_model_dtype():
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).double()
    assert count_macs(model, (1, 3, 5, 5)) == 4 * 9 * 27


@pytest.mark.parametrize(
    ("model", "kwargs"),
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
         {"sample_shape": (3, 32, 32)}),
        (nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 14, 2)),
         {"example_input": torch.randn(1, 2, 16)}),
    ],
)  # fmt: skip
def test_latency_on_other_input_shapes(model, kwargs):
    seconds = latency(model, 4, repeats=2, warmup=1, **kwargs)
    assert 0 < seconds < 10


def test_latency_default_call_still_works():
    assert latency(ShrinkCNN(channels=(4, 8, 16), hidden=32), 2, repeats=2, warmup=1) > 0
