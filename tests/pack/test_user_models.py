"""Compressed files of models that are not in the registry: save -> load into a fresh instance, strict
fitting, tied weights stored once. Tiny models with random weights; no data needed."""

from __future__ import annotations

import copy
import json
import struct
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.models import build_model
from torchshrink.pack import (
    FormatError,
    encode_compressed,
    inspect_compressed,
    load_compressed,
    read_compressed,
    save_compressed,
)
from torchshrink.quant import QuantConfig, fold_batchnorm, quantize_
from torchshrink.quant.apply import calibrated_weight_quantizer
from torchshrink.recipes import codebook, ptq
from torchshrink.recipes.quantize import CodebookConfig

WEIGHT_ONLY = QuantConfig(bits=8, quantize_inputs=False)
pytestmark = pytest.mark.filterwarnings("ignore:quantize_ left:UserWarning")  # the tied LM's float embedding


class Block(nn.Module):
    """A ResNet basic block: two 3x3 conv + BatchNorm, and a 1x1 conv + BatchNorm shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))  # (N, 3, 16, 16) -> (N, 2w, 8, 8)
        return self.fc(x.mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv1d(2, channels, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3)
        self.head = nn.Linear(channels, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (N, 2, 32) -> (N, C, 32)
        return self.head(torch.relu(self.conv2(x)).mean(2))


class NormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class TinyLM(nn.Module):
    """Embedding -> Linear -> ReLU -> an output layer that shares the embedding's weight (when ``tie``)."""

    def __init__(self, vocab: int = 50, dim: int = 16, tie: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.embed(tokens))))  # (B, T) -> (B, T, vocab)


NETS = {
    "resnet": (TinyResNet, (4, 3, 16, 16)),
    "conv1d": (Conv1dNet, (4, 2, 32)),
    "layernorm_mlp": (NormMLP, (4, 20)),
}


