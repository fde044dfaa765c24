"""Running under ``torchrun``: which rank this is, each rank's share of the data, DDP, and the checks that
keep ranks in step. Everything is a no-op in a single process.

    torchrun --nproc-per-node 2 -m torchshrink train --out runs/ddp
"""

from torchshrink.distributed.collectives import all_gather_varlen, all_reduce_, check_same_on_all_ranks
from torchshrink.distributed.ddp import average_batchnorm_stats_, wrap_ddp
from torchshrink.distributed.env import (
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    barrier,
    can_exchange,
    comm_device,
    init_from_env,
    is_distributed,
    is_main,
    local_rank,
    rank,
    rank_device,
    shutdown,
    world_size,
)
from torchshrink.distributed.failures import failures_as_errors, is_comm_failure
from torchshrink.distributed.shard import (
    BatchSlices,
    Shardable,
    evaluation_shard,
    set_epoch,
    shard_batch,
    slice_bounds,
    training_shard,
)

__all__ = [
    # the process group
    "init_from_env",
    "shutdown",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main",
    "barrier",
    "comm_device",
    "can_exchange",
    "rank_device",
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT",
    # exchanges
    "all_reduce_",
    "all_gather_varlen",
    "check_same_on_all_ranks",
    "failures_as_errors",
    "is_comm_failure",
    # data
    "Shardable",
    "slice_bounds",
    "shard_batch",
    "BatchSlices",
    "training_shard",
    "evaluation_shard",
    "set_epoch",
    # models
    "wrap_ddp",
    "average_batchnorm_stats_",
]
