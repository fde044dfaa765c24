"""Compress your own model with torchshrink: a small residual network defined right here, trained on
Fashion-MNIST through plain DataLoaders, pruned during training, quantized, written to a .tshrink file and
loaded back into a fresh instance of the same class.

    python examples/compress_your_model.py                 # several minutes on 2 CPU cores
    python examples/compress_your_model.py --train-images 2000 --epochs 1   # a quick look

Nothing in torchshrink knows this model: it is not registered, its BatchNorms are found by tracing its graph.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchshrink as ts
from torchshrink.data import load_fashion_mnist, normalize


class Block(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) skip connection."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.proj(x))


class ResNetish(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layers = nn.Sequential(Block(32, 32), Block(32, 64, stride=2), Block(64, 64, stride=2))
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28)
        x = self.layers(self.stem(x))  # (N, 64, 7, 7)
        return self.head(x.mean(dim=(2, 3)))


def loader(x: torch.Tensor, y: torch.Tensor, shuffle: bool) -> DataLoader:
    return DataLoader(TensorDataset(normalize(x), y), batch_size=128, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=20_000, help="training images used (of 55,000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the dense training")
    parser.add_argument("--sparsity", type=float, default=0.8, help="fraction of weights pruned")
    parser.add_argument("--bits", type=int, default=4, help="weight and activation bits")
    args = parser.parse_args()

    data = load_fashion_mnist()
    n = args.train_images
    task = ts.Task(train=loader(data.train_x[:n], data.train_y[:n], True), val=loader(data.val_x, data.val_y, False))
    test = loader(data.test_x, data.test_y, False)

    torch.manual_seed(0)
    model = ResNetish()
    ts.fit(model, task, ts.TrainConfig(epochs=args.epochs, lr=0.05))
    dense_acc, _ = ts.evaluate(model, test)

    # prune during a short distilled training run, then quantization-aware training, then the real file
    # (both trainings distilled from the dense model, weight 0.7, at TrainConfig's temperature 2.0)
    cfg = ts.CompressConfig(
        prune=ts.GradualConfig(args.sparsity, train=ts.TrainConfig(epochs=2, lr=0.02, distill=0.7)),
        quant=ts.QuantConfig(bits=args.bits),  # inputs at the same width as the weights
        finetune=ts.TrainConfig(epochs=1, lr=0.01, distill=0.7),
    )
    compressed = ts.compress_model(model, task, cfg).model
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resnetish.tshrink"
        ts.save_compressed(compressed, path)
        loaded = ts.load_compressed(path, model=ResNetish())  # a fresh instance of your class
        file_bytes = path.stat().st_size
    acc, _ = ts.evaluate(loaded, test)
    fp32 = ts.fp32_bytes(copy.deepcopy(model))
    print(f"dense fp32: {fp32:,} bytes, test accuracy {100 * dense_acc:.2f}%")
    print(f"{args.sparsity:.0%} pruned + W{args.bits}A{args.bits}: {file_bytes:,} bytes on disk "
          f"({fp32 / file_bytes:.1f}x smaller), test accuracy {100 * acc:.2f}% (loaded back from the file)")  # fmt: skip


if __name__ == "__main__":
    main()
