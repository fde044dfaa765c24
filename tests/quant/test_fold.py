"""BatchNorm folding follows the traced graph: exactly the right BatchNorms fold, outputs stay the same."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.models import ShrinkCNN
from torchshrink.quant.fold import batchnorm_pairs, fold_batchnorm

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ---- tiny models, one data-flow shape each ----


class LateConvs(nn.Module):
    """Convs declared after (and interleaved with) their BatchNorms: registration order pairs conv2 -> bn1."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(x))


class ConvReluBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.relu(self.conv(x)))


class Residual(nn.Module):
    """``bn(conv(x) + x)``, inside a Sequential so names are qualified."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + x)


class BnFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class SharedPair(nn.Module):
    """The same conv -> bn pair called twice: every call satisfies the rule, so it folds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.bn(self.conv(2 * x))


class ConvTwiceOnceBare(nn.Module):
    """The conv is called twice but only one call feeds the BatchNorm: folding would change the other."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(-x)


class BnTwiceTwoConvs(nn.Module):
    """One BatchNorm called after two different convs: it cannot fold into both."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3)
        self.conv_b = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_a(x)) + self.bn(self.conv_b(x))


class OutputReused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) * torch.sigmoid(y) * torch.tensor(2.0)  # the constant makes fx stash a tensor


class DataDependent(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        if x.sum() > 0:
            x = -x
        return self.bn2(self.conv2(x))


class LinearBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def _seq(*layers: nn.Module) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*copy.deepcopy(layers))


# (name, factory, input shape, BatchNorms expected to fold)
CASES = [
    ("late_convs", LateConvs, (2, 3, 8, 8), {"bn1", "bn2"}),
    ("conv_relu_bn", ConvReluBn, (2, 3, 8, 8), set()),
    ("residual", lambda: nn.Sequential(Residual()), (2, 4, 8, 8), set()),
    ("bn_then_conv", BnFirst, (2, 3, 8, 8), set()),
    ("conv1d", _seq(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.ReLU()), (2, 3, 16), {"1"}),
    ("conv3d", _seq(nn.Conv3d(2, 3, 3, bias=False), nn.BatchNorm3d(3)), (2, 2, 5, 5, 5), {"1"}),
    ("depthwise", _seq(nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4)), (2, 4, 8, 8), {"1"}),
    ("grouped", _seq(nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (2, 4, 8, 8), {"1"}),
    ("transposed", _seq(nn.ConvTranspose2d(3, 5, 3, stride=2), nn.BatchNorm2d(5)), (2, 3, 6, 6), {"1"}),
    ("grouped_transposed", _seq(nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)), (2, 4, 6, 6), set()),
    ("no_running_stats", _seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), (4, 3, 8, 8), set()),
    ("shared_pair", SharedPair, (2, 3, 8, 8), {"bn"}),
    ("conv_twice_once_bare", ConvTwiceOnceBare, (2, 3, 8, 8), set()),
    ("bn_twice_two_convs", BnTwiceTwoConvs, (2, 3, 8, 8), set()),
    ("output_reused", OutputReused, (2, 3, 8, 8), set()),
    ("data_dependent", DataDependent, (2, 3, 8, 8), set()),
    ("linear_bn", LinearBn, (6, 5), set()),
]


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, running statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
                module.weight.normal_(0, 0.5)
                if module.bias is not None:
                    module.bias.normal_()
            if isinstance(module, _NORMS):
                if module.running_mean is not None:
                    module.running_mean.normal_()
                    module.running_var.uniform_(0.2, 3.0)
                if module.affine:
                    module.weight.normal_(1, 0.5)
                    module.bias.normal_()
    return model.eval()


def _norm_names(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, _NORMS)}


def _warned_names(caught: list[warnings.WarningMessage]) -> set[str]:
    """Layer names listed by fold_batchnorm's one warning (lines ``  name, name: reason``)."""
    assert len(caught) == 1, [str(w.message) for w in caught]
    lines = str(caught[0].message).splitlines()[1:]
    return {name for line in lines for name in line.strip().partition(": ")[0].split(", ")}


