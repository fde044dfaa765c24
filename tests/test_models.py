from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.models import MLP, MODELS, ShrinkCNN, build_model, cnn_tiny, register_model
from torchshrink.pack import load_compressed, save_compressed
from torchshrink.quant import QuantConfig
from torchshrink.recipes import ptq


@pytest.fixture(autouse=True)
def registry():
    """Each test may register names; the registry is restored afterwards."""
    saved = dict(MODELS)
    yield MODELS
    MODELS.clear()
    MODELS.update(saved)


def test_the_built_in_models_are_registered():
    assert list(MODELS)[:3] == ["cnn", "cnn_tiny", "mlp"]
    assert MODELS["cnn"] is ShrinkCNN and MODELS["mlp"] is MLP and MODELS["cnn_tiny"] is cnn_tiny
    tiny = build_model("cnn_tiny")
    assert tiny.arguments() == {"channels": [4, 8, 16], "hidden": 32, "num_classes": 10, "in_channels": 1}
    assert build_model("cnn_tiny", hidden=0).arguments()["hidden"] == 0  # arguments override the defaults
    assert tiny(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_decorator_registers_a_class_or_a_factory_and_returns_it_unchanged():
    @register_model("test_linear")
    class TinyLinear(nn.Module):
        def __init__(self, width: int = 3):
            super().__init__()
            self.fc = nn.Linear(width, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    @register_model("test_factory")
    def factory(**kwargs):
        return TinyLinear(width=5, **kwargs)

    assert isinstance(TinyLinear, type) and factory.__name__ == "factory"
    assert isinstance(build_model("test_linear"), TinyLinear)
    assert build_model("test_linear", width=4).fc.in_features == 4
    assert build_model("test_factory").fc.in_features == 5


def test_a_duplicate_name_is_refused_and_the_first_registration_kept():
    with pytest.raises(ConfigError, match="'cnn' is already registered"):
        register_model("cnn")(MLP)
    assert MODELS["cnn"] is ShrinkCNN
    with pytest.raises(ConfigError, match="non-empty string"):
        register_model("")


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet9'; registered models: cnn, cnn_tiny, mlp"):
        build_model("resnet9")


def test_a_file_of_a_newly_registered_model_loads_by_name(tmp_path):
    @register_model("test_mlp")
    def test_mlp(**kwargs):
        return MLP(hidden=(16,), in_features=12, num_classes=3, **kwargs)

    q = ptq(test_mlp(), None, QuantConfig(bits=8, quantize_inputs=False)).model
    path = tmp_path / "m.tshrink"
    assert save_compressed(q, path, "test_mlp")["model"] == {"name": "test_mlp", "args": {}, "batchnorm_folded": True}
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert torch.allclose(load_compressed(path)(x), q(x), rtol=0, atol=1e-6)
