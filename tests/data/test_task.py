"""The default metric, top-1 accuracy, means the same on a classifier and on a dense-prediction model: a fraction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.data.task import Task, top1_correct
from torchshrink.errors import ConfigError
from torchshrink.recipes.train import evaluate


def _right_on(outputs: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Class-index targets that agree with ``outputs``' top class exactly where ``right`` is True."""
    top = outputs.argmax(1)
    return torch.where(right, top, (top + 1) % outputs.shape[1])


def test_classification_counts_the_right_samples() -> None:
    outputs = torch.randn(5, 3)
    targets = _right_on(outputs, torch.tensor([True, False, True, True, False]))
    assert top1_correct(outputs, targets) == 3


@pytest.mark.parametrize("positions", [(7,), (6, 5), (2, 3, 4)])  # a sequence, an image, a volume
def test_dense_outputs_score_each_sample_by_its_fraction_of_right_positions(positions: tuple[int, ...]) -> None:
    outputs = torch.randn(3, 4, *positions)  # (N, C, *positions)
    right = torch.zeros(3, *positions, dtype=torch.bool)
    right[0] = True  # every position of sample 0
    right[1].view(-1)[:1] = True  # one position of sample 1
    n = right[0].numel()
    assert top1_correct(outputs, _right_on(outputs, right)).item() == pytest.approx(1.0 + 1.0 / n)


def test_evaluate_reads_pixel_accuracy_on_a_segmentation_model() -> None:
    """Evaluation divides the summed metric by the number of samples: the default metric must be per sample."""
    torch.manual_seed(0)
    logits = torch.randn(8, 3, 16, 16)  # what a U-Net returns: (N, classes, H, W)
    targets = torch.randint(0, 3, (8, 16, 16))
    batches = [(logits[:5], targets[:5]), (logits[5:], targets[5:])]
    score, _ = evaluate(nn.Identity(), batches, metric=Task().metric_or_default(), channels_last=False)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx((logits.argmax(1) == targets).float().mean().item())


@pytest.mark.parametrize(
    "outputs, targets",
    [
        (torch.randn(4, 3), torch.eye(3)[[0, 1, 2, 0]]),  # one-hot targets
        (torch.randn(4, 3, 8, 8), torch.zeros(4, 1, 8, 8, dtype=torch.long)),  # a kept channel axis
        (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)),  # one label per image
        (torch.randn(4), torch.zeros(4, dtype=torch.long)),  # no class axis
    ],
)
def test_targets_that_would_broadcast_are_refused_with_the_fix(outputs: torch.Tensor, targets: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match=r"got outputs .* and targets .*Task\(metric=\.\.\.\)"):
        top1_correct(outputs, targets)
