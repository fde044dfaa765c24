from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchshrink.errors import ConfigError
from torchshrink.measure import count_macs
from torchshrink.models import MLP, ShrinkCNN, parameter_count
from torchshrink.pruning.config import StructuredConfig
from torchshrink.pruning.structured import filter_scores, structured_prune_, structured_report

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval mode and non-trivial BatchNorm statistics, as after training; running means are all distinct."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, NORMS):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _randomised_cnn(seed: int = 0) -> ShrinkCNN:
    torch.manual_seed(seed)
    return _randomise(ShrinkCNN(channels=((8, 8), 16, 32), hidden=24), seed)


def _masked_like(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """The original model with each removed channel forced to zero at every BatchNorm it passes.

    Which channels went is read off the pruned model (a kept channel keeps its distinct running mean);
    gamma = beta = 0 makes a channel exactly 0 after an eval-mode BatchNorm, whatever came before.
    """
    reference = copy.deepcopy(original)
    pruned_modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, bn in reference.named_modules():
            if isinstance(bn, NORMS):
                match = pruned_modules[name].running_mean[:, None] == bn.running_mean[None, :]  # (kept, before)
                assert (match.sum(dim=1) == 1).all()
                removed = ~match.any(dim=0)
                bn.weight[removed] = 0
                bn.bias[removed] = 0
    return reference


def _assert_prunes_like_masking(model: nn.Module, x: torch.Tensor, amount: float = 0.5) -> dict[str, tuple[int, int]]:
    original = copy.deepcopy(model)
    changes = structured_prune_(model, StructuredConfig(amount))
    assert any(after < before for before, after in changes.values())
    assert parameter_count(model) < parameter_count(original)
    with torch.no_grad():
        assert torch.allclose(model(x), _masked_like(original, model)(x), atol=1e-5)
    return changes


# --- models --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:  # a projection on the skip path
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + skip)


class SeparableBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)  # with bias
        self.bn_dw = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_dw(self.depthwise(x)).relu()
        return F.relu6(self.bn_pw(self.pointwise(x)))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.sep = SeparableBlock(16, 24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sep(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class CatNet(nn.Module):
    """Two conv branches concatenated into a conv; a flattened (C, 4, 4) map into the classifier."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.b = nn.Sequential(nn.Conv2d(3, 10, 1), nn.BatchNorm2d(10))
        self.c = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(torch.cat([F.relu(self.a(x)), self.b(x) * 0.5], dim=1))
        y = F.max_pool2d(y, 2)  # (N, 8, 8, 8) -> (N, 8, 4, 4)
        return self.fc(y.view(y.size(0), -1))


class TransposeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.bn_up = nn.BatchNorm2d(6)
        self.conv3 = nn.Sequential(nn.Conv2d(6, 12, 3, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv3(F.relu(self.bn_up(self.up(self.conv1(x))))))


class SqueezeExcite(nn.Module):
    """A conv's channels scaled by a gate computed from themselves: ``x * sigmoid(fc2(relu(fc1(pool(x)))))``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc1 = nn.Sequential(nn.Conv2d(16, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Conv2d(4, 16, 1), nn.BatchNorm2d(16), nn.Sigmoid())
        self.out = nn.Sequential(nn.Conv2d(16, 8, 3), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x * self.fc2(self.fc1(F.adaptive_avg_pool2d(x, 1)))
        return self.fc(self.out(x).mean((2, 3)))


class NoHead(nn.Module):
    """A residual block whose output is the model output: those channels must all stay."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.block = BasicBlock(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 8, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 12, 3, bias=False)
        self.bn2 = nn.BatchNorm1d(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv2(F.gelu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean(dim=-1))  # (N, 12, L) -> (N, 12)


# --- the function survives pruning ---------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0.25, 0.5])
def test_residual_net_prunes_like_masking(amount):
    """Pruning a ResNet-style net = zeroing the same channels in the original, skips and depthwise included."""
    torch.manual_seed(1)
    model = _randomise(TinyResNet())
    changes = _assert_prunes_like_masking(model, torch.randn(4, 3, 16, 16), amount)
    assert list(changes) == [
        "stem.0", "layer1.0.conv1", "layer1.1.conv1", "layer2.conv1", "layer2.conv2", "sep.pointwise",
    ]  # fmt: skip
    n = round(8 * (1 - amount))
    assert model.layer1[0].conv2.out_channels == model.layer1[1].conv2.out_channels == n  # merged with the stem
    assert model.layer2.downsample[0].out_channels == model.sep.depthwise.groups == model.sep.depthwise.in_channels
    assert model.stem[0].padding_mode == "reflect" and model.stem[0].bias is not None
    assert model.fc.in_features == model.sep.pointwise.out_channels


def test_residual_groups_are_merged():
    groups = {g.label: g for g in structured_report(TinyResNet())}
    assert groups["stem.0"].producers == ["stem.0", "layer1.0.conv2", "layer1.1.conv2"]
    assert groups["layer2.conv2"].producers == ["layer2.conv2", "layer2.downsample.0"]
    assert {"sep.depthwise", "sep.bn_dw", "sep.pointwise"} <= set(groups["layer2.conv2"].layers)
    assert all(g.prunable for g in groups.values())


def test_concatenated_branches_prune_like_masking():
    torch.manual_seed(2)
    model = _randomise(CatNet())
    changes = _assert_prunes_like_masking(model, torch.randn(4, 3, 8, 8))
    assert changes == {"a.0": (6, 3), "b.0": (10, 5), "c.0": (8, 4)}
    assert model.c[0].in_channels == 8 and model.fc.in_features == 4 * 16


def test_conv_transpose_consumes_pruned_channels():
    torch.manual_seed(3)
    model = _randomise(TransposeNet())
    changes = _assert_prunes_like_masking(model, torch.randn(2, 3, 6, 6))
    assert changes == {"conv1.0": (8, 4), "conv3.0": (12, 6)}
    assert model.up.in_channels == 4 and model.up.out_channels == 6


def test_conv1d_prunes_like_masking():
    torch.manual_seed(4)
    _assert_prunes_like_masking(_randomise(Conv1dNet()), torch.randn(3, 2, 20))


def test_gate_multiplication_merges_groups():
    torch.manual_seed(8)
    model = _randomise(SqueezeExcite())
    assert structured_report(model)[0].producers == ["conv.0", "fc2.0"]
    changes = _assert_prunes_like_masking(model, torch.randn(2, 3, 8, 8))
    assert changes == {"conv.0": (16, 8), "fc1.0": (4, 2), "out.0": (8, 4)}


def test_weights_read_outside_their_layer_are_not_pruned():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.head(self.conv(x)).mean((2, 3)) @ self.conv.weight.flatten(1)

    reasons = [g.reasons for g in structured_report(Tied())]
    assert reasons == [
        ["conv's weights are also read directly (conv.weight)"],
        ["it reaches matmul() at node 'matmul', which is not understood"],
    ]


def test_model_output_channels_are_kept():
    torch.manual_seed(5)
    model = _randomise(NoHead())
    with pytest.warns(UserWarning, match=r"stem\.0 \(8 channels\): reaches the model output"):
        changes = _assert_prunes_like_masking(model, torch.randn(2, 3, 8, 8))
    assert changes == {"block.conv1": (8, 4)}
    assert model.block.conv2.out_channels == 8


def test_unknown_layers_are_skipped_and_reported():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8),
        nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )  # fmt: skip
    report = {g.label: g.reasons for g in structured_report(model)}
    assert report["0"] == [] and report["5"] == []
    assert report["3"] == ["it reaches 4 (GroupNorm), which is not understood"]
    with pytest.warns(UserWarning, match="GroupNorm"):
        _assert_prunes_like_masking(_randomise(model), torch.randn(2, 3, 10, 10))
    assert model[3].out_channels == 8


def test_hard_coded_reshape_is_not_guessed():
    class Lenet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 2 * 2, 2)

        def forward(self, x):
            return self.fc(self.conv(x).view(-1, 16))

    with pytest.raises(ConfigError, match=r"conv \(4 channels\): it reaches \.view\(\)"):
        structured_prune_(Lenet(), StructuredConfig(0.5))


# --- refused models --------------------------------------------------------------------------------------------


def test_untraceable_model_is_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    with pytest.raises(ConfigError, match="cannot trace Branchy.*control flow"):
        structured_prune_(Branchy(), StructuredConfig(0.5))


def test_grouped_conv_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="1: a grouped convolution"):
        structured_prune_(model, StructuredConfig(0.5))


def test_models_without_a_chain_are_rejected():
    with pytest.raises(ConfigError, match="no Conv1d"):
        structured_prune_(MLP(), StructuredConfig(0.5))
    with pytest.raises(ConfigError, match="must be in"):
        structured_prune_(_randomised_cnn(), StructuredConfig(1.0))
    with pytest.raises(ConfigError, match="no prunable channels: 0 .*model output"):
        structured_prune_(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), StructuredConfig(0.5))


# --- ShrinkCNN: the study's model, pruned exactly as before ------------------------------------------------------


def _chain_reference(model: ShrinkCNN, amount: float) -> dict[str, torch.Tensor]:
    """The state dict the pre-graph chain algorithm (git 956cac1) produced, computed on tensors alone.

    Convs are pruned in order; each one's scores are its L1 filter norms over the input channels kept
    upstream, times |gamma| / sqrt(running_var + eps); torch.topk picks the kept channels.
    """
    state = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [n for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)]
    previous = None
    for name in convs:
        conv, bn = f"features.{name}", f"features.{name.replace('conv', 'bn')}"
        weight = state[f"{conv}.weight"] if previous is None else state[f"{conv}.weight"][:, previous]
        scores = weight.abs().sum(dim=(1, 2, 3)) * state[f"{bn}.weight"].abs()
        scores = scores / torch.sqrt(state[f"{bn}.running_var"] + model.get_submodule(bn).eps)
        n_keep = max(1, len(scores) - round(amount * len(scores)))
        keep = torch.topk(scores, n_keep, sorted=False).indices.sort().values
        state[f"{conv}.weight"] = weight[keep]
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{bn}.{key}"] = state[f"{bn}.{key}"][keep]
        previous = keep
    block = model.classifier.fc1.in_features // len(scores)
    cols = (previous[:, None] * block + torch.arange(block)).flatten()
    state["classifier.fc1.weight"] = state["classifier.fc1.weight"][:, cols]
    return state


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.7])
def test_shrink_cnn_pruned_exactly_as_before(seed, amount):
    """The study's published figures depend on these exact channels and weights."""
    model = _randomised_cnn(seed)
    with torch.no_grad():
        model.features.bn2.weight[::3] *= -1  # |gamma| matters, not gamma
    expected = _chain_reference(model, amount)
    changes = structured_prune_(model, StructuredConfig(amount))
    assert list(changes) == [f"features.conv{i}" for i in range(1, 5)]
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("flatten", [False, True])
def test_removing_dead_channels_keeps_the_function(flatten):
    """Channels whose folded filter and BatchNorm output are zero carry nothing: removing them is exact."""
    model = _randomised_cnn()
    if not flatten:  # global average pooling into one linear layer instead of the flattened (C, 3, 3) map
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        for i in range(1, 5):
            conv, bn = model.features.get_submodule(f"conv{i}"), model.features.get_submodule(f"bn{i}")
            dead = torch.arange(0, conv.out_channels, 2)  # half of the channels
            conv.weight[dead] = 0
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    before = model(x)
    params = parameter_count(model)
    macs = count_macs(model)
    changes = structured_prune_(model, StructuredConfig(0.5))
    after = model(x)
    assert torch.allclose(before, after, atol=1e-5)
    assert all(a == b // 2 for b, a in changes.values())
    assert parameter_count(model) < (0.6 if flatten else 0.35) * params  # conv weights shrink both ways
    assert count_macs(model) < 0.35 * macs


def test_scores_rank_by_the_folded_filter():
    model = _randomised_cnn()
    with torch.no_grad():
        model.features.bn1.weight[3] = 0  # a zero gamma kills the channel whatever its filter
    assert filter_scores(model.features.conv1, model.features.bn1)[3] == 0
    structured_prune_(model, StructuredConfig(0.25))
    assert model.features.conv1.out_channels == 6
    assert ShrinkCNN(**model.arguments()).state_dict().keys() == model.state_dict().keys()
    assert [v.shape for v in ShrinkCNN(**model.arguments()).state_dict().values()] == [
        v.shape for v in model.state_dict().values()
    ]


def test_rebuilt_model_trains_and_saves():
    model = _randomised_cnn().train()
    structured_prune_(model, StructuredConfig(0.5))
    assert all(m.training for m in model.modules())
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_rebuilt_layers_keep_dtype_and_frozen_weights():
    torch.manual_seed(7)
    model = _randomise(TinyResNet()).double()
    model.stem[0].weight.requires_grad_(False)
    _assert_prunes_like_masking(model, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert not model.stem[0].weight.requires_grad and model.layer2.conv1.weight.requires_grad


@pytest.mark.parametrize(
    "before, amount, multiple, kept",
    [(32, 0.6, 1, 13), (32, 0.6, 8, 16), (64, 0.6, 8, 24), (128, 0.6, 16, 48), (128, 0.6, 8, 48), (64, 0.6, 16, 32),
     (20, 0.9, 8, 8), (12, 0.0, 8, 12), (32, 0.5, 16, 16)],
)  # fmt: skip
def test_kept_channels_rounds_to_the_nearest_multiple(before, amount, multiple, kept):
    from torchshrink.pruning import kept_channels

    assert kept_channels(before, amount, multiple_of=multiple) == kept


def test_structured_prune_keeps_multiples_and_stays_exact():
    torch.manual_seed(0)
    model = _randomised_cnn()
    x = torch.randn(4, 1, 28, 28)
    original = copy.deepcopy(model)
    changes = structured_prune_(model, StructuredConfig(0.6, multiple_of=8))
    assert all(after % 8 == 0 for _, after in changes.values()), changes
    assert any(after < before for before, after in changes.values()), changes
    with torch.no_grad():
        assert torch.allclose(model(x), _masked_like(original, model)(x), atol=1e-5)
    with pytest.raises(ConfigError, match="multiple_of=0"):
        structured_prune_(copy.deepcopy(original), StructuredConfig(0.5, multiple_of=0))


def test_layer_amounts_override_the_amount_per_group_and_stay_exact():
    torch.manual_seed(0)
    model = _randomised_cnn()
    x = torch.randn(4, 1, 28, 28)
    original = copy.deepcopy(model)
    labels = [g.label for g in structured_report(model) if g.prunable]
    first, *rest = labels
    changes = structured_prune_(model, StructuredConfig(0.5, layer_sparsity={first: 0.75}))
    before = changes[first][0]
    assert changes[first][1] == before - round(0.75 * before)
    assert all(changes[label][1] == changes[label][0] - round(0.5 * changes[label][0]) for label in rest)
    with torch.no_grad():
        assert torch.allclose(model(x), _masked_like(original, model)(x), atol=1e-5)
    untouched = structured_prune_(copy.deepcopy(original), StructuredConfig(0.0, layer_sparsity={rest[-1]: 0.5}))
    assert [untouched[label][1] == untouched[label][0] for label in labels] == [True] * (len(labels) - 1) + [False]


def test_layer_amounts_refuse_unknown_groups_and_bad_fractions():
    model = _randomised_cnn()
    with pytest.raises(ConfigError, match="'features.nope'.*its groups are features.conv1"):
        structured_prune_(copy.deepcopy(model), StructuredConfig(0.5, layer_sparsity={"features.nope": 0.5}))
    with pytest.raises(ConfigError, match="sparsity 1.0"):
        structured_prune_(copy.deepcopy(model), StructuredConfig(0.5, layer_sparsity={"features.conv1": 1.0}))
