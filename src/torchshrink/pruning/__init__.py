"""Magnitude pruning: pure mask functions, schedules, masks that stick, structured channel removal.

Procedures that retrain while pruning live in :mod:`torchshrink.recipes`."""

from torchshrink.pruning.apply import (
    FilterFn,
    LayerSparsity,
    default_filter,
    get_mask,
    make_permanent,
    permanent_copy,
    prunable_layers,
    prune_,
    prune_from_zeros_,
    sparsity_report,
)
from torchshrink.pruning.config import PruneConfig, StructuredConfig
from torchshrink.pruning.masks import (
    MASKS,
    global_magnitude_masks,
    lamp_masks,
    lamp_scores,
    layer_magnitude_mask,
    layer_magnitude_masks,
    min_density_masks,
)
from torchshrink.pruning.schedules import SCHEDULES, agp_schedule, linear_schedule, make_schedule
from torchshrink.pruning.structured import (
    ChannelGroup,
    filter_scores,
    group_scores,
    kept_channels,
    structured_prune_,
    structured_report,
)

__all__ = [
    # pure mask functions and schedules
    "MASKS",
    "layer_magnitude_mask",
    "layer_magnitude_masks",
    "min_density_masks",
    "global_magnitude_masks",
    "lamp_scores",
    "lamp_masks",
    "SCHEDULES",
    "linear_schedule",
    "agp_schedule",
    "make_schedule",
    # configs of the transforms
    "PruneConfig",
    "StructuredConfig",
    # attaching masks
    "FilterFn",
    "default_filter",
    "prunable_layers",
    "prune_",
    "prune_from_zeros_",
    "get_mask",
    "make_permanent",
    "permanent_copy",
    "LayerSparsity",
    "sparsity_report",
    # structured
    "ChannelGroup",
    "structured_report",
    "group_scores",
    "filter_scores",
    "kept_channels",
    "structured_prune_",
]

