from __future__ import annotations

import pytest
import torch

from torchshrink.errors import ConfigError
from torchshrink.models import build_model, fp32_bytes, layer_table, parameter_count
from torchshrink.pruning.config import PruneConfig
from torchshrink.recipes.train import TrainConfig, evaluate, fit

QUICK = TrainConfig(epochs=1, lr=0.05, seed=3)


def _trained(small, cfg: TrainConfig, name: str = "cnn_tiny") -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    model = build_model(name)
    fit(model, small.subset(train=512).task(batch_size=64), cfg, progress=False, log=None)
    return model


def test_same_seed_gives_identical_weights(small):
    a, b = _trained(small, QUICK), _trained(small, QUICK)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_different_seed_gives_different_weights(small):
    a = _trained(small, QUICK)
    b = _trained(small, TrainConfig(**{**QUICK.to_dict(), "seed": 4}))
    assert not torch.equal(a.features.conv1.weight, b.features.conv1.weight)


@pytest.mark.parametrize("name, optimizer, schedule", [("cnn_tiny", "sgd", "onecycle"), ("mlp", "adamw", "cosine")])
def test_short_training_learns_far_above_chance(small, small_task, name, optimizer, schedule):
    torch.manual_seed(0)
    model = build_model(name)
    cfg = TrainConfig(
        epochs=3,
        lr=0.05 if optimizer == "sgd" else 2e-3,
        optimizer=optimizer,
        schedule=schedule,
    )
    history = fit(model, small_task, cfg, progress=False, log=None)
    accuracy, loss = evaluate(model, small.test_batches())
    assert accuracy > 0.6, accuracy  # chance is 0.1
    assert history[-1].train_loss < history[0].train_loss
    assert len(history) == 3 and all(h.images_per_second > 0 for h in history)


