"""Weight sharing (Deep Compression, Han et al. 2016): each layer's non-zero weights are replaced by the
nearest of ``2**bits - 1`` shared values (a k-means codebook); index 0 is reserved for pruned zeros.

The codebook is a parametrization ``weight = table[indices]`` with ``table = [0, centroids...]``: during
fine-tuning, autograd sums the gradients of all weights sharing a centroid into that centroid, which is
the shared-gradient update of the paper. The sum is divided by the cluster's size (a mean), so one learning
rate suits clusters of ten weights and of ten thousand: with the raw sum, fine-tuning at the learning
rate of ordinary QAT diverged (measured: 10% accuracy). The indices stay fixed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.layers import (
    FilterFn,
    check_untied,
    default_filter,
    find_parametrization,
    module_weights,
    prunable_layers,
    tie_groups,
)
from torchshrink.quant.primitives import check_bits, scale_grad

__all__ = ["kmeans_1d", "Codebook", "codebook_quantizer", "codebook_layers", "codebook_quantize_"]


class _TableLookup(torch.autograd.Function):
    """``table[indices]`` whose backward sums each entry's gradients with ``bincount``. The gather's own
    backward (``index_put_`` with accumulate) adds in parallel on the CPU, in an order that changes from run to
    run: the same codebook fine-tuning then ended a few ULPs apart, and a file one byte and 0.04 points apart,
    between two runs with the same seed. ``bincount`` sums serially: the same run gives the same file."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(indices)
        ctx.entries = table.numel()
        return table[indices]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (indices,) = ctx.saved_tensors
        summed = torch.bincount(indices.flatten(), weights=grad.flatten(), minlength=ctx.entries)
        return summed.to(grad.dtype), None


