"""Magnitude pruning: pure mask functions, schedules, masks that stick, structured channel removal."""

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
from torchshrink.pruning.gradual import GradualPruner, gradual_prune
from torchshrink.pruning.iterative import PruneStep, achieved_sparsity, iterative_prune, oneshot_prune, rewind_
from torchshrink.pruning.masks import MASKS, global_magnitude_masks, lamp_masks, lamp_scores, layer_magnitude_mask
from torchshrink.pruning.schedules import SCHEDULES, agp_schedule, linear_schedule, make_schedule
from torchshrink.pruning.sensitivity import layer_sensitivity, sensitivity_table, sparsities_for_tolerance
from torchshrink.pruning.structured import conv_chain, filter_scores, structured_prune_

__all__ = [
    # pure mask functions and schedules
    "MASKS",
    "layer_magnitude_mask",
    "global_magnitude_masks",
    "lamp_scores",
    "lamp_masks",
    "SCHEDULES",
    "linear_schedule",
    "agp_schedule",
    "make_schedule",
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
    # procedures
    "PruneStep",
    "oneshot_prune",
    "iterative_prune",
    "rewind_",
    "achieved_sparsity",
    "GradualPruner",
    "gradual_prune",
    "layer_sensitivity",
    "sensitivity_table",
    "sparsities_for_tolerance",
    # structured
    "conv_chain",
    "filter_scores",
    "structured_prune_",
]
