"""Pure mask functions: ``(scores, amount, previous_mask) -> mask``.

``amount`` is the fraction of the tensor's entries to be zero *in total* (not a fraction of what is left),
so iterative pruning composes: weights already pruned by ``previous_mask`` are pruned first and stay
pruned. Exactly ``round(amount * n)`` entries are pruned; ties in the scores are broken by position, so
the achieved sparsity is exact whatever the values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from torchshrink.errors import ConfigError

__all__ = [
    "MaskFn",
    "MASKS",
    "check_amount",
    "layer_magnitude_mask",
    "global_magnitude_masks",
    "lamp_scores",
    "lamp_masks",
    "n_pruned",
]


def check_amount(amount: float) -> float:
    """Return ``amount`` if it is a valid sparsity in [0, 1), else raise :class:`ConfigError`."""
    if not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"sparsity {amount}: must be in [0, 1), e.g. 0.9 for 90% zeros")
    return float(amount)


def n_pruned(amount: float, numel: int) -> int:
    """How many of ``numel`` entries a sparsity of ``amount`` zeroes (round half to even, like torch)."""
    return round(check_amount(amount) * numel)


def _lowest(flat_scores: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask over a 1-D tensor marking exactly its ``k`` lowest entries (stable: earlier wins ties)."""
    drop = torch.zeros_like(flat_scores, dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat_scores, stable=True).indices
        drop[order[:k]] = True
    return drop


def _scores_with_history(scores: torch.Tensor, previous_mask: torch.Tensor | None) -> torch.Tensor:
    s = scores.detach().abs().float().flatten()
    if previous_mask is not None:
        if previous_mask.shape != scores.shape:
            raise ValueError(f"previous_mask shape {tuple(previous_mask.shape)} != scores shape {tuple(scores.shape)}")
        # pruned entries sort first whatever their value, so they are never revived
        s = torch.where(previous_mask.flatten().bool(), s, torch.full_like(s, -1.0))
    return s


def _one_threshold(flats: list[torch.Tensor], shapes: list[torch.Size], amount: float) -> list[torch.Tensor]:
    """Prune exactly ``amount`` of all entries by their flattened scores together; one mask per tensor."""
    drop = _lowest(torch.cat(flats), n_pruned(amount, sum(f.numel() for f in flats)))
    out, start = [], 0
    for shape, flat in zip(shapes, flats, strict=True):
        out.append((~drop[start : start + flat.numel()]).reshape(shape).to(torch.float32))
        start += flat.numel()
    return out


def layer_magnitude_mask(
    scores: torch.Tensor, amount: float, previous_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the largest-magnitude entries of one tensor (L1 unstructured pruning).

    Returns a float mask of the tensor's shape, 1 = kept. Example::

        >>> layer_magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
        tensor([0., 1., 1., 0.])
    """
    k = n_pruned(amount, scores.numel())
    drop = _lowest(_scores_with_history(scores, previous_mask), k)
    return (~drop).reshape(scores.shape).to(torch.float32)


def global_magnitude_masks(
    scores: Sequence[torch.Tensor], amount: float, previous_masks: Sequence[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """One magnitude threshold over all tensors together (global unstructured pruning).

    Layers with small weights lose more; the total sparsity over all entries is exactly ``amount``.
    """
    previous_masks = previous_masks or [None] * len(scores)
    flats = [_scores_with_history(s, m) for s, m in zip(scores, previous_masks, strict=True)]
    return _one_threshold(flats, [s.shape for s in scores], amount)


def lamp_scores(scores: torch.Tensor, previous_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-adaptive magnitude scores (LAMP, Lee et al. 2021), flattened: ``w_u^2 / sum(w_v^2, |w_v| >= |w_u|)``.

    A weight's squared magnitude over the sum of those not smaller in its layer: comparable across layers
    whatever their scale (a conv followed by BatchNorm has no meaningful absolute scale), and the largest
    weight of every layer scores 1, so no layer is ever emptied. Previously pruned entries score -1.
    """
    s = scores.detach().float().flatten() ** 2
    if previous_mask is not None:
        s = s * previous_mask.flatten().float()
    order = torch.sort(s, stable=True).indices
    ordered = s[order]
    suffix = torch.flip(torch.cumsum(torch.flip(ordered, [0]), 0), [0])
    out = torch.empty_like(s)
    out[order] = ordered / suffix.clamp_min(torch.finfo(torch.float32).tiny)
    if previous_mask is not None:
        out = torch.where(previous_mask.flatten().bool(), out, torch.full_like(out, -1.0))
    return out


def lamp_masks(
    scores: Sequence[torch.Tensor], amount: float, previous_masks: Sequence[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """One threshold over the LAMP scores of all tensors: the layer sparsities follow from the weights'
    distribution within each layer rather than from the layers' scales. Total sparsity exactly ``amount``."""
    previous_masks = previous_masks or [None] * len(scores)
    flats = [lamp_scores(s, m) for s, m in zip(scores, previous_masks, strict=True)]
    return _one_threshold(flats, [s.shape for s in scores], amount)


MaskFn = Callable[..., object]
# scope name -> mask function; "layer" takes one tensor, "global" and "lamp" a list of tensors
MASKS: dict[str, MaskFn] = {"layer": layer_magnitude_mask, "global": global_magnitude_masks, "lamp": lamp_masks}
