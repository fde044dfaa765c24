"""Layer selection on models other than torchshrink's own CNN: convolutions of every kind, embeddings, attention,
RNNs, norms, and weights of no known kind."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchshrink.errors import ConfigError
from torchshrink.layers import FILTER_REJECTED, default_filter, prunable_layers, skipped_layers
from torchshrink.pruning import prune_
from torchshrink.pruning.config import PruneConfig
from torchshrink.quant import QuantConfig, calibrate_, input_quantizer, quantize_, weight_quantizer


class Table(nn.Module):
    """A module holding a raw 2-D parameter of no known kind: it stays float, and is said so."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(4, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.table.T


TABLE_REASON = "Table is not a layer kind torchshrink knows; left in float (see register_layer_kind)"

# --- tiny models, random weights ------------------------------------------------------------------------------


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 3)
        self.conv2 = nn.Conv1d(8, 8, 3, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # (B, 8, L - 4)
        return self.fc(x.mean(-1))


class TransposedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 4, 3, stride=2)  # (B, 1, 8, 8) -> (B, 4, 3, 3)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2)  # -> (B, 6, 7, 7)
        self.fc = nn.Linear(6 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.up(torch.relu(self.down(x)))).flatten(1))


class EncoderNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 6)
        return self.head(self.encoder(self.embed(x)).mean(1))


def _mlp_with_layernorm() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))


def _depthwise() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),  # pointwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


# name -> (constructor, one input batch of shape (B, ...), layer names that must be accepted)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], set[str]]] = {
    "conv1d": (Conv1dNet, lambda b: torch.randn(b, 3, 12), {"conv1", "conv2", "fc"}),
    "conv_transpose": (TransposedNet, lambda b: torch.randn(b, 1, 8, 8), {"down", "up", "fc"}),
    "transformer": (
        EncoderNet,
        lambda b: torch.randn(b, 5, 6),
        {"embed", "encoder.self_attn.in_proj_weight", "encoder.self_attn.out_proj", "encoder.linear1",
         "encoder.linear2", "head"},
    ),
    "mlp_layernorm": (_mlp_with_layernorm, lambda b: torch.randn(b, 3, 4), {"1", "4"}),
    "depthwise": (_depthwise, lambda b: torch.randn(b, 3, 6, 6), {"0", "3", "5", "8"}),
}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]()


def _quiet(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# --- which layers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv1d(2, 4, 3),
        nn.Conv2d(4, 8, 3, groups=2),
        nn.Conv2d(4, 4, 3, groups=4),
        nn.Conv3d(2, 4, 3),
        nn.ConvTranspose1d(2, 4, 3),
        nn.ConvTranspose2d(2, 4, 3),
        nn.ConvTranspose3d(2, 4, 3),
        nn.Linear(3, 4),
        nn.modules.linear.NonDynamicallyQuantizableLinear(3, 4),
        nn.Embedding(5, 3),
        nn.EmbeddingBag(5, 3),
        nn.MultiheadAttention(8, 2),
        nn.LSTM(4, 8),
        nn.GRU(4, 8),
        nn.RNN(4, 8),
    ],
    ids=lambda m: type(m).__name__,
)
def test_default_filter_accepts_every_layer_of_a_known_kind(module):
    assert default_filter(module, "layer")


@pytest.mark.parametrize("module", [nn.LayerNorm(4), nn.BatchNorm2d(4), nn.ReLU(), Table()])
def test_default_filter_rejects_everything_else(module):
    assert not default_filter(module, "layer")


@pytest.mark.parametrize("name", list(MODELS))
def test_every_layer_of_a_known_kind_is_prunable(name):
    assert set(prunable_layers(_build(name))) == MODELS[name][2]


def test_no_prunable_layer_names_the_module_types_it_saw():
    model = nn.Sequential(Table(), nn.LayerNorm(4))
    with pytest.raises(ConfigError, match="no prunable layer.*LayerNorm, Sequential, Table"):
        prunable_layers(model)


