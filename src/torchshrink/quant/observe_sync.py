"""Calibration across ranks: each rank observes its share of the calibration batches, then the observations
are merged so that every rank sets the ranges one process would set from all the batches.

Minima and maxima reduce exactly (min of minima, max of maxima). Each quantizer keeps a uniform sample of
the values it saw, the ``max_samples`` values with the smallest random keys; the union of the ranks'
samples cut back to the smallest keys is again such a sample of all values (bottom-k sampling merges), and
while everything fits in ``max_samples`` it is all the values: the percentile and MSE searches then run on
exactly the values one process would hold.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from torchshrink import distributed as dist
from torchshrink.quant.fake_quant import FakeQuant

__all__ = ["merge_observations_"]


@torch.no_grad()
def merge_observations_(quantizers: Mapping[str, FakeQuant]) -> None:
    """Merge every observing quantizer's statistics over the ranks, in place (a no-op in one process).

    Collective: every rank calls it with the same quantizers in the same order.
    """
    if not dist.is_distributed():
        return
    for fq in quantizers.values():
        dist.all_reduce_(fq.observed_min, "min")
        dist.all_reduce_(fq.observed_max, "max")
        values, keys = fq.observed_sample()
        values = torch.cat(dist.all_gather_varlen(values.float()))
        keys = torch.cat(dist.all_gather_varlen(keys.float()))
        if keys.numel() > fq.max_samples:
            keys, index = torch.topk(keys, fq.max_samples, largest=False)
            values = values[index]
        fq.set_observed_sample(values, keys)
