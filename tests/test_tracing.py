"""The one tracer: every graph reader gets the same leaves and leaves the user's model as it found it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.pruning import structured_report
from torchshrink.quant import fold_batchnorm
from torchshrink.tracing import TraceError, trace


class Caching(nn.Module):
    """A forward that caches a tensor on the module and makes a constant: fx would leave both behind."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        self.last = x
        return self.head(torch.relu(self.bn(self.conv(x))) * torch.tensor(2.0))


@pytest.mark.parametrize("reader", [lambda m: trace(m, "a test"), structured_report, fold_batchnorm],
                         ids=["trace", "structured_report", "fold_batchnorm"])  # fmt: skip
def test_every_graph_reader_gives_the_model_back_as_it_was(reader):
    model = Caching().eval()
    before = set(vars(model)) | set(model._buffers) | set(model._parameters)
    reader(model)
    after = set(vars(model)) | set(model._buffers) | set(model._parameters)
    assert after == before and not hasattr(model, "last") and not hasattr(model, "_tensor_constant0")


def test_layers_and_norms_are_single_nodes():
    graph = trace(Caching(), "a test")
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["conv", "bn", "head"]


def test_an_untraceable_forward_is_refused_with_fx_reason():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(TraceError, match="a test cannot trace Branchy with torch.fx: .*control flow") as error:
        trace(Branchy(), "a test")
    assert error.value.reason


def test_a_graph_module_keeps_the_constants_its_forward_made():
    from torchshrink.tracing import trace_module

    model = Caching().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        module = trace_module(model, "a test")
        assert torch.equal(module(x), expected)
    assert not hasattr(model, "_tensor_constant0")