def test_skipped_layers_give_a_reason_for_every_weight_left_in_float():
    """Every parameter of 2+ dims that no accepted layer covers is listed; 1-D ones (norms, biases) never."""

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(10, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)  # packed in_proj_weight
            self.cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)  # separate q/k/v_proj_weight
            self.norm = nn.LayerNorm(8)
            self.bn = nn.BatchNorm1d(8)
            self.conv = nn.Conv1d(8, 8, 1)
            self.fc = nn.Linear(8, 2)
            self.rnn = nn.LSTM(8, 8, num_layers=2, bidirectional=True, proj_size=4)
            self.lookup = Table()
            self.scale = nn.Parameter(torch.ones(2, 2))  # of the model itself

    model = Mixed()
    assert skipped_layers(model) == {
        "scale": "Mixed is not a layer kind torchshrink knows; left in float (see register_layer_kind)",
        "lookup.table": TABLE_REASON,
    }
    covered = {w.key for w in prunable_layers(model).values()}
    assert {"cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight", "rnn.weight_hr_l1_reverse"} <= covered
    assert "attn.in_proj_weight" in covered and "tokens.weight" in covered
    assert skipped_layers(model, lambda m, n: n != "conv" and default_filter(m, n))["conv.weight"] == FILTER_REJECTED


def test_masked_and_quantized_weights_still_count_as_covered():
    model = _build("transformer")
    _quiet(lambda: prune_(model, PruneConfig(0.5)))
    _quiet(lambda: quantize_(model, QuantConfig(bits=4)))
    assert skipped_layers(model) == {}


# --- pruning on every model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer", "lamp"])
@pytest.mark.parametrize("name", list(MODELS))
def test_prune_reaches_the_requested_sparsity_on_every_accepted_layer(name, scope):
    model = _build(name)
    amount = 0.6
    masks = _quiet(lambda: prune_(model, PruneConfig(amount, scope)))
    assert set(masks) == MODELS[name][2]
    layers = prunable_layers(model)
    zeros = {n: int((layers[n].tensor == 0).sum()) for n in masks}
    sizes = {n: layers[n].tensor.numel() for n in masks}
    if scope == "layer":
        assert zeros == {n: round(amount * sizes[n]) for n in masks}
    else:
        assert sum(zeros.values()) == round(amount * sum(sizes.values()))
    out = model(MODELS[name][1](2))
    assert bool(torch.isfinite(out).all())


def test_prune_warns_once_listing_the_weights_it_skips():
    model = nn.Sequential(Table(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="prune_ left 1 weight") as record:
        prune_(model, PruneConfig(0.3, "layer"))
    skipped = [w for w in record if "untouched" in str(w.message)]
    assert len(skipped) == 1
    assert "0.table: " + TABLE_REASON in str(skipped[0].message)
    assert skipped[0].filename == __file__  # points at the caller


def test_prune_is_silent_when_nothing_is_skipped_or_only_by_choice():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune_(_build("depthwise"), PruneConfig(0.3, "layer"))
        prune_(_build("conv1d"), PruneConfig(0.3, "layer"), lambda m, n: n != "fc" and default_filter(m, n))


# --- quantization on every model ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_quantize_and_calibrate_with_tensors_or_input_target_batches(name):
    make_input = MODELS[name][1]
    torch.manual_seed(1)
    tensors = [make_input(8) for _ in range(3)]
    dataset = TensorDataset(torch.cat(tensors), torch.zeros(24, dtype=torch.long))
    float_model = _build(name)
    for batches in (tensors, [(x, torch.zeros(len(x))) for x in tensors], DataLoader(dataset, batch_size=8)):
        q = _quiet(lambda: quantize_(copy.deepcopy(float_model), QuantConfig(bits=4)))  # noqa: B023
        layers = prunable_layers(q)
        assert all(weight_quantizer(w.module, w.attr) is not None for w in layers.values())
        calibrate_(q, batches)
        for n, w in layers.items():
            fq = input_quantizer(w.module)
            if n.endswith("self_attn.out_proj"):
                assert fq is None  # attention never calls it as a module: no hook would run
            else:
                assert fq is not None and fq.enabled and not fq.observing
        out = q(tensors[0])
        assert bool(torch.isfinite(out).all())
        assert not torch.equal(out, float_model(tensors[0]))  # really quantized


def test_quantize_warns_once_about_the_attention_input_it_cannot_quantize():
    with pytest.warns(UserWarning, match="quantize_ left 1") as record:
        quantize_(_build("transformer"), QuantConfig(bits=4))
    messages = [str(w.message) for w in record if "untouched" in str(w.message)]
    assert len(messages) == 1
    assert "encoder.self_attn.out_proj: input not quantized" in messages[0]
