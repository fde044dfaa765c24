"""Pure quantization primitives: integer ranges, uniform affine quantize / dequantize, the straight-through
round, and scale choice (min-max, percentile, MSE search).

Notation: ``x ~= (q - zero_point) * scale`` with integer codes ``q`` in ``[qmin, qmax]``.
Per-channel tensors use ``axis`` 0 (output channels of a weight); scales then have shape ``(C,)``.
"""

from __future__ import annotations

from typing import Any

import torch

from torchshrink.errors import ConfigError

__all__ = [
    "check_bits",
    "qrange",
    "round_ste",
    "scale_grad",
    "quantize",
    "dequantize",
    "fake_quantize",
    "broadcast_to_axis",
    "reduce_absmax",
    "reduce_min_max",
    "symmetric_reach",
    "minmax_qparams",
    "mse_scale_search",
]


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is an integer width in 2..8, else raise :class:`ConfigError`."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ConfigError(f"bits={bits!r}: must be an integer from 2 to 8")
    return bits


def qrange(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code.

    ``narrow`` drops the most negative signed value so the range is symmetric around zero
    (2-bit narrow signed is ternary: -1, 0, 1; the full range is -2, -1, 0, 1). Unsigned ranges ignore it.

    >>> qrange(8, True), qrange(8, False), qrange(2, True, narrow=True)
    ((-128, 127), (0, 255), (-1, 1))
    """
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class _RoundSTE(torch.autograd.Function):
    """Round in the forward pass; pass the gradient straight through in the backward pass."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` with a straight-through (identity) gradient.

    >>> round_ste(torch.tensor([0.4, 1.6]))
    tensor([0., 2.])
    """
    return _RoundSTE.apply(x)


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; the gradient times ``factor`` in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """``x`` exactly, with its gradient multiplied by ``factor`` (broadcast to ``x``).

    The usual ``x * g + (x - x * g).detach()`` returns ``x`` only up to rounding (one ulp off): the model in
    memory would then differ from the one stored in a file. This returns the very same values.

    >>> x = torch.tensor([0.1, 0.7], requires_grad=True)
    >>> scale_grad(x, 0.5).sum().backward()
    >>> x.grad
    tensor([0.5000, 0.5000])
    """
    return _ScaleGrad.apply(x, factor)


def broadcast_to_axis(v: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel vector ``(C,)`` so it broadcasts along ``axis`` of ``x``; scalars pass through."""
    if axis is None or v.ndim == 0:
        return v
    shape = [1] * x.ndim
    shape[axis] = -1
    return v.reshape(shape)  # e.g. (C,) -> (C, 1, 1, 1) for a conv weight


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)`` as int32.

    >>> quantize(torch.tensor([-1.0, 0.26, 9.0]), torch.tensor(0.5), torch.tensor(0), -4, 3)
    tensor([-2,  1,  3], dtype=torch.int32)
    """
    s, z = broadcast_to_axis(scale, x, axis), broadcast_to_axis(zero_point, x, axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """``(q - zero_point) * scale`` as float32."""
    s, z = broadcast_to_axis(scale, q, axis), broadcast_to_axis(zero_point, q, axis)
    return (q.to(torch.float32) - z) * s


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Quantize then dequantize, differentiably: the gradient w.r.t. ``x`` passes where ``x`` is inside the
    clipping range and is zero where it is clipped; ``scale`` receives the LSQ gradient.
    """
    s, z = broadcast_to_axis(scale, x, axis), broadcast_to_axis(zero_point, x, axis)
    # zero_point is an integer held in a float tensor: it needs no rounding and gets no gradient
    q = torch.clamp(round_ste(x / s) + z.detach(), qmin, qmax)
    return (q - z.detach()) * s