def test_config_rejects_impossible_values():
    with pytest.raises(ConfigError, match="epochs=0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="lr=-1"):
        TrainConfig(lr=-1)


def test_layer_table_counts_every_parameter():
    model = build_model("cnn")
    rows = layer_table(model)
    assert sum(r.params for r in rows) == parameter_count(model)
    conv = sum(r.params for r in rows if r.kind == "Conv2d")
    assert conv / parameter_count(model) > 0.2  # conv layers hold a real share of the weights
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    assert fp32_bytes(model) == 4 * (parameter_count(model) + buffers)


def test_ema_leaves_the_documented_average_and_validates_it(small):
    """The weights after ``fit`` with ``ema`` are the moving average of the weights after every step (computed
    here from the recorded steps), and each epoch's validation figure is that of the average."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    decay = 0.9
    task = small.subset(train=512, val=256).task(batch_size=64)
    steps: list[torch.Tensor] = []
    record = lambda m: steps.append(m.classifier.fc1.weight.detach().clone())  # noqa: E731
    start = model.classifier.fc1.weight.detach().clone()
    history = fit(model, task, TrainConfig(epochs=2, lr=0.05, ema=decay), after_step=record,
                  progress=False, log=None)  # fmt: skip
    average = start
    for t, w in enumerate(steps, start=1):
        d = min(decay, (1 + t) / (10 + t))
        average = d * average + (1 - d) * w
    assert not torch.allclose(steps[-1], average, atol=1e-4)  # the average is not the last step's weights
    torch.testing.assert_close(model.classifier.fc1.weight.detach(), average, rtol=1e-4, atol=1e-6)
    assert history[-1].val_accuracy == evaluate(model, task.val)[0]


def test_ema_never_averages_pruning_masks(small):
    from torchshrink.pruning import get_mask, prune_

    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    prune_(model, PruneConfig(0.5))
    before = get_mask(model.features.conv1).clone()
    fit(model, small.subset(train=256).task(batch_size=64), TrainConfig(epochs=1, lr=0.05, ema=0.9),
        progress=False, log=None)  # fmt: skip
    mask = get_mask(model.features.conv1)
    assert torch.equal(mask, before)  # still the same 0/1 mask, not a blend of masks
    assert before.min() == 0 and bool((model.features.conv1.weight[mask == 0] == 0).all())


def test_ema_decay_must_be_below_one():
    with pytest.raises(ConfigError, match="ema=1"):
        TrainConfig(ema=1.0)
    with pytest.raises(ConfigError, match="ema=-0.1"):
        TrainConfig(ema=-0.1)


BF16 = TrainConfig(**{**QUICK.to_dict(), "precision": "bf16"})


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_fp32_weights(small):
    seen: list[torch.dtype] = []
    torch.manual_seed(BF16.seed)
    model = build_model("cnn_tiny")
    model.features.conv2.register_forward_hook(lambda m, args, out: seen.append(out.dtype) if m.training else None)
    fit(model, small.subset(train=512).task(batch_size=64), BF16, progress=False, log=None)
    assert seen and set(seen) == {torch.bfloat16}  # the autocast is really on while training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference = _trained(small, QUICK)
    assert not torch.equal(model.features.conv1.weight, reference.features.conv1.weight)
    again = _trained(small, BF16)  # deterministic like fp32
    for (name, pa), pb in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_bf16_training_learns_as_well_as_fp32(small, small_task):
    accuracies = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("cnn_tiny")
        fit(model, small_task, TrainConfig(epochs=3, lr=0.05, precision=precision), progress=False, log=None)
        accuracies[precision] = evaluate(model, small.test_batches())[0]
    assert accuracies["bf16"] > 0.6, accuracies
    assert abs(accuracies["bf16"] - accuracies["fp32"]) < 0.03, accuracies


def test_bf16_quantization_aware_training_takes_its_codes_in_fp32(small, trained_tiny):
    import copy

    from torchshrink.quant import QuantConfig, calibrate_, input_quantizer, quantize_, set_quant_enabled

    model = quantize_(copy.deepcopy(trained_tiny), QuantConfig(bits=8))
    calibrate_(model, small.calibration_batches(128))
    set_quant_enabled(model, True)
    layer = model.features.conv2
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(m: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if m.training:
            inputs.append((args[0].detach(), input_quantizer(m).effective_scale.detach().clone()))

    layer.register_forward_hook(keep)
    task = small.subset(train=128).task(batch_size=64)
    fit(model, task, BF16, progress=False, log=None)  # no refusal: the quantizers work in fp32
    assert inputs and all(x.dtype == torch.float32 for x, _ in inputs)  # conv1 handed over bf16, codes are fp32
    x, scale = inputs[0]
    codes = x / scale
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)  # whole codes, not bf16-rounded ones
    assert codes.max() > 128  # 8-bit codes: bf16 (8 significant bits) could not hold them all
    with pytest.raises(ConfigError, match="precision='fp16'"):
        TrainConfig(precision="fp16")


def test_fp32_final_epochs_end_a_bf16_run_in_fp32(small):
    seen: list[torch.dtype] = []
    torch.manual_seed(0)
    model = build_model("cnn_tiny")
    model.features.conv2.register_forward_hook(lambda m, args, out: seen.append(out.dtype) if m.training else None)
    cfg = TrainConfig(epochs=2, lr=0.05, precision="bf16", fp32_final_epochs=1)
    task = small.subset(train=256).task(batch_size=64)
    fit(model, task, cfg, progress=False, log=None)
    assert seen == [torch.bfloat16] * 4 + [torch.float32] * 4  # 4 batches per epoch
    with pytest.raises(ConfigError, match="fp32_final_epochs=3: must be from 0 to epochs"):
        TrainConfig(epochs=2, fp32_final_epochs=3)


def test_bf16_on_a_cpu_without_native_bfloat16_warns_that_fp32_is_faster(small, monkeypatch):
    from torchshrink.recipes.train import native_bf16

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not native_bf16(torch.device("cpu"))
    task = small.subset(train=64).task(batch_size=64)
    with pytest.warns(UserWarning, match="no native bfloat16 arithmetic.*use precision='fp32'"):
        fit(build_model("cnn_tiny"), task, BF16, progress=False, log=None)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bf16(torch.device("cpu"))  # either instruction set will do


def test_evaluate_runs_channels_last_by_default_with_the_same_figures(small, trained_tiny):
    import copy

    plain = copy.deepcopy(trained_tiny).to(memory_format=torch.contiguous_format)
    reference = evaluate(copy.deepcopy(plain), small.test_batches(), channels_last=False)
    model = copy.deepcopy(plain)
    assert not model.features.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    figures = evaluate(model, small.test_batches())  # channels-last inside: the faster layout
    assert model.features.conv2.weight.is_contiguous()  # and the caller's layout back
    assert figures[0] == reference[0] and figures[1] == pytest.approx(reference[1], rel=1e-5)
