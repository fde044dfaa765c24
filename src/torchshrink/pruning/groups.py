"""Channel groups as data: what the analysis of :mod:`torchshrink.pruning.dependency` tracks and returns.

While tracing, a :class:`Layout` says which groups make up dim 1 of a tensor, in order (several after
``torch.cat``), the tensor's rank, and, once the tensor is flattened to ``(N, C * block)``, how many
features each channel owns. Groups that must be pruned identically (two sides of a residual addition) are
joined in a :class:`UnionFind`, which also collects the reasons a group cannot be pruned. The result is a
:class:`ChannelGraph`: the :class:`ChannelGroup` list and the :class:`LayerSlot` each group occupies in
each layer it shrinks.

    >>> uf = UnionFind()
    >>> a, b = uf.add(16), uf.add(16)
    >>> uf.union(a, b); uf.find(b) == a
    True
    >>> Layout((a,), rank=4).flatten(1, -1)
    Layout(segments=(0,), rank=2, block=None)
"""

from __future__ import annotations

from dataclasses import dataclass

from torchshrink.pruning.channel_ops import normalize_dims

__all__ = ["Layout", "UnionFind", "LayerSlot", "ChannelGroup", "ChannelGraph"]



@dataclass(frozen=True)
class Layout:
    """Channels at dim 1 of a tensor.

    Attributes:
        segments: the group (union-find id) of each concatenated run of channels, in channel order.
        rank: the tensor's rank, batch included: ``(N, C, H, W)`` is 4.
        block: features per channel once flattened to rank 2; None when that is the spatial size,
            known only when a consumer's width reveals it.
    """

    segments: tuple[int, ...]
    rank: int
    block: int | None = 1

    def flatten(self, start: object, end: object) -> Layout | None:
        """The layout after ``flatten(start, end)``; None if the channels get mixed into the batch dim."""
        dims = normalize_dims((start, end), self.rank)
        if dims is None or dims[0] > dims[1]:
            return None
        first, last = dims
        if first == last:
            return self
        if first >= 2:  # only spatial dims are merged
            return Layout(self.segments, self.rank - (last - first), self.block)
        if first == 1 and last == self.rank - 1:  # (N, C, H, W) -> (N, C*H*W): channel-major blocks
            return Layout(self.segments, 2, None)
        return None

    def reduce(self, dims: tuple[int, ...] | None, keepdim: bool) -> Layout | None:
        """The layout after a mean/sum/amax over ``dims``; None unless only spatial dims are reduced."""
        if not dims or 0 in dims or 1 in dims:
            return None
        rank = self.rank if keepdim else self.rank - len(set(dims))
        return Layout(self.segments, rank, 1)  # one value per channel left in each reduced dim


class UnionFind:
    """Groups of channels, joined when they must be pruned together; each root keeps size and reasons."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._reasons: list[list[str]] = []

    def add(self, size: int) -> int:
        """A new group of ``size`` channels; returns its id."""
        self._parent.append(len(self._parent))
        self._size.append(size)
        self._reasons.append([])
        return len(self._parent) - 1

    def find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]  # path halving
            i = self._parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        """Join two groups of the same size; the older one (smaller id) stays the root."""
        ra, rb = sorted((self.find(a), self.find(b)))
        if ra != rb:
            self._parent[rb] = ra
            self._reasons[ra] += self._reasons[rb]

    def size(self, i: int) -> int:
        return self._size[self.find(i)]

    def block(self, ids: tuple[int, ...], reason: str) -> None:
        """Mark the groups of ``ids`` as not prunable, because of ``reason``."""
        for i in ids:
            self._reasons[self.find(i)].append(reason)

    def reasons(self, i: int) -> list[str]:
        return self._reasons[self.find(i)]


@dataclass(frozen=True)
class LayerSlot:
    """Where channel groups sit along one axis of one layer.

    Attributes:
        layer: qualified module name.
        axis: ``"out"``: the layer's own channels (a conv's filters; all of a depthwise conv or BatchNorm);
            ``"in"``: a consumer's input channels (Conv, ConvTranspose) or input features (Linear).
        groups: the group index of each concatenated segment, in channel order.
        block: features per channel along this axis (``H*W`` for a Linear after flatten), else 1.
    """

    layer: str
    axis: str
    groups: tuple[int, ...]
    block: int = 1


@dataclass
class ChannelGroup:
    """Channels pruned as one: every producer conv's filter ``i`` and every consumer's channel ``i``.

    Attributes:
        index: position in :attr:`ChannelGraph.groups` (forward order of the first producer).
        label: the first producer conv's name, e.g. ``"features.conv1"``.
        channels: number of channels.
        producers: the groups=1 convs whose filters make these channels (several after a merge).
        layers: every layer whose weights change when the group is pruned.
        reasons: why the group cannot be pruned; empty when it can.
    """

    index: int
    label: str
    channels: int
    producers: list[str]
    layers: list[str]
    reasons: list[str]

    @property
    def prunable(self) -> bool:
        return not self.reasons


@dataclass
class ChannelGraph:
    """The groups of a model, the layer slots they occupy, and the BatchNorm folded into each producer."""

    groups: list[ChannelGroup]
    slots: list[LayerSlot]
    bn_after: dict[str, str]  # producer conv -> the BatchNorm that alone reads its output

    def slots_of(self, group: int) -> list[LayerSlot]:
        """The slots holding channels of ``group``, in forward order."""
        return [s for s in self.slots if group in s.groups]
