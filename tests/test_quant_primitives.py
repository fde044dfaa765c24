from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchshrink.errors import ConfigError
from torchshrink.quant import (
    FakeQuant,
    QuantSpec,
    dequantize,
    fake_quantize,
    minmax_qparams,
    mse_scale_search,
    qrange,
    quantize,
)

BITS = list(range(2, 9))


@settings(max_examples=100, deadline=None)
@given(
    bits=st.integers(2, 8),
    signed=st.booleans(),
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=64),
    scale=st.floats(1e-3, 10),
)
def test_roundtrip_error_is_at_most_half_a_step_inside_the_range(bits, signed, values, scale):
    """Inside the clipping range, dequantize(quantize(x)) is within scale/2 of x; codes stay in [qmin, qmax]."""
    x = torch.tensor(values)
    qmin, qmax = qrange(bits, signed)
    s, z = torch.tensor(scale), torch.tensor(0.0)
    q = quantize(x, s, z, qmin, qmax)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    inside = (x >= qmin * scale) & (x <= qmax * scale)
    err = (dequantize(q, s, z) - x).abs()[inside]
    assert bool((err <= scale / 2 * (1 + 1e-5) + 1e-6).all())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_codes_inside_range_for_every_width(bits, symmetric):
    torch.manual_seed(bits)
    x = torch.randn(1000) * 5
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    lo, hi = x.min(), x.max()
    scale, zp = minmax_qparams(lo, hi, spec.qmin, spec.qmax, symmetric)
    q = quantize(x * 3, scale, zp, spec.qmin, spec.qmax)  # far outside the calibrated range too
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    assert len(torch.unique(quantize(x, scale, zp, spec.qmin, spec.qmax))) <= 2**bits


def test_matches_torch_fake_quantize_per_tensor_at_8_bits():
    torch.manual_seed(0)
    x = torch.randn(4096) * 3
    for symmetric in (True, False):
        spec = QuantSpec(bits=8, symmetric=symmetric, signed=True)
        scale, zp = minmax_qparams(x.min(), x.max(), spec.qmin, spec.qmax, symmetric)
        ours = fake_quantize(x, scale, zp, spec.qmin, spec.qmax)
        ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), spec.qmin, spec.qmax)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_matches_torch_fake_quantize_per_channel_at_8_bits():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.rand(16, 1, 1, 1)
    fq = FakeQuant(QuantSpec(bits=8, per_channel=True), channels=16)
    fq.calibrate_from(w, "minmax")
    fq.enabled = True
    ref = torch.fake_quantize_per_channel_affine(w, fq.scale, fq.zero_point.int(), 0, -127, 127)
    assert torch.allclose(fq(w), ref, atol=1e-6)


def test_straight_through_gradient_passes_inside_and_stops_when_clipped():
    x = torch.tensor([-10.0, -0.3, 0.0, 0.7, 1.2, 10.0], requires_grad=True)
    out = fake_quantize(x, torch.tensor(0.5), torch.tensor(0.0), -4, 3)  # range [-2.0, 1.5]
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_scale_receives_the_lsq_gradient():
    x = torch.tensor([0.3, 10.0])
    s = torch.tensor(0.5, requires_grad=True)
    fake_quantize(x, s, torch.tensor(0.0), -4, 3).sum().backward()
    # inside: round(x/s) - x/s = 1 - 0.6 = 0.4 ; clipped at qmax: 3
    assert abs(float(s.grad) - (0.4 + 3)) < 1e-6


def test_mse_search_beats_minmax_at_low_bits_with_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(5000), torch.tensor([40.0])])
    qmin, qmax = qrange(3, True, narrow=True)
    mse = mse_scale_search(x, qmin, qmax)
    minmax = x.abs().max() / qmax
    err = lambda s: float((fake_quantize(x, s, torch.tensor(0.0), qmin, qmax) - x).pow(2).mean())  # noqa: E731
    assert err(mse) < 0.5 * err(minmax)


def test_invalid_widths_are_rejected():
    for bad in (1, 9, 0, 2.5):
        with pytest.raises(ConfigError, match="bits"):
            QuantSpec(bits=bad)


def test_a_step_size_trained_below_zero_is_floored():
    fq = FakeQuant(QuantSpec(bits=4, signed=False))
    fq.enabled = True
    fq.scale.data.fill_(-0.5)  # where a large LSQ step could push it
    out = fq(torch.tensor([0.0, 1.0, 2.0]))
    assert bool(torch.isfinite(out).all()) and float(fq.effective_scale[0]) > 0
