"""A fake quantizer's calibration refuses ranges, scales and zero points that are not finite: NaN must never
reach the integer codes of a file."""

from __future__ import annotations

import pytest
import torch

from torchshrink.errors import ConfigError
from torchshrink.quant import FakeQuant, QuantSpec


def _observed(*values: float) -> FakeQuant:
    fq = FakeQuant(QuantSpec(bits=4, signed=True, symmetric=False), is_activation=True)
    fq.observing = True
    fq(torch.tensor([values]))
    return fq


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_an_observed_range_holding_inf_or_nan_is_refused(method):
    for bad in (float("inf"), float("nan")):
        fq = _observed(-1.0, bad, 2.0)
        with pytest.raises(ConfigError, match=r"^observed range .* is not finite"):
            fq.finish_observing(method)
        assert fq.spec.signed and fq.observing  # refused before anything changed


def test_a_finite_range_too_wide_for_a_scale_is_refused():
    fq = _observed(-3e38, 3e38)  # hi - lo overflows float32: the scale would be inf, every value NaN
    with pytest.raises(ConfigError, match=r"^quantization scale inf is not finite"):
        fq.finish_observing("minmax")


def test_a_weight_holding_inf_gets_no_scale():
    fq = FakeQuant(QuantSpec(bits=4, per_channel=True), channels=2)
    weight = torch.tensor([[1.0, -2.0], [float("inf"), 0.5]])
    for method in ("minmax", "mse"):
        with pytest.raises(ConfigError, match=r"^quantization scale inf is not finite"):
            fq.calibrate_from(weight, method)


def test_finite_ranges_calibrate_as_before():
    fq = _observed(-1.0, 0.5, 2.0)
    fq.finish_observing("minmax")
    assert torch.allclose(fq.scale, torch.tensor([3.0 / 15])) and fq.zero_point.item() == -3.0