@torch.no_grad()
def _random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, and random BatchNorm / LayerNorm parameters and statistics (so that folding matters)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.3)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _assert_same_predictions(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        la, lb = a(x), b(x)
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
    assert torch.allclose(la, lb, rtol=0, atol=1e-5)


def _quantized(kind: str, model: nn.Module) -> nn.Module:
    return ptq(model, None, WEIGHT_ONLY).model if kind == "ptq8" else codebook(model, None, CodebookConfig(4), log=None, train=None).model


@pytest.mark.parametrize("kind", ["ptq8", "codebook4"])
@pytest.mark.parametrize("net", list(NETS))
def test_unregistered_model_round_trips_into_a_fresh_instance(tmp_path, net, kind):
    cls, shape = NETS[net]
    q = _quantized(kind, _random(cls()))
    path = tmp_path / "m.tshrink"
    header = save_compressed(q, path)
    assert header["version"] == 3 and "aliases" not in header
    assert header["model"] == {"name": None, "class": f"{cls.__module__}.{cls.__qualname__}", "batchnorm_folded": True}
    fresh = _random(cls(), seed=1)  # other weights: everything must come from the file
    loaded = load_compressed(path, model=fresh)
    assert loaded is fresh and not loaded.training
    _assert_same_predictions(q, loaded, torch.randn(shape))
    entries = {t["name"]: t for t in header["tensors"]}
    assert not any(".bn" in name or name.startswith("bn") for name in entries)  # every BatchNorm was folded
    if net == "layernorm_mlp":
        assert entries["norm.weight"]["encoding"] == entries["norm.bias"]["encoding"] == "float"


def test_a_registered_file_also_loads_into_a_given_instance(tmp_path):
    q = ptq(_random(build_model("cnn_tiny")), None, WEIGHT_ONLY).model
    path = tmp_path / "m.tshrink"
    save_compressed(q, path, "cnn_tiny")
    _assert_same_predictions(q, load_compressed(path, model=build_model("cnn_tiny")), torch.randn(3, 1, 28, 28))


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("strict") / "resnet.tshrink"
    save_compressed(ptq(_random(TinyResNet()), None, WEIGHT_ONLY).model, path)
    return path


def test_another_architecture_is_refused_naming_missing_and_unexpected_tensors(resnet_file):
    with pytest.raises(FormatError) as info:
        load_compressed(resnet_file, model=NormMLP())
    message = str(info.value)
    assert message.startswith(f"{resnet_file}: does not fit this model")
    assert "saved from class" in message and "TinyResNet" in message
    assert "missing tensors ['fc1.weight', 'fc1.bias', 'norm.weight'" in message
    unexpected = message.partition("unexpected ")[2]
    assert "'stem.weight'" in unexpected and "'stem.bias'" in unexpected and "more" in unexpected  # a few only


def test_a_shape_mismatch_is_refused_and_nothing_is_loaded(resnet_file):
    narrow = _random(TinyResNet(width=4))
    before = copy.deepcopy(narrow)
    with pytest.raises(
        FormatError, match=r"tensor 'stem.weight' has shape \[8, 3, 3, 3\] in the file but \[4, 3, 3, 3\]"
    ):
        load_compressed(resnet_file, model=narrow)
    folded = fold_batchnorm(before).state_dict()  # folding is all that happened to the model
    assert all(torch.equal(t, folded[k]) for k, t in narrow.state_dict().items())


def test_an_unregistered_file_without_a_model_says_how_to_load_it(resnet_file):
    message = (
        rf"saved from an unregistered model \(class {TinyResNet.__module__}\.TinyResNet\); pass the model: "
        r"load_compressed\(path, model=MyModel\(\.\.\.\)\)"
    )
    with pytest.raises(FormatError, match=message):
        load_compressed(resnet_file)


def test_batchnorm_left_unfolded_is_refused_at_save_time():
    model = quantize_(_random(TinyResNet()), WEIGHT_ONLY)  # fake quant attached without folding first
    with pytest.raises(ConfigError, match=r"fold_batchnorm\(model\) before quantizing"):
        encode_compressed(model)


@pytest.mark.filterwarnings("ignore:fold_batchnorm left:UserWarning")
def test_an_unfoldable_batchnorm_travels_as_floats(tmp_path):
    """Linear -> BatchNorm1d does not fold: its statistics (and integer num_batches_tracked) are stored as is."""
    net = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    net[1].num_batches_tracked.fill_(12345)
    q = ptq(_random(net), None, WEIGHT_ONLY).model
    path = tmp_path / "m.tshrink"
    save_compressed(q, path)
    fresh = _random(nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)), seed=2)
    loaded = load_compressed(path, model=fresh)
    _assert_same_predictions(q, loaded, torch.randn(5, 10))
    assert int(loaded[1].num_batches_tracked) == 12345


def _tied_lm(filter_fn) -> nn.Module:
    torch.manual_seed(0)
    return quantize_(TinyLM(), WEIGHT_ONLY, filter_fn)


def test_tied_weights_are_stored_once_and_survive_save_and_load(tmp_path):
    model = _tied_lm(lambda m, name: isinstance(m, nn.Linear) and name != "head")  # embedding and head stay float
    path = tmp_path / "lm.tshrink"
    header = save_compressed(model, path)
    assert header["aliases"] == {"head.weight": "embed.weight"}
    assert [t["name"] for t in header["tensors"]] == ["embed.weight", "mix.bias", "mix.weight"]
    tokens = torch.randint(0, 50, (4, 7))
    torch.manual_seed(1)
    loaded = load_compressed(path, model=TinyLM())
    assert loaded.head.weight is loaded.embed.weight  # still one tensor
    _assert_same_predictions(model, loaded, tokens)
    untied = load_compressed(path, model=TinyLM(tie=False))  # a model that does not tie them gets both filled
    assert untied.head.weight is not untied.embed.weight
    _assert_same_predictions(model, untied, tokens)


