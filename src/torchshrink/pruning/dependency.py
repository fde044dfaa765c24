"""Channel groups: the channel dimensions of a model that must be removed together, found with torch.fx.

The model is traced into a graph. Every Conv (groups=1) *produces* a new group of channels. The group
flows along the graph through operations that keep channels apart (BatchNorm, activations, pooling,
dropout, depthwise convs), and ends at its *consumers*: the input channels of the next conv, or the input
features of a Linear layer after flattening (each channel owns a contiguous block of features). Two
tensors added or multiplied channel by channel (a residual connection, a squeeze-excitation scale) MERGE
their groups: the same channels must go on both sides. ``torch.cat`` along channels lays several groups
side by side, and a consumer of the concatenation sees each group at its offset.

Anything not understood (an unknown module or function, a reshape that may hard-code the channel count,
LayerNorm, attention, the model output itself) marks the groups reaching it as not prunable, with the
reason. Nothing is guessed: a group is prunable only if every use of its channels is understood.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.layers import CONV_TRANSPOSES, CONVS, LEAF_LAYERS, NORMS
from torchshrink.pruning.channel_ops import OpKind, module_kind, normalize_dims, op_kind
from torchshrink.pruning.groups import (
    ChannelGraph,
    ChannelGroup,
    LayerSlot,
    Layout,
    UnionFind,
)
from torchshrink.tracing import trace

__all__ = ["channel_graph"]


def channel_graph(model: nn.Module) -> ChannelGraph:
    """Find the channel groups of ``model`` (read only).

    Raises:
        ConfigError: the model cannot be traced, has parametrized layers, or a grouped conv (other than
            depthwise) reads prunable channels.
    """
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise ConfigError(f"{name}: has parametrizations (pruning masks?); call make_permanent(model) first")
    analysis = _Analysis(model)
    for node in trace(model, "structured pruning").nodes:
        analysis.visit(node)
    return analysis.result()


class _Analysis:
    """One pass over the graph in forward order, tracking the channel layout of every tensor."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.uf = UnionFind()
        self.layout: dict[fx.Node, Layout] = {}  # tensors carrying tracked channels at dim 1
        self.shapes: dict[fx.Node, Layout] = {}  # x.shape / x.size() of a tracked x
        self.batch_sizes: set[fx.Node] = set()  # x.size(0), x.shape[0]
        self.slots: dict[tuple[str, str], LayerSlot] = {}  # group ids are union-find ids until result()
        self.seen: dict[str, Layout | None] = {}  # input of each weight layer at its first call
        self.producers: dict[str, int] = {}
        self.bn_after: dict[str, str] = {}
        self.attr_reads: list[str] = []  # parameters read directly (tied weights, functional calls)

    def visit(self, node: fx.Node) -> None:
        for arg in _arg_nodes(node):  # a shape may be read for its batch or spatial size, nothing else
            if arg in self.shapes and not (node.target is operator.getitem and node.args[0] is arg):
                self.uf.block(self.shapes[arg].segments, f"its shape is used by {_describe(node, self.modules)}")
        out = self._dispatch(node)
        if out is not None:
            self.layout[node] = out

    def _dispatch(self, node: fx.Node) -> Layout | None:
        if node.op == "output":
            self._block_inputs(node, "reaches the model output (its channels must all stay)")
            return None
        if node.op == "get_attr":
            self.attr_reads.append(str(node.target))
            return None
        if node.op == "call_module":
            return self._module(node, str(node.target), self.modules[str(node.target)])
        if node.op == "call_function" and node.target is getattr:
            return self._getattr(node)
        if node.op == "call_function" and node.target is operator.getitem:
            return self._getitem(node)
        if node.op == "call_method" and node.target in ("size", "dim"):
            return self._size(node)
        if node.op in ("call_function", "call_method"):
            return self._op(node, op_kind(node.op, node.target))
        return None  # a placeholder: nothing tracked

    # --- weight layers -------------------------------------------------------------------------------

    def _module(self, node: fx.Node, name: str, m: nn.Module) -> Layout | None:
        kind = type(m)
        if kind not in LEAF_LAYERS:
            if module_kind(m) is OpKind.UNKNOWN:
                self._block_inputs(node, f"it reaches {name} ({kind.__name__}), which is not understood")
                return None
            return self._op(node, module_kind(m), m)
        lay = self.layout.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if any(a in self.layout for a in _arg_nodes(node)[1:]):
            self._block_inputs(node, f"{name} takes it as an extra argument")
            return None
        if not self._same_input_every_call(name, lay):
            return None
        if kind in CONVS:
            return self._conv(node, name, m, lay)
        if lay is None:
            return None
        if kind in CONV_TRANSPOSES:
            if m.groups != 1 or lay.rank != len(m.kernel_size) + 2:
                self.uf.block(lay.segments, f"{name} is a grouped ConvTranspose or reads a rank-{lay.rank} tensor")
            else:
                self._slot(name, "in", lay, m.in_channels)
            return None  # its outputs are not pruned: they stay as they are
        if kind in NORMS:
            return lay if self._slot(name, "out", lay, m.num_features) else None
        if lay.rank != 2:
            self.uf.block(lay.segments, f"{name} (Linear) acts on the last dim of a rank-{lay.rank} tensor")
        else:
            self._slot(name, "in", lay, m.in_features)
        return None

    def _conv(self, node: fx.Node, name: str, m: nn.Module, lay: Layout | None) -> Layout | None:
        rank = len(m.kernel_size) + 2
        if lay is not None and lay.rank != rank:  # e.g. an unbatched input: channels are not at dim 1
            self.uf.block(lay.segments, f"{name} reads a rank-{lay.rank} tensor")
            lay = None
        if m.groups == 1:
            if lay is not None:
                self._slot(name, "in", lay, m.in_channels)
            if name not in self.producers:
                self.producers[name] = self.uf.add(m.out_channels)
                self.slots[(name, "out")] = LayerSlot(name, "out", (self.producers[name],))
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and type(self.modules[users[0].target]) in NORMS:
                self.bn_after.setdefault(name, str(users[0].target))
            return Layout((self.producers[name],), rank)
        if m.groups == m.in_channels == m.out_channels:  # depthwise: channel i in, channel i out
            return lay if lay is not None and self._slot(name, "out", lay, m.in_channels) else None
        if lay is not None:
            raise ConfigError(
                f"{name}: a grouped convolution (groups={m.groups}, {m.in_channels} -> {m.out_channels} channels) "
                "reads prunable channels; structured pruning supports groups=1 and depthwise convs only"
            )
        return None

    def _same_input_every_call(self, name: str, lay: Layout | None) -> bool:
        """A layer called several times must see the same groups each time (its weights are shared)."""
        if name not in self.seen:
            self.seen[name] = lay
            return True
        first = self.seen[name]
        if first is None and lay is None:
            return True
        if first is None or lay is None:
            for other in (first, lay):
                if other is not None:
                    self.uf.block(other.segments, f"{name} is called on both prunable and fixed channels")
            return False
        return self._merge(first, lay, f"the calls of {name}") is not None

    def _slot(self, name: str, axis: str, lay: Layout, width: int) -> bool:
        """Record that ``name`` holds ``lay``'s channels along ``axis``, ``width`` entries wide."""
        channels = sum(self.uf.size(s) for s in lay.segments)
        block = width // channels
        one_per_channel = axis == "out" or lay.rank > 2
        if width % channels or (one_per_channel and block != 1) or lay.block not in (None, block):
            self.uf.block(lay.segments, f"{name} has {width} {axis}puts for {channels} channels")
            return False
        self.slots.setdefault((name, axis), LayerSlot(name, axis, lay.segments, block))
        return True

    # --- functions, methods and parameter-free modules --------------------------------------------------

    def _op(self, node: fx.Node, kind: OpKind, module: nn.Module | None = None) -> Layout | None:
        tracked = self._tracked(node)
        if not tracked:
            return None
        what = _describe(node, self.modules)
        x = node.args[0] if node.args else None
        lay = self.layout.get(x) if isinstance(x, fx.Node) else None
        if kind is OpKind.BINARY:
            return self._binary(node, what)
        if kind is OpKind.CAT:
            return self._cat(node, what)
        others = [a for a in _arg_nodes(node) if a is not x and a not in self.batch_sizes]
        if kind is OpKind.UNKNOWN or lay is None or others:
            self._block_inputs(node, f"it reaches {what}, which is not understood")
            return None
        if kind is OpKind.ELEMENTWISE or (kind is OpKind.SPATIAL and lay.rank > 2):
            return lay
        if kind is OpKind.FLATTEN:
            start, end = (module.start_dim, module.end_dim) if module is not None else _flatten_args(node)
            out = lay.flatten(start, end)
        elif kind is OpKind.RESHAPE:
            shape = node.args[1:] if node.op == "call_method" else node.args[1:2] or (node.kwargs.get("shape"),)
            shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
            batch_first = len(shape) == 2 and shape[0] in self.batch_sizes and shape[1] == -1
            out = lay.flatten(1, -1) if batch_first else None  # any other shape may hard-code the channel count
        elif kind is OpKind.REDUCE:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
            out = lay.reduce(normalize_dims(dims, lay.rank), bool(keepdim))
        else:
            out = None
        if out is None:
            self.uf.block(lay.segments, f"it reaches {what}, whose effect on channels is not understood")
        return out

    def _binary(self, node: fx.Node, what: str) -> Layout | None:
        operands = list(node.args[:2]) + ([node.kwargs["other"]] if "other" in node.kwargs else [])
        layouts = [self.layout.get(a) for a in operands if isinstance(a, fx.Node)]
        numbers = [a for a in operands if isinstance(a, (int, float)) and not isinstance(a, bool)]
        extra = [a for a in _arg_nodes(node) if a not in operands]
        if extra or len(operands) != 2 or None in layouts or len(layouts) + len(numbers) != 2:
            self._block_inputs(node, f"{what} mixes it with a tensor whose channels are not tracked")
            return None
        return layouts[0] if len(layouts) == 1 else self._merge(layouts[0], layouts[1], what)

    def _cat(self, node: fx.Node, what: str) -> Layout | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        layouts = [self.layout.get(t) for t in tensors] if isinstance(tensors, (tuple, list)) else [None]
        ok = None not in layouts and len({lay.rank for lay in layouts}) == 1 and len(_arg_nodes(node)) == len(layouts)
        dims = normalize_dims(dim, layouts[0].rank) if ok else None
        if dims is None or (dims == (1,) and len({lay.block for lay in layouts}) > 1):
            self._block_inputs(node, f"{what} joins it with tensors whose channels are not tracked")
            return None
        if dims == (1,):  # side by side: the consumer sees each group at its offset
            segments = tuple(s for lay in layouts for s in lay.segments)
            return Layout(segments, layouts[0].rank, layouts[0].block)
        merged: Layout | None = layouts[0]
        for lay in layouts[1:]:  # stacked along another dim: every input has the same channels
            merged = self._merge(merged, lay, what) if merged is not None else None
        return merged

    def _merge(self, a: Layout, b: Layout, what: str) -> Layout | None:
        """Union the groups of two tensors combined channel by channel; None (and block) if they don't line up."""
        sizes_a, sizes_b = [self.uf.size(s) for s in a.segments], [self.uf.size(s) for s in b.segments]
        blocks_differ = None not in (a.block, b.block) and a.block != b.block
        if a.rank != b.rank or sizes_a != sizes_b or blocks_differ:
            self.uf.block(a.segments + b.segments, f"{what} combines channel slices that do not line up")
            return None
        for s, t in zip(a.segments, b.segments, strict=True):
            self.uf.union(s, t)
        return Layout(a.segments, a.rank, a.block if a.block is not None else b.block)

    # --- shape reads -------------------------------------------------------------------------------------

    def _getattr(self, node: fx.Node) -> None:
        x, attr = node.args[0], node.args[1]
        lay = self.layout.get(x) if isinstance(x, fx.Node) else None
        if lay is not None and attr == "shape":
            self.shapes[node] = lay
        elif lay is not None and attr not in ("dtype", "device", "ndim", "is_cuda", "requires_grad"):
            self.uf.block(lay.segments, f"its attribute .{attr} is read")

    def _size(self, node: fx.Node) -> None:
        lay = self.layout.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if lay is None or node.target == "dim":
            return
        if len(node.args) == 1 and "dim" not in node.kwargs:
            self.shapes[node] = lay
            return
        self._index_shape(node, lay, node.args[1] if len(node.args) > 1 else node.kwargs["dim"])

    def _getitem(self, node: fx.Node) -> None:
        source = node.args[0]
        if source in self.shapes:
            self._index_shape(node, self.shapes[source], node.args[1])
        elif self._tracked(node):
            self._block_inputs(node, f"it is indexed ({_describe(node, self.modules)})")

    def _index_shape(self, node: fx.Node, lay: Layout, index: Any) -> None:
        dims = normalize_dims(index, lay.rank)
        if dims == (0,):
            self.batch_sizes.add(node)
        elif dims is None or dims == (1,):
            self.uf.block(lay.segments, f"its channel count is read ({_describe(node, self.modules)})")

    # --- helpers -----------------------------------------------------------------------------------------

    def _tracked(self, node: fx.Node) -> list[Layout]:
        return [self.layout[a] for a in _arg_nodes(node) if a in self.layout]

    def _block_inputs(self, node: fx.Node, reason: str) -> None:
        for lay in self._tracked(node):
            self.uf.block(lay.segments, reason)

    def result(self) -> ChannelGraph:
        for slot in self.slots.values():  # a weight used outside its layer would not follow the new shape
            reads = [t for t in self.attr_reads if t.startswith(f"{slot.layer}.")]
            if reads:
                self.uf.block(slot.groups, f"{slot.layer}'s weights are also read directly ({reads[0]})")
        index: dict[int, int] = {}
        groups: list[ChannelGroup] = []
        for name, element in self.producers.items():  # insertion order: forward order
            root = self.uf.find(element)
            if root not in index:
                index[root] = len(groups)
                reasons = list(dict.fromkeys(self.uf.reasons(root)))
                groups.append(ChannelGroup(len(groups), name, self.uf.size(root), [], [], reasons))
            groups[index[root]].producers.append(name)
        slots = [
            LayerSlot(s.layer, s.axis, tuple(index[self.uf.find(g)] for g in s.groups), s.block)
            for s in self.slots.values()
        ]
        for slot in slots:
            for g in dict.fromkeys(slot.groups):
                if slot.layer not in groups[g].layers:
                    groups[g].layers.append(slot.layer)
        return ChannelGraph(groups, slots, self.bn_after)


def _arg_nodes(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _flatten_args(node: fx.Node) -> tuple[Any, Any]:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    return start, end


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[str(node.target)]).__name__})"
    if node.op == "call_method":
        return f".{node.target}() at node {node.name!r}"
    return f"{getattr(node.target, '__name__', node.target)}() at node {node.name!r}"
