"""Fake-quant modules: a frozen spec, an ``enabled`` flag, a (learnable) scale, and an observer for
calibration. The same module quantizes a weight (as a parametrization) or a layer's input (from a hook).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.quant.primitives import check_bits, fake_quantize, minmax_qparams, mse_scale_search, qrange

__all__ = ["QuantSpec", "FakeQuant", "CALIBRATIONS"]

CALIBRATIONS = ("minmax", "percentile", "mse")
MIN_SCALE = 1e-8


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    bits: code width, 2..8.
    signed: codes in ``[-2^(b-1), 2^(b-1) - 1]`` (narrowed to symmetric for symmetric specs) or ``[0, 2^b - 1]``.
    symmetric: zero point fixed at 0 (so an exact zero weight stays an exact zero code).
    per_channel: one scale per output channel (axis 0) instead of one per tensor.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, narrow=self.symmetric and self.signed)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, narrow=self.symmetric and self.signed)[1]

    @property
    def axis(self) -> int | None:
        return 0 if self.per_channel else None


class FakeQuant(nn.Module):
    """Quantize -> dequantize its input with a straight-through gradient and an LSQ-trainable scale.

    Modes: ``observing`` (records statistics, returns the input unchanged), ``enabled`` (quantizes), or
    neither (identity). ``scale`` is a parameter: frozen for post-training quantization, trained in QAT.
    """

    def __init__(self, spec: QuantSpec, channels: int = 1, max_samples: int = 200_000):
        super().__init__()
        self.spec = spec
        self.enabled = False
        self.observing = False
        self.max_samples = max_samples
        n = channels if spec.per_channel else 1
        self.scale = nn.Parameter(torch.ones(n), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(n))
        self.register_buffer("observed_min", torch.tensor(float("inf")))
        self.register_buffer("observed_max", torch.tensor(float("-inf")))
        self._samples: list[torch.Tensor] = []

    def extra_repr(self) -> str:
        s = self.spec
        return f"bits={s.bits}, signed={s.signed}, symmetric={s.symmetric}, per_channel={s.per_channel}, enabled={self.enabled}"

    @property
    def effective_scale(self) -> torch.Tensor:
        """The scale in use: trained step sizes can cross zero, so they are floored at a tiny positive value."""
        return self.scale.clamp_min(MIN_SCALE)

    def _scale_zp(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zp = self.effective_scale, self.zero_point
        if not self.spec.per_channel:
            scale, zp = scale[0], zp[0]
        return scale, zp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x)
            return x
        if not self.enabled:
            return x
        scale, zp = self._scale_zp()
        if scale.requires_grad:
            # LSQ gradient scaling (Esser et al. 2020): keeps the step size's updates in proportion
            per_scale = x.numel() / scale.numel()
            g = 1.0 / math.sqrt(per_scale * max(self.spec.qmax, 1))
            scale = scale * g + (scale - scale * g).detach()
        return fake_quantize(x, scale, zp, self.spec.qmin, self.spec.qmax, self.spec.axis)

    # --- calibration -----------------------------------------------------------------------------------

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        self.observed_min.copy_(torch.minimum(self.observed_min, x.min()))
        self.observed_max.copy_(torch.maximum(self.observed_max, x.max()))
        flat = x.detach().flatten()
        held = sum(t.numel() for t in self._samples)
        if held < self.max_samples:
            # a strided subsample keeps memory bounded while following the distribution
            step = max(1, flat.numel() // max(1, (self.max_samples - held)))
            self._samples.append(flat[::step].float().cpu())

    @torch.no_grad()
    def calibrate_from(self, x: torch.Tensor, method: str = "minmax") -> None:
        """Set the scale (and zero point) from a tensor, e.g. a weight: ``minmax`` or ``mse``."""
        if method not in ("minmax", "mse"):
            raise ConfigError(f"weight calibration {method!r}: choose 'minmax' or 'mse'")
        spec = self.spec
        if method == "mse" and spec.symmetric:
            scale = mse_scale_search(x, spec.qmin, spec.qmax, spec.axis)
            zp = torch.zeros_like(scale)
        else:
            if spec.per_channel:
                flat = x.detach().flatten(1)  # (C, ...) -> (C, rest)
                lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
            else:
                lo, hi = x.detach().min(), x.detach().max()
            scale, zp = minmax_qparams(lo, hi, spec.qmin, spec.qmax, spec.symmetric)
        self.scale.data.copy_(scale.reshape(-1).expand_as(self.scale))
        self.zero_point.copy_(zp.reshape(-1).expand_as(self.zero_point))

    @torch.no_grad()
    def finish_observing(self, method: str = "minmax", percentile: float = 99.99) -> None:
        """Turn the observed statistics into a per-tensor scale and stop observing.

        An input that never went negative (after a ReLU) gets an unsigned range, doubling its resolution.
        """
        if method not in CALIBRATIONS:
            raise ConfigError(f"calibration {method!r}: choose one of {', '.join(CALIBRATIONS)}")
        if not self._samples:
            raise ConfigError("calibration saw no data: run the model on calibration images while observing")
        samples = torch.cat(self._samples)
        if float(self.observed_min) >= 0:
            # zero point 0 at the bottom of an unsigned range: all codes cover [0, max]
            self.spec = dataclasses.replace(self.spec, signed=False, symmetric=True)
        if method == "minmax":
            lo, hi = self.observed_min.clone(), self.observed_max.clone()
            self.calibrate_from(torch.stack([lo, hi]), "minmax")
        elif method == "percentile":
            q = percentile / 100
            lo = torch.quantile(samples, 1 - q) if float(self.observed_min) < 0 else samples.new_zeros(())
            hi = torch.quantile(samples, q)
            self.calibrate_from(torch.stack([lo, hi]), "minmax")
        else:
            if self.spec.symmetric:
                self.calibrate_from(samples, "mse")
            else:
                self.calibrate_from(samples, "minmax")
        self._samples = []
        self.observing = False
