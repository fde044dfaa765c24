"""Fashion-MNIST read as sequences: a small Transformer encoder (7x7 patches as 16 tokens, nn.MultiheadAttention
inside TransformerEncoderLayer) and an LSTM (28 rows of 28 pixels as 28 steps), compressed like any model.

For each: fp32 training, then W8A8 PTQ, W4A4 QAT, 80% pruned (one shot and fine-tuned, or gradually while
training with distillation) + W4A8 QAT, and a 4-bit codebook; the accuracy on the full test set (and on validation), the file's bytes and its ratio to the fp32
``state_dict``, the seconds each took, and the share of weights in compressed layers. The recipes' settings were
fixed before any run (no test-set choice); the training settings were chosen on validation only where noted.

    python benchmarks/sequence_models.py                 # both models (about 25 minutes on 2 cores)
    python benchmarks/sequence_models.py --only lstm     # one of them
    python benchmarks/sequence_models.py --epochs 1      # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from _common import write_result
from torchshrink import (
    CodebookConfig,
    GradualConfig,
    PruneConfig,
    QuantConfig,
    TrainConfig,
    codebook,
    evaluate,
    fit,
    gradual_prune,
    load_fashion_mnist,
    oneshot_prune,
    ptq,
    qat,
    save_compressed,
)
from torchshrink.layers import prunable_layers
from torchshrink.pruning import make_permanent


class PatchTransformer(nn.Module):
    """7x7 patches of a 28x28 image as 16 tokens; learned positions (an nn.Embedding, so they are compressed too)."""

    def __init__(self, dim: int = 96, depth: int = 3, heads: int = 4, classes: int = 10):
        super().__init__()
        self.patch = nn.Linear(49, dim)
        self.position = nn.Embedding(16, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28)
        n = x.shape[0]
        patches = x.reshape(n, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(n, 16, 49)
        tokens = self.patch(patches) + self.position.weight.unsqueeze(0)
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


class RowLSTM(nn.Module):
    """The 28 rows of an image as 28 steps of 28 pixels; the last hidden state classifies."""

    def __init__(self, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.rnn = nn.LSTM(28, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28)
        out, _ = self.rnn(x.reshape(x.shape[0], 28, 28))
        return self.head(out[:, -1])


MODELS = {"transformer": PatchTransformer, "lstm": RowLSTM}


def _fp32_bytes(model: nn.Module) -> int:
    seen = {}
    for t in model.state_dict(keep_vars=True).values():
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def _share_compressed(model: nn.Module) -> float:
    covered = {id(w.stored): w.stored.numel() for w in prunable_layers(model).values()}
    weights = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    return sum(covered.values()) / weights


def _row(label: str, model: nn.Module, data: Any, fp32: int, seconds: float) -> dict[str, Any]:
    test = evaluate(model, data.test_batches(), channels_last=False)[0]
    val = evaluate(model, data.val_batches(), channels_last=False)[0]
    row: dict[str, Any] = {"label": label, "test": round(100 * test, 2), "val": round(100 * val, 2),
                           "seconds": round(seconds, 1)}  # fmt: skip
    if label != "fp32":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.tshrink"
            save_compressed(model, path)
            row["bytes"] = path.stat().st_size
        row["ratio"] = round(fp32 / row["bytes"], 2)
    else:
        row["bytes"], row["ratio"] = fp32, 1.0
    print(row, flush=True)
    return row


def run(name: str, epochs: int, data: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    model = MODELS[name]()
    task = data.task(augment=False)  # crops and flips would change the sequences' meaning
    fp32 = _fp32_bytes(model)
    # AdamW at 2e-3 with one-cycle: the usual small-Transformer / LSTM setting, kept for both (not tuned)
    base_cfg = TrainConfig(epochs=epochs, lr=2e-3, optimizer="adamw", weight_decay=0.05, channels_last=False)
    tune = TrainConfig(epochs=max(1, epochs // 4), lr=5e-4, optimizer="adamw", weight_decay=0.0, channels_last=False)
    rows = []
    start = time.perf_counter()
    cached = Path(tempfile.gettempdir()) / f"torchshrink-sequence-{name}-{epochs}.safetensors"
    if cached.is_file():  # the same seed and settings trained it before: reuse it (its seconds are then 0)
        model.load_state_dict(load_file(cached))
    else:
        fit(model, task, base_cfg, log=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, cached)
    rows.append(_row("fp32", model.eval(), data, fp32, time.perf_counter() - start))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what stays float is listed in the results (share)
        start = time.perf_counter()
        q = ptq(model, task, QuantConfig(bits=8)).model
        rows.append(_row("W8A8 PTQ", q, data, fp32, time.perf_counter() - start))
        start = time.perf_counter()
        q = qat(model, task, QuantConfig(bits=4), train=tune, log=None, progress=False).model
        rows.append(_row("W4A4 QAT", q, data, fp32, time.perf_counter() - start))
        start = time.perf_counter()
        pruned = oneshot_prune(copy.deepcopy(model), task, PruneConfig(0.8, "layer"), finetune=tune, log=None).model
        make_permanent(pruned)
        q = qat(pruned, task, QuantConfig(bits=4, act_bits=8), train=tune, log=None, progress=False).model
        rows.append(_row("80% pruned + W4A8 QAT", q, data, fp32, time.perf_counter() - start))
        start = time.perf_counter()
        # the study CNN's way to high sparsity: pruned while training, distilled from the dense model (LAMP scores,
        # so that no layer is emptied); twice the one-shot fine-tuning's epochs
        gradual = GradualConfig(0.8, replace(tune, epochs=2 * tune.epochs, distill=0.7), scope="lamp")
        pruned = gradual_prune(copy.deepcopy(model), task, gradual, teacher=model, log=None).model
        make_permanent(pruned)
        q = qat(pruned, task, QuantConfig(bits=4, act_bits=8), train=tune, log=None, progress=False).model
        rows.append(_row("80% gradual (distilled, LAMP) + W4A8 QAT", q, data, fp32, time.perf_counter() - start))
        start = time.perf_counter()
        q = codebook(model, task, CodebookConfig(4, act_bits=8), train=tune, log=None).model
        rows.append(_row("4-bit codebook", q, data, fp32, time.perf_counter() - start))
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "fp32_bytes": fp32,
            "share_compressed": round(_share_compressed(model), 4), "train": base_cfg.to_dict(),
            "finetune": tune.to_dict(), "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(MODELS), help="one model")
    parser.add_argument("--epochs", type=int, default=12, help="fp32 training epochs (fine-tuning: a quarter)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_fashion_mnist()
    results = [run(name, args.epochs, data) for name in ([args.only] if args.only else MODELS)]
    write_result("sequence_models" + (f"_{args.only}" if args.only else ""), {"epochs": args.epochs, "models": results})


if __name__ == "__main__":
    main()
