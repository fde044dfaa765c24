"""The models torchshrink trains and compresses, and a name -> constructor table.

The default ``cnn`` is a small VGG-style network chosen for accuracy per second of CPU training: five
3x3 conv layers (conv + BatchNorm + ReLU), two max-pools, global average pooling and one linear layer.
Almost all of its weights sit in conv layers, so compressing it is a real test of conv compression, not
of one oversized fully-connected layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["MODELS", "build_model", "ShrinkCNN", "MLP", "LayerInfo", "layer_table", "parameter_count", "fp32_bytes"]


def _conv_bn_relu(cin: int, cout: int) -> list[tuple[str, nn.Module]]:
    return [
        ("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),  # bias is redundant before BatchNorm
        ("bn", nn.BatchNorm2d(cout)),
        ("relu", nn.ReLU(inplace=True)),
    ]


class ShrinkCNN(nn.Module):
    """VGG-style CNN for 28x28 grayscale images.

    Args:
        widths: channels of the three stages; stage 1 and 2 have two convs each, stage 3 one.
        num_classes: size of the output.
        in_channels: image channels.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        a, b, c = widths
        plan = [(in_channels, a), (a, a), "pool", (a, b), (b, b), "pool", (b, c)]
        layers: list[tuple[str, nn.Module]] = []
        conv_index = pool_index = 0
        for step in plan:
            if step == "pool":
                pool_index += 1
                layers.append((f"pool{pool_index}", nn.MaxPool2d(2)))
                continue
            conv_index += 1
            layers += [(f"{kind}{conv_index}", module) for kind, module in _conv_bn_relu(*step)]
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1, 28, 28) -> (N, c, 7, 7)
        x = self.pool(x).flatten(1)  # (N, c)
        return self.classifier(x)


class MLP(nn.Module):
    """A plain multi-layer perceptron on flattened images (a second architecture for tests)."""

    def __init__(self, hidden: tuple[int, ...] = (256, 128), num_classes: int = 10, in_features: int = 784):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": ShrinkCNN,
    "cnn_tiny": lambda **kw: ShrinkCNN(**{"widths": (4, 8, 16), **kw}),  # seconds to train, for tests
    "mlp": MLP,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Construct a registered model by name, e.g. ``build_model("cnn")``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


@dataclass(frozen=True)
class LayerInfo:
    """One weight-bearing layer: qualified name, type, parameter count (weight + bias), fp32 bytes."""

    name: str
    kind: str
    params: int
    fp32_bytes: int


def layer_table(model: nn.Module) -> list[LayerInfo]:
    """Per-layer parameter counts of every module that owns parameters directly."""
    rows = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own:
            count = sum(p.numel() for p in own)
            rows.append(LayerInfo(name, type(module).__name__, count, 4 * count))
    return rows


def parameter_count(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and floating-point buffers stored as float32 (the baseline of every ratio)."""
    floats = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    return 4 * sum(t.numel() for t in floats)
