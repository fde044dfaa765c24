"""Model-level quantization names the layer whose weight or input range cannot be quantized in float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.quant import FakeQuant, QuantConfig
from torchshrink.recipes import ptq


def _two_linears() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3))


def test_calibration_names_the_layer_whose_input_range_overflows():
    model = _two_linears()
    with torch.no_grad():  # the first layer's outputs are finite but span [-3e38, 3e38]
        model[0].weight.copy_(torch.tensor([[3e38, 0.0], [-3e38, 0.0]]))
        model[0].bias.zero_()
    with pytest.raises(ConfigError, match=r"^1: its input's quantization scale inf is not finite") as caught:
        ptq(model, [torch.ones(4, 2)], QuantConfig(bits=8))
    assert len(str(caught.value).splitlines()) == 1


def test_calibration_leaves_no_quantizer_observing_after_a_refusal():
    from torchshrink.quant import calibrate_, quantize_

    model = quantize_(_two_linears(), QuantConfig(bits=8))
    with pytest.raises(ConfigError, match=r"^0: its input's observed range \[-inf, inf\]"):
        calibrate_(model, [torch.tensor([[float("-inf"), float("inf")]])], "minmax")
    assert not any(m.observing for m in model.modules() if isinstance(m, FakeQuant))


def test_quantize_names_the_layer_whose_weight_overflows():
    model = _two_linears()
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(ConfigError, match=r"^1: quantization scale inf is not finite"):
        ptq(model, None, QuantConfig(bits=4, quantize_inputs=False))
