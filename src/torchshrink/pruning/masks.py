"""Pure mask functions: ``(scores, amount, previous_masks) -> masks``, one table of them by scope name.

``amount`` is the fraction of entries to be zero *in total* (not a fraction of what is left), so iterative
pruning composes. Entries pruned by a previous mask are ranked lowest and stay pruned: the new mask is the
new ranking AND the previous mask. Exactly ``round(amount * n)`` entries are pruned (ties in the scores are
broken by position, so the achieved sparsity is exact whatever the values), except when the previous masks
already pruned more: nothing is revived, so the sparsity then stays above ``amount``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from torchshrink.errors import ConfigError

__all__ = [
    "MaskFn",
    "MASKS",
    "check_amount",
    "check_density",
    "layer_magnitude_mask",
    "layer_magnitude_masks",
    "global_magnitude_masks",
    "lamp_scores",
    "lamp_masks",
    "min_density_masks",
    "n_pruned",
]

# (scores, amount, previous masks or None per tensor) -> one float mask per tensor, 1 = kept
MaskFn = Callable[[Sequence[torch.Tensor], float, Sequence[torch.Tensor | None]], list[torch.Tensor]]


def check_amount(amount: float) -> float:
    """Return ``amount`` if it is a valid sparsity in [0, 1), else raise :class:`ConfigError`."""
    if not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"sparsity {amount}: must be in [0, 1), e.g. 0.9 for 90% zeros")
    return float(amount)


def check_density(density: float) -> float:
    """Return ``density`` if it is a valid kept fraction in [0, 1], else raise :class:`ConfigError`."""
    if not 0.0 <= float(density) <= 1.0:
        raise ConfigError(f"min_density {density}: must be in [0, 1], e.g. 0.05 to keep 5% of every layer")
    return float(density)


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


def _previous(previous_mask: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor | None:
    """The previous mask flattened to bool on the scores' device, checked against their shape."""
    if previous_mask is None:
        return None
    if previous_mask.shape != scores.shape:
        raise ConfigError(f"previous mask of shape {tuple(previous_mask.shape)} for scores of shape "
                          f"{tuple(scores.shape)}: pass the mask of this same tensor (the one that the last pruning "
                          "step made for it), or None")  # fmt: skip
    return previous_mask.detach().flatten().to(scores.device).bool()


def _scores_with_history(scores: torch.Tensor, previous_mask: torch.Tensor | None) -> torch.Tensor:
    s = scores.detach().abs().float().flatten()
    kept = _previous(previous_mask, scores)
    if kept is not None:
        # pruned entries sort first whatever their value: they fill the pruning quota before any live weight
        s = torch.where(kept, s, torch.full_like(s, -1.0))
    return s


