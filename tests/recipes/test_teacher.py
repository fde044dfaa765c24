from __future__ import annotations

import torch
from torch import nn

from torchshrink.data import Task
from torchshrink.recipes import TrainConfig, fit
from torchshrink.recipes.teacher import MemoTeacher


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()


def test_a_hit_is_what_a_fresh_forward_gives_and_any_change_is_a_miss():
    model = _net()
    memo = MemoTeacher(model)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        first = memo(x)
        assert memo(x.clone()) is first and (memo.hits, memo.misses) == (1, 1)  # same bytes: remembered
        assert torch.equal(first, model(x))
        y = x.clone()
        y.view(-1)[123] = torch.nextafter(y.view(-1)[123], torch.tensor(9.0))  # one bit of one value
        assert torch.equal(memo(y), model(y)) and memo.misses == 2
        with torch.autocast("cpu", torch.bfloat16):  # another precision: another output
            assert memo(x).dtype == torch.bfloat16 and memo.misses == 3
        assert memo(x[:4]) is not first and memo.misses == 4  # another shape
    out = memo(x)  # with gradients enabled nothing is remembered (a graph would be kept alive)
    assert out.requires_grad and memo.misses == 4 and memo.hits == 1


def test_nothing_is_stored_beyond_the_limit():
    memo = MemoTeacher(_net(), max_bytes=8 * 10 * 4)  # one batch of 8 fp32 logits
    with torch.no_grad():
        memo(torch.randn(8, 1, 28, 28))
        memo(torch.randn(8, 1, 28, 28))
    assert memo.stored_bytes == 320 and len(memo._outputs) == 1


def test_training_twice_with_a_memo_teacher_is_training_with_the_model():
    """Seeded batches repeat, so the second run hits on every batch, and trains exactly as with the model."""
    torch.manual_seed(1)
    data = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(4)]
    task = Task(train=data)
    cfg = TrainConfig(epochs=2, lr=0.05, distill=0.5)
    teacher, memo = _net(), MemoTeacher(_net())
    runs = []
    for t in (teacher, memo, memo):
        torch.manual_seed(2)
        student = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        fit(student, task, cfg, teacher=t, progress=False, log=None)
        runs.append(student[1].weight.detach().clone())
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])
    assert memo.misses == 4 and memo.hits == 12  # a list repeats each epoch: each batch computed once, ever
