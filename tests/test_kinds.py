"""Layer kinds beyond convolutions and linear layers: RNNs, attention's own projections, embeddings, a kind a user
registers, and a module reached under two names with its input quantized."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from torchshrink import (
    QuantConfig,
    load_compressed,
    register_layer_kind,
    save_compressed,
    unregister_layer_kind,
)
from torchshrink.errors import ConfigError
from torchshrink.kinds import layer_kind
from torchshrink.layers import prunable_layers, skipped_layers
from torchshrink.pruning import PruneConfig, make_permanent, prune_
from torchshrink.quant import calibrate_, input_quantizer, quantize_, weight_quantizer
from torchshrink.recipes import codebook, ptq
from torchshrink.recipes.quantize import CodebookConfig


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = cell(6, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, 6)
        return self.head(self.rnn(x)[0][:, -1])


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)  # q/k/v_proj_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x[..., :4]
        return self.attn(x, kv, kv, need_weights=False)[0]


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_every_recurrent_weight_is_pruned_quantized_and_stored(cell, tmp_path):
    torch.manual_seed(0)
    model = Recurrent(cell).eval()
    x = torch.randn(4, 5, 6)
    names = set(prunable_layers(model))
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l1_reverse", "head"} <= names and len(names) == 9
    _quiet(lambda: prune_(model, PruneConfig(0.5, "layer")))
    make_permanent(model)
    assert float((model.rnn.weight_hh_l0 == 0).float().mean()) == pytest.approx(0.5)
    q = _quiet(lambda: ptq(model, [x], QuantConfig(bits=4)).model)
    assert all(weight_quantizer(w.module, w.attr) is not None for w in prunable_layers(q).values())
    assert len(torch.unique(q.rnn.weight_ih_l1[0])) <= 15  # the RNN computes with 4-bit rows
    assert input_quantizer(q.rnn).enabled  # the sequence entering the RNN is quantized (its hidden state is not)
    save_compressed(q, tmp_path / "rnn.tshrink")
    torch.manual_seed(1)
    loaded = load_compressed(tmp_path / "rnn.tshrink", model=Recurrent(cell))
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


def test_attention_with_separate_projections_quantizes_them_and_its_inputs(tmp_path):
    torch.manual_seed(0)
    model = CrossAttention().eval()
    x = torch.randn(3, 5, 8)
    assert set(prunable_layers(model)) == {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
                                           "attn.out_proj"}  # fmt: skip
    q = _quiet(lambda: quantize_(model, QuantConfig(bits=4)))
    calibrate_(q, [x])
    fq = input_quantizer(q.attn)
    seen = []
    fq.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    with torch.no_grad():
        out = q(x)
    assert seen == [8, 4]  # query once, key and value (one tensor) once: the three inputs are quantized
    save_compressed(q, tmp_path / "attn.tshrink")
    loaded = load_compressed(tmp_path / "attn.tshrink", model=CrossAttention())
    for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        assert torch.equal(getattr(loaded.attn, name), getattr(q.attn, name))  # the very values
    assert input_quantizer(loaded.attn).scale == fq.scale
    with torch.no_grad():  # the same values through attention's kernels: equal to float rounding (here the
        assert torch.allclose(loaded(x), out, rtol=0, atol=1e-6)  # last bit moved with the weights' addresses)


def test_an_embedding_is_quantized_per_row_and_its_indices_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(24, 2))
    with pytest.warns(UserWarning, match="0: input not quantized: an embedding's input is integer indices"):
        q = quantize_(model, QuantConfig(bits=2))
    assert input_quantizer(q[0]) is None
    rows = q[0].weight.detach()
    assert all(len(torch.unique(r)) <= 3 for r in rows)  # ternary codes, one scale per row
    assert weight_quantizer(q[0]).scale.numel() == 20


class Gated(nn.Module):
    """A layer of a user's own: two raw weights and no Linear inside."""

    def __init__(self) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(8, 4))
        self.w_gate = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w_in.T) * torch.sigmoid(x @ self.w_gate.T)


def test_a_registered_kind_is_compressed_like_a_built_in_one(tmp_path):
    model = nn.Sequential(Gated(), nn.Linear(8, 2))
    assert set(skipped_layers(model)) == {"0.w_in", "0.w_gate"}  # unknown: left in float, and said so
    kind = register_layer_kind(Gated, ["w_in", "w_gate"])
    try:
        assert layer_kind(model[0]) is kind and skipped_layers(model) == {}
        x = torch.randn(5, 4)
        q = _quiet(lambda: codebook(model, None, CodebookConfig(3, act_bits=None), train=None, log=None).model)
        assert len(torch.unique(q[0].w_gate)) <= 8
        header = save_compressed(q, tmp_path / "g.tshrink")
        assert {t["name"]: t["encoding"] for t in header["tensors"]}["0.w_in"] == "codebook"
        with torch.no_grad():
            assert torch.equal(load_compressed(tmp_path / "g.tshrink", model=nn.Sequential(Gated(), nn.Linear(8, 2)))(x),
                               q(x))  # fmt: skip
    finally:
        unregister_layer_kind(kind)
    assert layer_kind(model[0]) is None


def test_register_layer_kind_refuses_what_is_not_a_kind():
    with pytest.raises(ConfigError, match="not an nn.Module class"):
        register_layer_kind(int)
    with pytest.raises(ConfigError, match="attribute names"):
        register_layer_kind(Gated, "w_in")
    with pytest.raises(ConfigError, match="input_args"):
        register_layer_kind(Gated, ["w_in"], input_args=-1)


def test_a_module_reached_under_two_names_with_its_input_quantized_round_trips(tmp_path):
    shared = nn.Linear(6, 6)
    torch.manual_seed(0)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(6, 2)).eval()
    x = torch.randn(8, 6)
    q = _quiet(lambda: ptq(model, [x], QuantConfig(bits=8)).model)
    header = save_compressed(q, tmp_path / "m.tshrink")
    assert [t["name"] for t in header["tensors"]] == ["0.bias", "0.weight", "4.bias", "4.weight"]  # nothing else
    shared2 = nn.Linear(6, 6)
    loaded = load_compressed(tmp_path / "m.tshrink", model=nn.Sequential(shared2, nn.ReLU(), shared2, nn.ReLU(),
                                                                          nn.Linear(6, 2)))  # fmt: skip
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))


def test_mixed_precision_plans_a_width_per_weight_of_an_rnn(tmp_path):
    from torchshrink import Task
    from torchshrink.recipes.mixed_precision import plan_mixed_precision
    from torchshrink.recipes.mixed_uniform import plan_uniform_mixed_precision

    torch.manual_seed(0)
    model = Recurrent().eval()
    x, y = torch.randn(32, 5, 6), torch.randint(0, 3, (32,))
    task = Task(train=[(x, y)], val=[(x, y)])
    names = set(prunable_layers(model))
    uniform = _quiet(lambda: plan_uniform_mixed_precision(model, task, 9000, (2, 4, 8), progress=False, log=None))
    assert set(uniform.bits) == names  # one width per weight, each gate matrix on its own
    q = _quiet(lambda: ptq(model, [x], QuantConfig(bits=8, layer_bits=uniform.bits)).model)
    assert {n: weight_quantizer(w.module, w.attr).spec.bits for n, w in prunable_layers(q).items()} == uniform.bits
    books = _quiet(lambda: plan_mixed_precision(model, task, 6000, (2, 4), progress=False, log=None))
    assert set(books.bits) == names