def reduce_absmax(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Max of ``|x|`` over everything (``axis=None``) or over all dims but ``axis``."""
    if axis is None:
        return x.detach().abs().max()
    return x.detach().abs().transpose(0, axis).flatten(1).max(dim=1).values


def reduce_min_max(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` over everything (``axis=None``) or over all dims but ``axis``."""
    x = x.detach()
    if axis is None:
        return x.min(), x.max()
    flat = x.transpose(0, axis).flatten(1)
    return flat.min(dim=1).values, flat.max(dim=1).values


def symmetric_reach(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The magnitude a symmetric (zero point 0) scale maps to ``qmax`` so that neither ``lo <= 0`` nor
    ``hi >= 0`` is clipped: ``scale = reach / qmax``.

    A mirrored range (narrow signed, ``qmin == -qmax``) or an unsigned one gives ``max(-lo, hi)``, the
    absmax. A full signed range ``[-2^(b-1), 2^(b-1) - 1]`` has one more negative code: ``lo`` needs only the
    scale ``lo / qmin``, so the reach is ``max(-lo * qmax / -qmin, hi)``. (Mapping the absmax to ``qmin``
    whatever its sign would clip a larger positive side; mapping it to ``qmax`` would leave the extra code
    unused.)

    >>> lo, hi = torch.tensor(-1.0), torch.tensor(0.25)
    >>> symmetric_reach(lo, hi, -1, 1), symmetric_reach(lo, hi, -2, 1)
    (tensor(1.), tensor(0.5000))
    """
    if qmin >= 0 or qmin == -qmax:
        return torch.maximum(-lo, hi)
    return torch.maximum(-lo * (qmax / -qmin), hi)


def minmax_qparams(
    lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering ``[lo, hi]`` (widened to contain 0, so zero is exact).

    Symmetric: zero point 0 and the smallest scale that clips neither side (see :func:`symmetric_reach`):
    ``max(|lo|, |hi|) / qmax`` for a mirrored range (narrow signed; for unsigned ranges, ``hi / qmax``), and
    ``max(lo / qmin, hi / qmax)`` for a full signed range, whose extra negative code then covers ``lo``.
    Asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and the zero point that maps 0 to an integer.
    """
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        scale = symmetric_reach(lo, hi, qmin, qmax) / qmax
        return scale.clamp_min(eps), torch.zeros_like(scale)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(eps)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point


def mse_scale_search(
    x: torch.Tensor, qmin: int, qmax: int, axis: int | None = None, grid: int = 100, low: float = 0.01
) -> torch.Tensor:
    """Symmetric scale minimising the squared quantization error of ``x`` in codes ``[qmin, qmax]`` (per
    tensor or per channel).

    Tries clipping thresholds ``t * absmax`` for ``t`` on a geometric grid in ``[low, 1]``; small widths gain
    most from clipping outliers. A full signed range (``qmin == -qmax - 1``) also tries ``t * reach``, with the
    ``reach`` of :func:`symmetric_reach`: its ``t = 1`` is the min-max scale, which clips nothing and puts the
    extra negative code to use when the negative side is the larger. Since every scale the narrow range tries
    is tried too, and at any one scale the extra code can only bring a value nearer, the full range's error is
    never above the narrow range's.
    """
    x = x.detach()
    absmax = reduce_absmax(x, axis).clamp_min(1e-8)
    tops = [absmax]
    if qmin < 0 and qmin != -qmax:
        lo, hi = reduce_min_max(x, axis)
        tops.append(symmetric_reach(lo.clamp_max(0), hi.clamp_min(0), qmin, qmax).clamp_min(1e-8))
    best_err = torch.full_like(absmax, float("inf"))
    best = absmax / qmax
    zero = torch.zeros_like(absmax)
    for top in tops:
        for t in torch.logspace(torch.log10(torch.tensor(low)), 0.0, grid):
            scale = top * t / qmax
            err = (fake_quantize(x, scale, zero, qmin, qmax, axis) - x).pow(2)
            err = err.sum() if axis is None else err.transpose(0, axis).flatten(1).sum(dim=1)
            better = err < best_err
            best = torch.where(better, scale, best)
            best_err = torch.where(better, err, best_err)
    return best
