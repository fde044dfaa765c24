"""What the recipes return: small typed results, the same shape for every procedure (the model they made, and
what they measured on the way)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from torchshrink.recipes.train import EpochStats

__all__ = ["PruneStep", "PruneResult", "QuantResult", "CompressResult"]


@dataclass
class PruneStep:
    """One pruning step: target and achieved sparsity, validation accuracy right after pruning and after
    retraining, and the per-layer sparsity once the step is done."""

    step: int
    target: float
    achieved: float
    val_acc_pruned: float | None  # the task's metric on its validation batches (None: no validation batches)
    val_acc_retrained: float | None
    seconds: float
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneResult:
    """A pruning recipe's outcome: ``model`` (pruned in place, masks still attached: call
    :func:`torchshrink.make_permanent` to bake the zeros in) and one :class:`PruneStep` per round."""

    model: nn.Module
    steps: list[PruneStep]

    @property
    def sparsity(self) -> float:
        """The sparsity reached by the last step."""
        return self.steps[-1].achieved

    @property
    def val_accuracy(self) -> float | None:
        """The validation metric at the end (after retraining, if any)."""
        last = self.steps[-1]
        return last.val_acc_retrained if last.val_acc_retrained is not None else last.val_acc_pruned

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "val_accuracy": self.val_accuracy, "seconds": self.seconds,
                "steps": [s.to_dict() for s in self.steps]}  # fmt: skip


@dataclass
class QuantResult:
    """A quantization recipe's outcome: the quantized copy ``model`` (in eval mode, on the CPU for PTQ, where
    it trained for QAT) and the fine-tuning epochs (empty after post-training quantization)."""

    model: nn.Module
    history: list[EpochStats] = field(default_factory=list)


@dataclass
class CompressResult:
    """:func:`torchshrink.compress_model`'s outcome: the compressed model, ready for
    :func:`torchshrink.save_compressed`, and what was done (config, pruning steps, chosen widths, seconds)."""

    model: nn.Module
    record: dict[str, Any]
