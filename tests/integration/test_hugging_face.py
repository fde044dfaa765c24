"""Hugging Face models as a user brings them: GPT-2 (``Conv1D`` projections, a head tied to the token embedding) and
BERT (embeddings, linear attention), built from small configs with random weights (nothing downloaded). Pruned and
quantized, saved, and loaded into a fresh instance in a fresh process, whose outputs must equal, bit for bit, those
of the model that was saved."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from torchshrink import QuantConfig, load_compressed, save_compressed
from torchshrink.layers import prunable_layers, skipped_layers
from torchshrink.pruning import PruneConfig, make_permanent, prune_
from torchshrink.recipes import ptq

transformers = pytest.importorskip("transformers")

BUILD = textwrap.dedent(
    """
    import torch, transformers
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
    transformers.logging.set_verbosity_error()

    def build(name, seed):
        torch.manual_seed(seed)
        if name == "gpt2":
            config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, n_positions=64, bos_token_id=0,
                                eos_token_id=0)
            return GPT2LMHeadModel(config).eval()
        config = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                            vocab_size=500, max_position_embeddings=64)
        return BertForMaskedLM(config).eval()
    """
)
namespace: dict = {}
exec(BUILD, namespace)  # the same builder in this process and in the fresh one
build = namespace["build"]

RECIPES = {
    "w8a8": (0.0, QuantConfig(bits=8)),
    "pruned80-w4a4": (0.8, QuantConfig(bits=4)),
}


def _compress(name: str, sparsity: float, config: QuantConfig) -> torch.nn.Module:
    model = build(name, 0)
    ids = torch.randint(0, 500, (4, 16), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the inputs left float (embeddings' indices) are listed in a warning
        if sparsity:
            prune_(model, PruneConfig(sparsity, "layer"))
            make_permanent(model)
        return ptq(model, [ids], config).model


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(ids).logits.numpy()


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_every_weight_is_compressed(name):
    model = build(name, 0)
    assert skipped_layers(model) == {}
    covered = {id(w.stored): w.stored.numel() for w in prunable_layers(model).values()}  # a tied pair once
    weights = sum(p.numel() for p in model.parameters() if p.ndim >= 2)  # parameters() lists a tied pair once
    assert sum(covered.values()) == weights


def test_pruned_and_quantized_models_load_bit_for_bit_in_a_fresh_process(tmp_path):
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    expected = {}
    for name in ("gpt2", "bert"):
        for recipe, (sparsity, config) in RECIPES.items():
            q = _compress(name, sparsity, config)
            path = tmp_path / f"{name}-{recipe}.tshrink"
            header = save_compressed(q, path)
            if name == "gpt2":
                assert header["aliases"] == {"lm_head.weight": "transformer.wte.weight"}  # the tie, stored once
            encodings = {t["name"]: t["encoding"] for t in header["tensors"]}
            assert encodings["transformer.h.0.attn.c_attn.weight" if name == "gpt2" else
                             "bert.embeddings.word_embeddings.weight"] == "uniform"  # fmt: skip
            expected[f"{name}-{recipe}"] = _logits(q, ids)
            loaded = load_compressed(path, model=build(name, 7))  # here too, before the fresh process
            assert np.array_equal(_logits(loaded, ids), expected[f"{name}-{recipe}"])
    np.save(tmp_path / "ids.npy", ids.numpy())
    script = BUILD + textwrap.dedent(
        f"""
        import numpy as np, sys
        from torchshrink import load_compressed
        ids = torch.from_numpy(np.load({str(tmp_path / "ids.npy")!r}))
        for key in {sorted(expected)!r}:
            model = load_compressed({str(tmp_path)!r} + "/" + key + ".tshrink", model=build(key.split("-")[0], 3))
            with torch.no_grad():
                np.save({str(tmp_path)!r} + "/" + key + ".npy", model(ids).logits.numpy())
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=240)
    for key, logits in expected.items():
        assert np.array_equal(np.load(tmp_path / f"{key}.npy"), logits), key


def test_a_tied_head_and_embedding_stay_one_tensor_through_pruning_quantization_and_the_file(tmp_path):
    q = _compress("gpt2", 0.8, QuantConfig(bits=4))
    embedding, head = q.transformer.wte, q.lm_head
    assert torch.equal(embedding.weight, head.weight)  # both uses read one pruned, quantized tensor
    assert embedding.parametrizations.weight[-1] is head.parametrizations.weight[-1]  # one quantizer
    assert float((embedding.weight == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    save_compressed(q, tmp_path / "gpt2.tshrink")
    loaded = load_compressed(tmp_path / "gpt2.tshrink", model=build("gpt2", 5))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, head.weight)