def _to_mask(drop: torch.Tensor, kept: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    # AND with the previous mask: when fewer entries are to be pruned than are already pruned, the quota
    # would otherwise leave some old zeros out of the drop set and revive them
    keep = ~drop if kept is None else ~drop & kept
    return keep.reshape(shape).to(torch.float32)


def _one_threshold(
    flats: list[torch.Tensor],
    scores: Sequence[torch.Tensor],
    amount: float,
    previous_masks: Sequence[torch.Tensor | None],
) -> list[torch.Tensor]:
    """Prune ``amount`` of all entries by their flattened scores together; one mask per tensor."""
    drop = _lowest(torch.cat(flats), n_pruned(amount, sum(f.numel() for f in flats)))
    out, start = [], 0
    for s, flat, prev in zip(scores, flats, previous_masks, strict=True):
        out.append(_to_mask(drop[start : start + flat.numel()], _previous(prev, s), s.shape))
        start += flat.numel()
    return out


def _none_if_missing(
    scores: Sequence[torch.Tensor], previous_masks: Sequence[torch.Tensor | None] | None
) -> Sequence[torch.Tensor | None]:
    return previous_masks if previous_masks is not None else [None] * len(scores)


def layer_magnitude_mask(
    scores: torch.Tensor, amount: float, previous_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the largest-magnitude entries of one tensor (L1 unstructured pruning).

    Returns a float mask of the tensor's shape, 1 = kept. Example::

        >>> layer_magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
        tensor([0., 1., 1., 0.])
        >>> layer_magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.25, torch.tensor([1.0, 1.0, 0.0, 0.0]))
        tensor([1., 1., 0., 0.])
    """
    drop = _lowest(_scores_with_history(scores, previous_mask), n_pruned(amount, scores.numel()))
    return _to_mask(drop, _previous(previous_mask, scores), scores.shape)


def layer_magnitude_masks(
    scores: Sequence[torch.Tensor], amount: float, previous_masks: Sequence[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """:func:`layer_magnitude_mask` on each tensor alone: every layer reaches ``amount`` (uniform sparsity)."""
    previous_masks = _none_if_missing(scores, previous_masks)
    return [layer_magnitude_mask(s, amount, m) for s, m in zip(scores, previous_masks, strict=True)]


def global_magnitude_masks(
    scores: Sequence[torch.Tensor], amount: float, previous_masks: Sequence[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """One magnitude threshold over all tensors together (global unstructured pruning).

    Layers with small weights lose more, and a layer whose weights are all small can lose everything (see
    :func:`min_density_masks`); the total sparsity over all entries is ``amount``.
    """
    previous_masks = _none_if_missing(scores, previous_masks)
    flats = [_scores_with_history(s, m) for s, m in zip(scores, previous_masks, strict=True)]
    return _one_threshold(flats, scores, amount, previous_masks)


def lamp_scores(scores: torch.Tensor, previous_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-adaptive magnitude scores (LAMP, Lee et al. 2021), flattened: ``w_u^2 / sum(w_v^2, |w_v| >= |w_u|)``.

    A weight's squared magnitude over the sum of those not smaller in its layer: comparable across layers
    whatever their scale (a conv followed by BatchNorm has no meaningful absolute scale), and the largest
    weight of every layer scores 1, so no layer is ever emptied. Previously pruned entries score -1.
    """
    s = scores.detach().float().flatten() ** 2
    kept = _previous(previous_mask, scores)
    if kept is not None:
        s = s * kept.float()
    order = torch.sort(s, stable=True).indices
    ordered = s[order]
    suffix = torch.flip(torch.cumsum(torch.flip(ordered, [0]), 0), [0])
    out = torch.empty_like(s)
    out[order] = ordered / suffix.clamp_min(torch.finfo(torch.float32).tiny)
    if kept is not None:
        out = torch.where(kept, out, torch.full_like(out, -1.0))
    return out


def lamp_masks(
    scores: Sequence[torch.Tensor], amount: float, previous_masks: Sequence[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """One threshold over the LAMP scores of all tensors: the layer sparsities follow from the weights'
    distribution within each layer rather than from the layers' scales. Total sparsity ``amount``."""
    previous_masks = _none_if_missing(scores, previous_masks)
    flats = [lamp_scores(s, m) for s, m in zip(scores, previous_masks, strict=True)]
    return _one_threshold(flats, scores, amount, previous_masks)


def min_density_masks(
    scores: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    previous_masks: Sequence[torch.Tensor | None],
    min_density: float,
) -> list[torch.Tensor]:
    """Raise every mask that keeps under ``ceil(min_density * n)`` of its ``n`` entries to its top
    ``ceil(min_density * n)`` by magnitude among the entries its previous mask kept (never reviving one).

    The total sparsity then ends a little under what the masks were computed for. Example::

        >>> min_density_masks([torch.tensor([0.1, -0.3, 0.2, 0.05])], [torch.zeros(4)], [None], 0.5)
        [tensor([0., 1., 1., 0.])]
    """
    out = []
    for s, mask, prev in zip(scores, masks, previous_masks, strict=True):
        n = s.numel()
        floor = math.ceil(check_density(min_density) * n - 1e-9)  # 0.07 * 100 is 7.000000000000001
        if int(mask.sum()) >= floor:
            out.append(mask)
            continue
        drop = _lowest(_scores_with_history(s, prev), n - floor)
        top = _to_mask(drop, _previous(prev, s), s.shape)
        out.append(torch.maximum(mask.to(top.device, torch.float32), top))
    return out


# scope name -> mask function, all with the signature MaskFn
MASKS: dict[str, MaskFn] = {
    "layer": layer_magnitude_masks,  # each layer alone: uniform sparsity
    "global": global_magnitude_masks,  # one magnitude threshold over all layers
    "lamp": lamp_masks,  # one threshold over layer-adaptive (scale-free) scores
}