def test_a_tied_weight_quantized_on_one_side_only_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="head.weight is the same tensor as embed.weight, which quantize_ leaves alone"):
        _tied_lm(lambda m, name: isinstance(m, nn.Linear))  # head quantized, embedding float
    torch.manual_seed(0)
    model = TinyLM()  # the same, by hand: the writer still refuses it
    parametrize.register_parametrization(model.head, "weight", calibrated_weight_quantizer(model.head.weight, 8))
    with pytest.raises(ConfigError, match="embed.weight and head.weight are one tied tensor") as info:
        save_compressed(model, tmp_path / "lm.tshrink")
    assert "quantize neither" in str(info.value) and "untie" in str(info.value)
    assert not (tmp_path / "lm.tshrink").exists()


def test_a_tied_weight_quantized_alike_on_both_sides_is_stored_once(tmp_path):
    model = _tied_lm(lambda m, name: name in ("embed", "head"))  # the same tensor, the same quantizer settings
    path = tmp_path / "lm.tshrink"
    header = save_compressed(model, path)
    assert header["aliases"] == {"head.weight": "embed.weight"}
    assert {t["name"]: t["encoding"] for t in header["tensors"]}["embed.weight"] == "uniform"
    _assert_same_predictions(model, load_compressed(path, model=TinyLM()), torch.randint(0, 50, (4, 7)))


def test_a_module_used_twice_is_stored_once(tmp_path):
    shared = nn.Linear(6, 6)
    q = ptq(_random(nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(6, 2))), None, WEIGHT_ONLY).model
    path = tmp_path / "m.tshrink"
    header = save_compressed(q, path)
    assert header["aliases"] == {"2.weight": "0.weight", "2.bias": "0.bias"}
    summary, rows = inspect_compressed(path)  # what `torchshrink inspect` prints: aliases, no row of their own
    assert summary["aliases"] == header["aliases"]
    assert [r.name for r in rows] == ["0.bias", "0.weight", "4.bias", "4.weight"]
    shared = nn.Linear(6, 6)
    loaded = load_compressed(path, model=nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(6, 2)))
    assert loaded[0] is loaded[2]
    _assert_same_predictions(q, loaded, torch.randn(5, 6))


def _edited(path, change) -> bytes:
    """The file with its header decoded, changed, and stored back as plain JSON."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[8:16])
    head = blob[16 : 16 + n]
    header = change(json.loads(head if head[:1] == b"{" else zlib.decompress(head)))
    new = json.dumps(header).encode()
    return blob[:8] + struct.pack("<Q", len(new)) + new + blob[16 + n :]


@pytest.mark.parametrize("aliases, message", [
    ({"head.weight": "nowhere"}, r"aliases.head.weight is 'nowhere', expected the name of a tensor entry"),
    ({"mix.bias": "embed.weight"}, "for a name that is not one itself"),
    (["head.weight"], r"aliases is \['head.weight'\], expected a JSON object"),
])  # fmt: skip
def test_bad_aliases_are_refused(tmp_path, aliases, message):
    path = tmp_path / "lm.tshrink"
    save_compressed(_tied_lm(lambda m, name: name == "mix"), path)
    bad = tmp_path / "bad.tshrink"
    bad.write_bytes(_edited(path, lambda h: h | {"aliases": aliases}))
    with pytest.raises(FormatError, match=message):
        read_compressed(bad)


def test_a_tensor_named_twice_is_refused(tmp_path):
    path = tmp_path / "lm.tshrink"
    save_compressed(_tied_lm(lambda m, name: name == "mix"), path)
    bad = tmp_path / "bad.tshrink"
    bad.write_bytes(_edited(path, lambda h: h | {"tensors": h["tensors"] + h["tensors"][:1]}))
    with pytest.raises(FormatError, match=r"name is 'embed.weight', expected a name no other entry has"):
        read_compressed(bad)


def test_model_args_without_a_model_name_are_refused():
    with pytest.raises(ConfigError, match="model_args"):
        encode_compressed(ptq(_random(NormMLP()), None, WEIGHT_ONLY).model, None, {"hidden": 3})
