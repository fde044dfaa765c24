"""How much of a modern model torchshrink compresses, and how small its file gets: Hugging Face GPT-2 and BERT of
about 1 M parameters (built from configs, random weights, nothing downloaded), a Transformer encoder with a token
embedding and an LSTM language model.

For each: the share of the weights (parameters of 2 or more dimensions, a tied pair counted once) in compressed
layers, listed by kind, and the ``.tshrink`` file's ratio to the fp32 ``state_dict`` (each tensor counted once) for
W8A8 and W4A4 PTQ and for 80% pruning (per layer) + W4A4. Random weights: the ratios are those of the format, not
of a trained model's statistics (sparsity and Huffman coding gain more on trained weights).

    python benchmarks/layer_kinds.py
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _common import write_result
from torchshrink import PruneConfig, QuantConfig, ptq, save_compressed
from torchshrink.layers import prunable_layers, skipped_layers
from torchshrink.pruning import make_permanent, prune_


class TokenTransformer(nn.Module):
    def __init__(self, vocab: int = 2000, dim: int = 128, depth: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        # layers made one by one: nn.TransformerEncoder's copies of one layer start identical, which the file's
        # payload compression would find
        self.layers = nn.Sequential(
            *[nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True) for _ in range(depth)]
        )
        self.head = nn.Linear(dim, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.embed(ids)).mean(1))


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 2000, dim: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models often are

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


def _models() -> dict[str, nn.Module]:
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=2000, n_positions=128,
                                      bos_token_id=0, eos_token_id=0))  # fmt: skip
    bert = BertForMaskedLM(BertConfig(num_hidden_layers=4, hidden_size=128, num_attention_heads=4,
                                      intermediate_size=512, vocab_size=2000, max_position_embeddings=128))  # fmt: skip
    return {"gpt2": gpt2, "bert": bert, "transformer": TokenTransformer(), "lstm": LSTMLanguageModel()}


def _fp32_bytes(model: nn.Module) -> int:
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}.values())


def _shares(model: nn.Module) -> tuple[float, dict[str, int]]:
    by_kind: dict[str, int] = {}
    covered: dict[int, int] = {}
    for w in prunable_layers(model).values():
        if id(w.stored) not in covered:
            covered[id(w.stored)] = w.stored.numel()
            by_kind[w.kind.name] = by_kind.get(w.kind.name, 0) + w.stored.numel()
    weights = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    return sum(covered.values()) / weights, by_kind


def _file_bytes(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tshrink"
        save_compressed(model, path)
        return path.stat().st_size


def measure(name: str, model: nn.Module) -> dict[str, Any]:
    model.eval()
    ids = torch.randint(0, 2000, (8, 32), generator=torch.Generator().manual_seed(0))
    share, by_kind = _shares(model)
    fp32 = _fp32_bytes(model)
    out: dict[str, Any] = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
                           "fp32_bytes": fp32, "share_compressed": round(share, 4), "weights_by_kind": by_kind,
                           "left_in_float": skipped_layers(model), "files": []}  # fmt: skip
    for label, sparsity, bits in [("W8A8", 0.0, 8), ("W4A4", 0.0, 4), ("80% + W4A4", 0.8, 4)]:
        start = time.perf_counter()
        m = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # embeddings' indices stay integers: listed by quantize_'s warning
            if sparsity:
                prune_(m, PruneConfig(sparsity, "layer"))
                make_permanent(m)
            q = ptq(m, [ids], QuantConfig(bits=bits)).model
        size = _file_bytes(q)
        out["files"].append({"label": label, "bytes": size, "ratio": round(fp32 / size, 2),
                             "seconds": round(time.perf_counter() - start, 2)})  # fmt: skip
    print(f"{name:12s} share {share:.2%}  " + "  ".join(f"{f['label']} {f['ratio']}x" for f in out["files"]))
    return out


def main() -> None:
    torch.set_num_threads(2)
    write_result("layer_kinds", {"models": [measure(n, m) for n, m in _models().items()]})


if __name__ == "__main__":
    main()
