"""Models a user brings, defined by hand (no torchvision), and synthetic data they can learn from.

Each family comes with a factory and a data maker; the data's targets are a fixed function of the inputs, so a
few steps of training lower the loss, but nothing here depends on real accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))``, with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body1 = conv_bn(cin, cout, stride=stride)
        self.body2 = conv_bn(cout, cout)
        self.skip = conv_bn(cin, cout, k=1, stride=stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.body1(x))
        return torch.relu(self.body2(out) + self.skip(x))


class TinyResNet(nn.Module):
    """Stem, two residual blocks (one with a projection), a depthwise-separable block, pooling, a linear head."""

    def __init__(self, in_channels: int = 3, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(in_channels, 16)
        self.block1 = BasicBlock(16, 16)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.depthwise = conv_bn(32, 32, groups=32)
        self.pointwise = conv_bn(32, 32, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.block2(self.block1(x))
        x = torch.relu(self.pointwise(torch.relu(self.depthwise(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class Conv1dNet(nn.Module):
    """A sequence classifier: two Conv1d + BatchNorm1d layers, global pooling, a linear head."""

    def __init__(self, channels: int = 4, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, L)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=2))


class LayerNormMLP(nn.Module):
    """An MLP on tabular features with LayerNorm after each hidden layer."""

    def __init__(self, features: int = 20, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, 64), nn.LayerNorm(64), nn.ReLU(),
            nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(),
            nn.Linear(64, classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyTransformer(nn.Module):
    """Token embedding, one Transformer encoder layer, mean pooling, a linear head."""

    def __init__(self, vocab: int = 50, dim: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, T) int64
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator, int], torch.Tensor]  # (generator, n) -> a batch of inputs
    classes: int
    structured: bool  # channel pruning applies (convolutions with channels to remove)


FAMILIES = [
    Family("resnet", TinyResNet, lambda g, n: torch.randn(n, 3, 16, 16, generator=g), 10, True),
    Family("conv1d", Conv1dNet, lambda g, n: torch.randn(n, 4, 32, generator=g), 5, True),
    Family("mlp_layernorm", LayerNormMLP, lambda g, n: torch.randn(n, 20, generator=g), 3, False),
    Family("transformer", TinyTransformer, lambda g, n: torch.randint(0, 50, (n, 12), generator=g), 4, False),
]


def make_model(family: Family, seed: int = 0) -> nn.Module:
    """The family's model with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = family.make()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def make_loader(family: Family, n: int = 256, batch_size: int = 32, seed: int = 0, shuffle: bool = True) -> DataLoader:
    """Synthetic inputs labelled by a fixed random model of the same family (a learnable target)."""
    g = torch.Generator().manual_seed(seed)
    x = family.inputs(g, n)
    with torch.no_grad():
        y = make_model(family, seed=1234)(x).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip

# --- more graphs, for the exporter: concatenation, ConvTranspose, squeeze-excite gates, recurrences ------------


class UNetish(nn.Module):
    """Down, up with ConvTranspose2d, and the skip joined by torch.cat."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.enc(x))
        y = torch.relu(self.up(torch.relu(self.down(skip))))
        return self.dec(torch.cat([y, skip], dim=1)).mean(dim=(2, 3))


class SqueezeExcite(nn.Module):
    """Depthwise conv, hardswish, a squeeze-excite gate that multiplies the features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.squeeze, self.excite = nn.Linear(16, 4), nn.Linear(4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.hardswish(self.depthwise(torch.relu(self.stem(x))))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(y.mean(dim=(2, 3))))))
        return self.head((y * gate[:, :, None, None]).mean(dim=(2, 3)))


class RowLSTM(nn.Module):
    """An image's rows as the steps of an LSTM; the last hidden state classifies."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8)
        return self.head(self.rnn(x.reshape(x.shape[0], 8, 8))[0][:, -1])


EXPORT_FAMILIES = [
    Family("unet", UNetish, lambda g, n: torch.randn(n, 3, 8, 8, generator=g), 4, False),
    Family("squeeze_excite", SqueezeExcite, lambda g, n: torch.randn(n, 3, 8, 8, generator=g), 5, False),
    Family("lstm", RowLSTM, lambda g, n: torch.randn(n, 1, 8, 8, generator=g), 4, False),
]
