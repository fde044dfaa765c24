"""The one torch.fx tracer: weight-bearing layers and norms stay single graph nodes, a user's model is given
back exactly as it was, and a model fx cannot follow is refused with fx's reason.

Structured pruning (channel groups), BatchNorm folding and the ONNX exporter all read a model's graph through
:func:`trace`, so they agree on what a layer is (:mod:`torchshrink.layers`' tables).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import fx, nn

from torchshrink.errors import ConfigError, first_line
from torchshrink.layers import LEAF_LAYERS

__all__ = ["LayerTracer", "TraceError", "trace", "trace_module", "attributes_restored"]


class TraceError(ConfigError):
    """torch.fx cannot trace a model; ``reason`` is fx's own first line."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class LayerTracer(fx.Tracer):
    """Keeps convs, transposed convs, linears and norms (their subclasses and ``Parametrized*`` classes too) as
    single ``call_module`` nodes; traces into everything else a torch.nn leaf would not stop."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, LEAF_LAYERS)
            or type(m).__name__.startswith("Parametrized")  # tracing into one would evaluate its parametrization
            or super().is_leaf_module(m, module_qualified_name)
        )


@contextmanager
def attributes_restored(model: nn.Module) -> Iterator[None]:
    """Undo what tracing leaves on a model: fx stores tensors created in forward (``torch.tensor(2.0)``) as
    ``_tensor_constant0`` on the root, and a forward that caches ``self.last = x`` would keep a Proxy."""
    saved = [(table, dict(table)) for m in model.modules() for table in _attribute_tables(m)]
    try:
        yield
    finally:
        for table, before in saved:
            if table.keys() != before.keys() or any(table[k] is not v for k, v in before.items()):
                table.clear()
                table.update(before)


def _attribute_tables(module: nn.Module) -> tuple[dict, ...]:
    # __dict__ first: it holds the other three, whose contents are then restored in turn
    return module.__dict__, module._parameters, module._buffers, module._modules


def trace(model: nn.Module, purpose: str) -> fx.Graph:
    """The fx graph of ``model``, which is left as it was.

    Args:
        purpose: what needs the graph, for the message (``"structured pruning"``).

    Raises:
        TraceError: fx cannot trace the model (data-dependent control flow, ...), with fx's reason.
    """
    return _traced(model, purpose, runnable=False)


def trace_module(model: nn.Module, purpose: str) -> fx.GraphModule:
    """:func:`trace` as a runnable ``GraphModule``, which holds its own references to the constants a forward
    made (the model gives them back)."""
    return _traced(model, purpose, runnable=True)


def _traced(model: nn.Module, purpose: str, runnable: bool) -> Any:
    try:
        with attributes_restored(model):
            tracer = LayerTracer()
            graph = tracer.trace(model)
            # a GraphModule takes the constants while they are still on the model; a bare graph needs none
            return fx.GraphModule(tracer.root, graph) if runnable else graph
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError... on what it cannot follow
        reason = first_line(str(err).strip()) or type(err).__name__
        raise TraceError(
            f"{purpose} cannot trace {type(model).__name__} with torch.fx: {reason}. It needs a forward without "
            "data-dependent control flow (no `if x.sum() > 0:`)",
            reason,
        ) from err
