"""One shape for every recipe: ``(model, data, config, *, keyword-only rest)``, no device (the model's), a
small typed result; and evaluation leaves a caller's model as it found it."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import torchshrink as ts
from torchshrink.recipes import layer_sensitivity

RECIPES = [ts.oneshot_prune, ts.iterative_prune, ts.gradual_prune, ts.ptq, ts.qat, ts.codebook, ts.compress_model]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda f: f.__name__)
def test_every_recipe_takes_model_data_config_then_keywords(recipe):
    params = list(inspect.signature(recipe).parameters.values())
    assert [p.name for p in params[:3]][::2] == ["model" if recipe is not ts.compress_model else "base", "config"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[:3])
    assert all(p.kind is p.KEYWORD_ONLY for p in params[3:]), [p.name for p in params[3:]]
    assert "device" not in {p.name for p in params}
    assert inspect.signature(recipe).return_annotation in ("PruneResult", "QuantResult", "CompressResult")


def test_sensitivity_and_transforms_share_the_shape():
    assert "device" not in inspect.signature(layer_sensitivity).parameters
    for transform in (ts.prune_, ts.structured_prune_, ts.quantize_):
        assert list(inspect.signature(transform).parameters)[:3] == ["model", "config", "filter_fn"]


def test_transforms_refuse_a_bare_number_naming_their_config():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.raises(ts.ConfigError, match=r"PruneConfig\(sparsity=0.9\)"):
        ts.prune_(model, 0.9)
    with pytest.raises(ts.ConfigError, match="StructuredConfig"):
        ts.structured_prune_(model, 0.5)


def test_evaluate_gives_back_the_memory_format_it_found():
    torch.manual_seed(0)
    model = ts.build_model("cnn_tiny").eval()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ts.evaluate(model, [(x, y)])  # channels-last inside
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert weights and all(p.is_contiguous() for p in weights)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # values untouched
    # (outputs may differ in the last bit: oneDNN may keep a reordered copy of a weight it has seen channels-last)
    model.to(memory_format=torch.channels_last)  # and a channels-last model stays so
    ts.evaluate(model, [(x, y)])
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_gradual_pruning_distils_from_the_model_as_given_when_no_teacher_is_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    batches = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(4)]
    config = ts.GradualConfig(0.5, ts.TrainConfig(epochs=1, lr=0.05, distill=0.7), frequency=1)
    result = ts.gradual_prune(model, ts.Task(train=batches), config, log=None)
    assert isinstance(result, ts.PruneResult) and result.model is model
    assert abs(result.sparsity - 0.5) < 1e-3 and len(result.steps) == 1