@torch.no_grad()
def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster a 1-D tensor into ``k`` centroids, initialised linearly between min and max (the paper's best
    initialisation: it keeps the rare large weights). Returns ``(centroids (k,), assignment (n,))``.

    >>> c, a = kmeans_1d(torch.tensor([0.0, 0.1, 5.0, 5.2]), 2)
    >>> c.tolist(), a.tolist()
    ([0.05000000074505806, 5.099999904632568], [0, 0, 1, 1])
    """
    v = values.detach().float().reshape(-1)
    centroids = torch.linspace(float(v.min()), float(v.max()), k)
    for _ in range(iterations):
        assignment = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)  # nearest, centroids sorted
        sums = torch.zeros(k).index_add_(0, assignment, v)
        counts = torch.zeros(k).index_add_(0, assignment, torch.ones_like(v))
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        updated, _ = torch.sort(updated)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    assignment = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, assignment


class Codebook(nn.Module):
    """Parametrization ``weight = [0, centroids...][indices]``: trainable centroids, fixed indices."""

    def __init__(self, weight: torch.Tensor, bits: int):
        super().__init__()
        self.bits = check_bits(bits)
        nonzero = weight != 0
        k = 2**bits - 1
        values = weight[nonzero]
        if values.numel() == 0:
            centroids, assignment = torch.zeros(k), torch.zeros(0, dtype=torch.long)
        else:
            centroids, assignment = kmeans_1d(values, min(k, values.numel()))
            centroids = torch.cat([centroids, centroids.new_zeros(k - centroids.numel())])
        indices = torch.zeros(weight.shape, dtype=torch.long)
        indices[nonzero] = assignment + 1
        self.centroids = nn.Parameter(centroids.to(weight.dtype))
        self.register_buffer("indices", indices)
        counts = torch.zeros(k + 1).index_add_(0, indices.flatten(), torch.ones(indices.numel()))[1:]
        self.register_buffer("inverse_counts", 1.0 / counts.clamp_min(1))

    @classmethod
    def from_table(cls, centroids: torch.Tensor, indices: torch.Tensor) -> Codebook:
        """A codebook with these centroids ``(2**bits - 1,)`` and indices (0 = the pruned zero, ``k`` = centroid
        ``k - 1``, the weight's shape), e.g. read back from a file: no clustering."""
        n = int(centroids.numel())
        if centroids.ndim != 1 or not 1 <= n <= 255:
            raise ConfigError(f"a codebook of shape {tuple(centroids.shape)}: expected 1 to 255 centroids")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) > n):
            raise ConfigError(f"codebook indices outside [0, {n}]")
        bits = max(2, n.bit_length())  # indices 0..n
        centroids = torch.cat([centroids.detach().float(), centroids.new_zeros(2**bits - 1 - n)])  # unused: zeros
        cb = cls(torch.zeros(1), bits)  # the shell; its fields are replaced below
        cb.centroids = nn.Parameter(centroids.clone())
        cb.indices = indices.to(torch.long).clone()
        counts = torch.zeros(2**bits).index_add_(0, cb.indices.flatten(), torch.ones(cb.indices.numel()))
        cb.inverse_counts = 1.0 / counts[1:].clamp_min(1)
        return cb

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # same values, gradient scaled by 1 / cluster size: the mean of the shared weights' gradients
        c = self.centroids
        c = scale_grad(c, self.inverse_counts)
        table = torch.cat([c.new_zeros(1), c])
        return _TableLookup.apply(table, self.indices)

    def export(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The centroids ``(2**bits - 1,)`` and the indices (0 = pruned zero, ``k`` = centroid ``k - 1``)."""
        return self.centroids.detach().clone(), self.indices.clone() - 1


def codebook_quantizer(module: nn.Module, attr: str = "weight") -> Codebook | None:
    """The codebook parametrization of ``module.<attr>``, or ``None``."""
    return find_parametrization(module, Codebook, attr)


def codebook_layers(model: nn.Module) -> dict[str, Codebook]:
    """Weight name -> codebook, for every weight-shared weight."""
    return {n: cb for n, w in module_weights(model).items() if (cb := codebook_quantizer(w.module, w.attr)) is not None}


def _check_centroids(name: str, cb: Codebook, weight: torch.Tensor) -> None:
    """Refuse centroids that are not finite: k-means sums weights, and huge but finite ones overflow float32 to
    inf, which a file cannot hold (its codebook values must be finite)."""
    if not bool(torch.isfinite(cb.centroids).all()):
        largest = float(weight.detach().abs().max())
        raise ConfigError(f"{name}: its codebook's centroids are not finite: k-means over weights as large as "
                          f"{largest:.3g} overflows float32 (weights far too large?)")  # fmt: skip


@torch.no_grad()
def codebook_quantize_(
    model: nn.Module, bits: int | dict[str, int], filter_fn: FilterFn = default_filter, only: str | None = None
) -> nn.Module:
    """Replace every accepted weight by a ``bits``-bit shared-weight codebook, in place.

    ``bits`` may be a dict of per-layer widths (mixed precision); it must then name every accepted weight.
    ``only``: that one weight (by name, e.g. ``"lstm.weight_hh_l0"``), not the other weights of its layer.
    Call on a model with permanent pruning (plain zeros) and BatchNorm folded. Tied weights share one codebook.
    """
    layers = prunable_layers(model, filter_fn)
    if only is not None:
        if only not in layers:
            raise ConfigError(f"no weight named {only!r}; weights: {', '.join(layers)}")
        layers = {only: layers[only]}
    if isinstance(bits, dict):
        missing, unknown = sorted(set(layers) - set(bits)), sorted(set(bits) - set(layers))
        if missing or unknown:
            raise ConfigError(f"per-layer bits: missing {missing}, unknown {unknown}; layers: {', '.join(layers)}")
    check_untied(model, layers, "codebook_quantize_")
    for group in tie_groups(layers):
        widths = {bits[n] if isinstance(bits, dict) else bits for n in group}
        if len(widths) > 1:
            raise ConfigError(f"{' and '.join(group)} are one tied tensor but get different widths {sorted(widths)}")
        first = layers[group[0]]
        cb = Codebook(first.tensor.detach(), widths.pop())
        _check_centroids(" and ".join(group), cb, first.tensor)
        for n in group:
            parametrize.register_parametrization(layers[n].module, layers[n].attr, cb, unsafe=True)
    return model
