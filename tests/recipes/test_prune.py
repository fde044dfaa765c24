from __future__ import annotations

import copy

import pytest
import torch

from torchshrink.data import normalize
from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pruning import get_mask, prune_from_zeros_
from torchshrink.pruning.config import PruneConfig
from torchshrink.recipes import (
    GradualConfig,
    GradualPruner,
    IterativeConfig,
    TrainConfig,
    distillation_loss,
    evaluate,
    fit,
    gradual_prune,
    iterative_prune,
    layer_sensitivity,
    oneshot_prune,
    sensitivity_table,
    sparsities_for_tolerance,
)

FT = TrainConfig(epochs=1, lr=0.02)


def _task(data):
    return data.task(batch_size=64, augment=False)


def _trained(small, name="cnn_tiny"):
    torch.manual_seed(0)
    model = build_model(name)
    fit(model, _task(small), TrainConfig(epochs=2, lr=0.05), progress=False, log=None)
    return model


def test_iterative_pruning_reaches_target_and_never_unprunes(small):
    model = _trained(small)
    seen: list[dict[str, torch.Tensor]] = []

    def remember(_):
        seen.append({n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None})

    history = iterative_prune(model, _task(small), IterativeConfig(0.7, steps=3, finetune=FT, schedule="agp"),
                              log=remember).steps
    assert [round(h.target, 3) for h in history] == [0.493, 0.674, 0.7]
    assert abs(history[-1].achieved - 0.7) < 1e-3
    for earlier, later in zip(seen, seen[1:], strict=False):
        for name in earlier:
            assert not bool(((earlier[name] == 0) & (later[name] == 1)).any())
    accuracy, _ = evaluate(model, small.test_batches())
    assert accuracy > 0.5  # still a classifier at 70% sparsity after retraining


def test_oneshot_with_finetune_recovers_and_second_architecture_prunes(small):
    mlp = _trained(small, "mlp")
    step = oneshot_prune(mlp, _task(small), PruneConfig(0.9, scope="layer"), finetune=FT, log=None).steps[0]
    assert abs(step.achieved - 0.9) < 1e-3
    assert step.val_acc_retrained >= step.val_acc_pruned - 0.02
    assert len(step.layers) == 3


def test_sensitivity_curves_and_plan(small):
    model = _trained(small)
    before = copy.deepcopy(model.state_dict())
    curves = layer_sensitivity(model, _task(small.subset(val=500)), sparsities=(0.5, 0.95), progress=False)
    assert set(curves) == {"features.conv1", "features.conv2", "features.conv3", "classifier.fc1", "classifier.fc2"}
    assert all(set(c) == {0.0, 0.5, 0.95} for c in curves.values())
    # pruning 95% of the first layer alone must hurt more than pruning 50% of it
    assert curves["features.conv1"][0.95] < curves["features.conv1"][0.5]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert "features.conv1" in sensitivity_table(curves)
    plan = sparsities_for_tolerance(curves, max_drop=1.0)
    assert all(v == 0.95 for v in plan.values())


def test_rewind_resets_survivors_and_keeps_the_mask(small):
    from torchshrink.pruning import prune_
    from torchshrink.recipes import rewind_

    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    early = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, _task(small.subset(train=256)), TrainConfig(epochs=1, lr=0.05), progress=False, log=None)
    prune_(model, PruneConfig(0.6))
    rewind_(model, early)
    conv = model.features.conv2
    mask = get_mask(conv)
    assert torch.equal(conv.weight, early["features.conv2.weight"] * mask)
    assert torch.equal(model.features.bn2.running_mean, early["features.bn2.running_mean"])


def test_gradual_pruning_follows_the_cubic_schedule_during_training(small):
    model = _trained(small)
    cfg = TrainConfig(epochs=2, lr=0.02)
    masks_seen = []
    config = GradualConfig(0.8, cfg, start=0.1, end=0.6, frequency=5)
    step = gradual_prune(model, _task(small), config, log=lambda _: None).steps[0]
    assert abs(step.achieved - 0.8) < 1e-3
    assert step.val_acc_retrained > 0.5
    # the pruner's own schedule: monotone, cubic (fast first), ending at the target
    pruner = GradualPruner(0.8, start_step=10, end_step=60, frequency=5)
    levels = [pruner.sparsity_at(s) for s in range(0, 70)]
    assert levels[10] == 0.0 and levels[60] == levels[69] == 0.8
    assert all(b >= a for a, b in zip(levels, levels[1:], strict=False))
    assert abs(levels[35] - 0.7) < 1e-9  # cubic: 0.7 at half the window, where a linear schedule is at 0.4
    # masks only tighten between updates while training continues
    model2 = _trained(small)
    pruner = GradualPruner(0.6, start_step=2, end_step=20, frequency=3)
    prune_from_zeros_(model2)

    def hook(m):
        pruner(m)
        masks_seen.append({n: get_mask(x).clone() for n, x in m.named_modules() if get_mask(x) is not None})

    fit(model2, _task(small.subset(train=640)), TrainConfig(epochs=2, lr=0.02), after_step=hook,
        progress=False, log=None)  # fmt: skip
    for earlier, later in zip(masks_seen, masks_seen[1:], strict=False):
        for name in earlier:
            assert not bool(((earlier[name] == 0) & (later[name] == 1)).any())
    assert [u[0] for u in pruner.updates] == [2, 5, 8, 11, 14, 17, 20]
    assert abs(pruner.updates[-1][1] - 0.6) < 1e-9


def test_distillation_pulls_the_student_towards_the_teacher(small):
    teacher = _trained(small)
    torch.manual_seed(1)
    student = build_model("cnn_tiny")
    cfg = TrainConfig(epochs=1, lr=0.05, distill=1.0, label_smoothing=0.0)
    with pytest.raises(ConfigError, match="teacher"):
        fit(copy.deepcopy(student), _task(small), cfg, progress=False, log=None)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(student, _task(small), cfg, teacher=teacher, progress=False, log=None)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher never trains
    x = normalize(small.val_x[:500])
    with torch.no_grad():
        agree = (student.eval()(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean()
    assert agree > 0.7
    # the loss itself: with distill=1 it is T^2 KL, zero when the logits agree
    logits = torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    assert float(distillation_loss(logits, logits, labels, cfg)) < 1e-6
    assert float(distillation_loss(logits, torch.randn(8, 10), labels, cfg)) > 0
