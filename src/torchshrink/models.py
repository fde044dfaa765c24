"""The models torchshrink trains and compresses, and a name -> constructor registry (``@register_model``).

The default ``cnn`` is a small VGG-style network chosen for accuracy per second of CPU training: three
3x3 conv layers (conv + BatchNorm + ReLU), each followed by a 2x2 max-pool, then a 256-unit hidden layer
and the output layer (390,634 parameters). The hidden layer holds 75% of the weights and the convs nearly
all of the multiply-adds, so compression is tested on both kinds of layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from torchshrink.errors import ConfigError

__all__ = [
    # the registry
    "MODELS",
    "register_model",
    "build_model",
    # the architectures
    "ShrinkCNN",
    "cnn_tiny",
    "MLP",
    # sizes
    "LayerInfo",
    "layer_table",
    "parameter_count",
    "fp32_bytes",
]

MODELS: dict[str, Callable[..., nn.Module]] = {}  # name -> class or factory; fill it with @register_model
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator that registers a model class or factory function under ``name`` in :data:`MODELS`.

    A registered model can be built by name (:func:`build_model`) and a compressed file saved with that
    name rebuilds it without being given the model. Returns the decorated object unchanged.

    Example:
        >>> @register_model("doc_tiny_mlp")
        ... def doc_tiny_mlp(**kwargs):
        ...     return MLP(hidden=(8,), **kwargs)
        >>> build_model("doc_tiny_mlp").net[1].out_features
        8
        >>> del MODELS["doc_tiny_mlp"]

    Raises:
        ConfigError: ``name`` is not a non-empty string or is already registered.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name {name!r}: give a non-empty string")

    def add(constructor: F) -> F:
        if name in MODELS:
            raise ConfigError(f"model name {name!r} is already registered (to {MODELS[name]!r}); choose another name")
        MODELS[name] = constructor
        return constructor

    return add


def _conv_bn_relu(cin: int, cout: int) -> list[tuple[str, nn.Module]]:
    return [
        ("conv", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),  # bias is redundant before BatchNorm
        ("bn", nn.BatchNorm2d(cout)),
        ("relu", nn.ReLU(inplace=True)),
    ]


@register_model("cnn")
class ShrinkCNN(nn.Module):
    """VGG-style CNN for 28x28 grayscale images: stages of 3x3 conv + BatchNorm + ReLU, each ending in a
    2x2 max-pool, then a small classifier on the flattened map.

    Args:
        channels: output channels of each conv; a nested tuple puts several convs in one stage.
        hidden: width of the hidden fully-connected layer (0: straight to the classes).
        num_classes: size of the output.
        in_channels: image channels.
    """

    def __init__(
        self,
        channels: tuple[int | tuple[int, ...], ...] | list = (32, 64, 128),
        hidden: int = 256,
        num_classes: int = 10,
        in_channels: int = 1,
    ):
        super().__init__()
        layers: list[tuple[str, nn.Module]] = []
        cin, size, index = in_channels, 28, 0
        for stage, widths in enumerate(channels, start=1):
            for cout in widths if isinstance(widths, (tuple, list)) else (widths,):
                index += 1
                layers += [(f"{kind}{index}", module) for kind, module in _conv_bn_relu(cin, cout)]
                cin = cout
            layers.append((f"pool{stage}", nn.MaxPool2d(2)))
            size //= 2
        self.features = nn.Sequential(OrderedDict(layers))
        flat = cin * size * size
        head: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        if hidden:
            head += [("fc1", nn.Linear(flat, hidden)), ("relu", nn.ReLU(inplace=True))]
            flat = hidden
        head.append(("fc2" if hidden else "fc1", nn.Linear(flat, num_classes)))
        self.classifier = nn.Sequential(OrderedDict(head))

    def arguments(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this model's current shape (after structured pruning too)."""
        stages: list[tuple[int, ...]] = [()]
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                stages[-1] += (module.out_channels,)
            elif isinstance(module, nn.MaxPool2d):
                stages.append(())
        channels = [s[0] if len(s) == 1 else list(s) for s in stages if s]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        return {"channels": channels, "hidden": linears[0].out_features if len(linears) == 2 else 0,
                "num_classes": linears[-1].out_features, "in_channels": self.features[0].in_channels}  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1, 28, 28) -> (N, C, 3, 3) after three stages
        return self.classifier(x)  # (N, C*3*3) -> (N, hidden) -> (N, classes)


@register_model("cnn_tiny")
def cnn_tiny(**kwargs: Any) -> ShrinkCNN:
    """A :class:`ShrinkCNN` with channels ``(4, 8, 16)`` and 32 hidden units: seconds to train (tests).
    Any argument of :class:`ShrinkCNN` overrides those."""
    return ShrinkCNN(**{"channels": (4, 8, 16), "hidden": 32, **kwargs})


@register_model("mlp")
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


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Construct a registered model by name, e.g. ``build_model("cnn")``.

    Raises:
        ConfigError: no model is registered under ``name``; the message lists the registered names.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(MODELS)} "
                          "(add one with @torchshrink.models.register_model)")  # fmt: skip
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
