"""Fake-quant modules: a frozen spec, an ``enabled`` flag, a (learnable) scale, and an observer for
calibration. The same module quantizes a weight (as a parametrization) or a layer's input (from a hook).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from torchshrink import distributed as dist
from torchshrink.errors import ConfigError
from torchshrink.quant.primitives import check_bits, fake_quantize, minmax_qparams, mse_scale_search, qrange, scale_grad

__all__ = ["QuantSpec", "FakeQuant", "CALIBRATIONS"]

CALIBRATIONS = ("minmax", "percentile", "mse")
MIN_SCALE = 1e-8
# seeds the calibration sample's keys; not 0, whose random stream test and toy data often come from
# (keys equal to the data they select would bias the sample)
SAMPLE_SEED = 0x5EED_CA1B


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    bits: code width, 2..8.
    signed: codes in ``[-2^(b-1), 2^(b-1) - 1]`` (narrowed to symmetric for symmetric specs, see ``narrow``) or
        ``[0, 2^b - 1]``.
    symmetric: zero point fixed at 0 (so an exact zero weight stays an exact zero code).
    per_channel: one scale per output channel (axis 0) instead of one per tensor.
    narrow: drop the most negative signed code. ``None`` (the default): narrow when symmetric and signed, so
        the codes mirror around zero (ternary at 2 bits). ``False``: the full signed range even when symmetric,
        as in LSQ (Esser et al. 2020): one more level (-2, -1, 0, 1 at 2 bits) and zero still a code.
        Unsigned ranges ignore it.

    >>> QuantSpec(bits=2).qmin, QuantSpec(bits=2, narrow=False).qmin, QuantSpec(bits=2, narrow=False).qmax
    (-1, -2, 1)
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    narrow: bool | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.narrow is not None and not isinstance(self.narrow, bool):
            raise ConfigError(f"narrow={self.narrow!r}: must be True, False or None")

    @property
    def is_narrow(self) -> bool:
        """Whether the most negative signed code is dropped (always False for unsigned codes)."""
        return self.signed and (self.symmetric if self.narrow is None else self.narrow)

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, narrow=self.is_narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, narrow=self.is_narrow)[1]

    @property
    def axis(self) -> int | None:
        return 0 if self.per_channel else None


class FakeQuant(nn.Module):
    """Quantize -> dequantize its input with a straight-through gradient and an LSQ-trainable scale.

    Modes: ``observing`` (records statistics, returns the input unchanged), ``enabled`` (quantizes), or
    neither (identity). ``scale`` is a parameter: frozen for post-training quantization, trained in QAT.

    Args:
        spec: the number format.
        channels: output channels of a per-channel weight (one scale each).
        max_samples: how many observed values calibration keeps (a uniform sample over all batches).
        is_activation: the input is a batch of activations (dim 0 = samples), not a weight: the LSQ gradient
            scale then counts the values of one sample, so it does not depend on the batch size.
    """

    def __init__(self, spec: QuantSpec, channels: int = 1, max_samples: int = 200_000, is_activation: bool = False):
        super().__init__()
        self.spec = spec
        self.enabled = False
        self.observing = False
        self.max_samples = max_samples
        self.is_activation = is_activation
        n = channels if spec.per_channel else 1
        self.scale = nn.Parameter(torch.ones(n), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(n))
        self.register_buffer("observed_min", torch.tensor(float("inf")))
        self.register_buffer("observed_max", torch.tensor(float("-inf")))
        self._reset_samples()

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"bits={s.bits}, signed={s.signed}, symmetric={s.symmetric}, per_channel={s.per_channel}, "
            + (f"narrow={s.narrow}, " if s.narrow is not None else "")
            + f"is_activation={self.is_activation}, enabled={self.enabled}"
        )

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
        if x.dtype in (torch.bfloat16, torch.float16):
            # under autocast the layers before hand over half-precision values: 8 significant bits cannot
            # hold x / scale exactly, so round() would pick other codes than the file's. The codes are taken
            # in fp32; only the next layer's matmul sees them rounded back to its own precision.
            x = x.float()
        scale, zp = self._scale_zp()
        if scale.requires_grad:
            # LSQ gradient scaling (Esser et al. 2020): g = 1 / sqrt(N * Qp) keeps the step size's updates in
            # proportion to the weights'. N counts the values one scale quantizes: the weights per scale, or
            # for activations the features of ONE sample (the batch dimension would make g depend on it)
            per_scale = (x[0].numel() if self.is_activation and x.ndim > 0 else x.numel()) / scale.numel()
            g = 1.0 / math.sqrt(per_scale * max(self.spec.qmax, 1))
            scale = scale_grad(scale, g)
        return fake_quantize(x, scale, zp, self.spec.qmin, self.spec.qmax, self.spec.axis)

    # --- calibration -----------------------------------------------------------------------------------

    def _reset_samples(self) -> None:
        self._samples: list[torch.Tensor] = []  # kept observed values (CPU, float32)
        self._sample_keys = torch.empty(0)  # their random keys: the sample is the max_samples smallest keys
        self._generator: torch.Generator | None = None

    def observed_sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept sample of observed values and their random keys (CPU), e.g. to merge ranks' samples."""
        if not self._samples:
            return torch.empty(0), torch.empty(0)
        return torch.cat(self._samples), self._sample_keys

    def set_observed_sample(self, values: torch.Tensor, keys: torch.Tensor) -> None:
        """Replace the kept sample (values and their keys, same length) by a merged one."""
        if values.shape != keys.shape:
            raise ValueError(f"{values.numel()} values but {keys.numel()} keys")
        self._samples, self._sample_keys = ([values] if values.numel() else []), keys

    @property
    def has_observed(self) -> bool:
        """Whether any value was observed since observing started."""
        return bool(self._samples)

    def cancel_observing(self) -> None:
        """Stop observing and drop what was observed, leaving the scale as it was."""
        self._reset_samples()
        self.observing = False

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        self.observed_min.copy_(torch.minimum(self.observed_min, x.min()))
        self.observed_max.copy_(torch.maximum(self.observed_max, x.max()))
        # A uniform sample without replacement of every value observed in all batches (bottom-k of random
        # keys), so each batch counts in proportion to its size while memory stays bounded; the seeded
        # generator makes calibration deterministic. (A strided subsample would alias with the feature
        # map's layout, e.g. always hit the same pixel of every channel.)
        if self._generator is None or self._generator.device != x.device:
            # one stream per rank (rank 0's is a single process's): ranks' keys must be independent to merge
            self._generator = torch.Generator(device=x.device).manual_seed(SAMPLE_SEED + dist.rank())
        flat = x.detach().flatten()
        keys = torch.rand(flat.numel(), generator=self._generator, device=x.device)
        if self._sample_keys.numel() >= self.max_samples:
            # only keys below the largest one held can enter the sample
            candidates = keys < self._sample_keys.max().to(x.device)
            flat, keys = flat[candidates], keys[candidates]
        if keys.numel() > self.max_samples:
            keys, index = torch.topk(keys, self.max_samples, largest=False)
            flat = flat[index]
        values = torch.cat([*self._samples, flat.float().cpu()])
        keys = torch.cat([self._sample_keys, keys.cpu()])
        if keys.numel() > self.max_samples:
            keys, index = torch.topk(keys, self.max_samples, largest=False)
            values = values[index]
        self._samples, self._sample_keys = [values], keys

    @torch.no_grad()
    def calibrate_from(self, x: torch.Tensor, method: str = "minmax") -> None:
        """Set the scale (and zero point) from a tensor, e.g. a weight: ``minmax`` or ``mse``, both for the
        spec's own codes ``[qmin, qmax]`` (a full signed range included)."""
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
        _check_qparams(scale, zp)
        self.scale.data.copy_(scale.reshape(-1).expand_as(self.scale))
        self.zero_point.copy_(zp.reshape(-1).expand_as(self.zero_point))

    @torch.no_grad()
    def finish_observing(self, method: str = "minmax", percentile: float = 99.99) -> None:
        """Turn the observed statistics into a per-tensor scale and stop observing.

        An input that never went negative (after a ReLU) gets an unsigned range, doubling its resolution.

        Raises:
            ConfigError: nothing was observed, or the observed range or the scale and zero point it gives are
                not finite (the layers before overflow float32).
        """
        if method not in CALIBRATIONS:
            raise ConfigError(f"calibration {method!r}: choose one of {', '.join(CALIBRATIONS)}")
        if not self._samples:
            raise ConfigError("calibration saw no data: run the model on calibration images while observing")
        samples = torch.cat(self._samples)
        _check_observed_range(self.observed_min, self.observed_max)
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
        self._reset_samples()
        self.observing = False


def _check_observed_range(lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Refuse an observed input range holding inf or NaN: its scale would be NaN, and NaN codes reach the file."""
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ConfigError(f"observed range [{float(lo):.3g}, {float(hi):.3g}] is not finite: the layers "
                          "before it overflow float32 (weights far too large?)")  # fmt: skip


def _check_qparams(scale: torch.Tensor, zero_point: torch.Tensor) -> None:
    """Refuse a scale or zero point that is not finite: a finite range can still be too wide for one
    (``hi - lo`` overflows float32), and an infinite scale turns every dequantized value into NaN."""
    for what, values in (("scale", scale), ("zero point", zero_point)):
        bad = values[~torch.isfinite(values)]
        if bad.numel():
            raise ConfigError(f"quantization {what} {float(bad[0]):.3g} is not finite: the range it must cover "
                              "overflows float32 (weights or activations far too large?)")  # fmt: skip