@pytest.mark.parametrize(("name", "factory", "shape", "folded"), CASES, ids=[c[0] for c in CASES])
def test_fold_follows_the_graph(name: str, factory: Callable[[], nn.Module], shape: tuple, folded: set[str]) -> None:
    """Exactly the expected BatchNorms become Identity, the rest are listed in one warning, outputs agree."""
    model = _randomized(factory())
    x = torch.randn(shape)
    original = copy.deepcopy(model)
    norms = _norm_names(model)
    pairs, skipped = batchnorm_pairs(model)
    assert {bn for _, bn in pairs} == folded
    assert set(skipped) == norms - folded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fold_batchnorm(model)
    assert result is model and type(model) is type(original)  # the user's model, not a GraphModule
    modules = dict(model.named_modules())
    assert {n for n in norms if isinstance(modules[n], nn.Identity)} == folded
    assert _norm_names(model) == norms - folded
    if folded == norms:
        assert not caught
    else:
        assert _warned_names(caught) == norms - folded
    with torch.no_grad():
        assert torch.allclose(original(x), model(x), atol=1e-5, rtol=1e-4)


def test_names_and_attributes_unchanged() -> None:
    """Folding only drops BatchNorm tensors and adds conv biases; tracing leaves no ``_tensor_constant``."""
    model = _randomized(nn.Sequential(OutputReused(), nn.Conv2d(4, 2, 1, bias=False), nn.BatchNorm2d(2)))
    keys = set(model.state_dict())
    with pytest.warns(UserWarning, match=r"0\.bn: its convolution's output is also used elsewhere"):
        fold_batchnorm(model)
    assert set(model.state_dict()) == (keys - {k for k in keys if k.startswith("2.")}) | {"1.bias"}
    assert not [name for name in vars(model) if name.startswith("_tensor_constant")]
    assert not [name for name in vars(model[0]) if name.startswith("_tensor_constant")]


def test_reasons_name_the_cause() -> None:
    """Each reason says what the BatchNorm follows or why the trace failed."""
    assert batchnorm_pairs(ConvReluBn())[1] == {"bn": "follows relu (ReLU), not a convolution"}
    assert batchnorm_pairs(nn.Sequential(Residual()))[1] == {"0.bn": "follows 0.add, not a convolution"}
    assert "Linear -> BatchNorm is not folded" in batchnorm_pairs(LinearBn())[1]["bn"]
    reasons = batchnorm_pairs(DataDependent())[1]
    assert set(reasons) == {"bn", "bn2"}
    assert all(r.startswith("the model cannot be traced by torch.fx: ") for r in reasons.values())


def _fold_in_registration_order(model: nn.Module) -> nn.Module:
    """The fold this module replaced (pairs by registration order), kept here as the bit-exact reference."""
    with torch.no_grad():
        named = [(n, m) for n, m in model.named_modules() if n]
        for (conv_name, conv), (bn_name, bn) in zip(named, named[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn_name.rpartition(".")[0] != conv_name.rpartition(".")[0]:
                continue
            factor = (
                bn.weight / torch.sqrt(bn.running_var + bn.eps)
                if bn.affine
                else 1 / torch.sqrt(bn.running_var + bn.eps)
            )
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * factor + shift
            conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(new_bias)
            parent_name, _, child = bn_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return model


@pytest.mark.parametrize("channels", [(4, 8, 16), ((4, 6), 8)])
def test_shrinkcnn_bit_identical_to_registration_order(channels: tuple) -> None:
    """On the default model the graph-based fold gives the old pairs and bit-identical tensors."""
    model = _randomized(ShrinkCNN(channels=channels, hidden=16))
    reference = _fold_in_registration_order(copy.deepcopy(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every BatchNorm folds: no warning
        fold_batchnorm(model)
    new, old = model.state_dict(), reference.state_dict()
    assert list(new) == list(old)
    assert all(torch.equal(new[k], old[k]) for k in new)
    assert [type(m) for m in model.modules()] == [type(m) for m in reference.modules()]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def test_parametrized_conv_raises_config_error() -> None:
    """A masked conv must be made permanent first; nothing is changed before the error."""
    model = _randomized(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    parametrize.register_parametrization(model[2], "weight", _Mask(torch.ones(4, 4, 1, 1)))
    assert [pair for pair, _ in [batchnorm_pairs(model)]][0] == [("0", "1"), ("2", "3")]
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"\b2\b.*make_permanent"):
        fold_batchnorm(model)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[3], nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
