"""Which weights of a model torchshrink prunes and quantizes, and which it leaves alone, and why.

One place decides this for pruning and quantization alike: a module is accepted when it is of a known kind
(:mod:`torchshrink.kinds`: convolutions, linear layers, embeddings, attention, RNNs, Hugging Face's ``Conv1D``, and
the kinds users register) and ``filter_fn(module, qualified_name)`` says so; its weights are then the tensors its
kind names, each a :class:`LayerWeight`. Any other weight-like parameter (2-D or more) stays in float, and
:func:`skipped_layers` says which and why, so nothing is skipped silently.

This module sits below :mod:`torchshrink.pruning` and :mod:`torchshrink.quant` and imports neither.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.kinds import LayerKind, layer_kind, weight_name

__all__ = [
    "FilterFn",
    "LayerWeight",
    "CONVS",
    "CONV_TRANSPOSES",
    "BATCH_NORMS",
    "NORMS",
    "SUPPORTED_LAYERS",
    "LEAF_LAYERS",
    "default_filter",
    "prunable_layers",
    "skipped_layers",
    "warn_skipped",
    "find_parametrization",
    "stored_weight",
    "weight_ties",
    "tie_groups",
    "check_untied",
    "module_weights",
    "has_own_forward",
    "FILTER_REJECTED",
]

FilterFn = Callable[[nn.Module, str], bool]  # (module, qualified name) -> accept?

# The layer kinds, in one place: what pruning, quantization, folding, the tracer and the exporter call a layer.
CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # weight (out, in / groups, *kernel)
CONV_TRANSPOSES: tuple[type[nn.Module], ...] = (  # weight (in, out / groups, *kernel)
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
BATCH_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # foldable into a conv
NORMS: tuple[type[nn.Module], ...] = (*BATCH_NORMS, nn.SyncBatchNorm)  # per-channel norms channels flow through
# nn.Linear covers its subclasses, e.g. NonDynamicallyQuantizableLinear (the out_proj of MultiheadAttention)
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (*CONVS, *CONV_TRANSPOSES, nn.Linear)  # the tracer's and exporter's layers
LEAF_LAYERS: tuple[type[nn.Module], ...] = (*SUPPORTED_LAYERS, *NORMS)  # single nodes in a traced graph

FILTER_REJECTED = "rejected by filter_fn"
# the stored tensor of a parametrized attribute: '<owner>.parametrizations.<attr>.original' (original0.. if split)
_PARAMETRIZED = re.compile(r"^(?:(?P<owner>.*)\.)?parametrizations\.(?P<attr>[^.]+)\.original\d*$")

P = TypeVar("P", bound=nn.Module)
_OTHER = LayerKind("other", lambda _m: ("weight",))  # a parametrized module of no known kind (set up by hand)


@dataclass(frozen=True, eq=False)
class LayerWeight:
    """One weight tensor of an accepted layer: ``getattr(module, attr)``.

    ``name`` is what configs, masks and reports call it: the module's name for a ``weight`` (``"fc1"``), else
    ``"<module>.<attr>"`` (``"attn.in_proj_weight"``). ``key`` is its ``state_dict`` key (``"fc1.weight"``).
    """

    module_name: str
    module: nn.Module
    attr: str
    kind: LayerKind

    @property
    def name(self) -> str:
        return weight_name(self.module_name, self.attr)

    @property
    def key(self) -> str:
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr

    @property
    def tensor(self) -> torch.Tensor:
        """The weight the module computes with (masked and fake-quantized when parametrized)."""
        return getattr(self.module, self.attr)

    @property
    def stored(self) -> torch.Tensor:
        """The tensor the weight is stored in: the parametrization's original where there is one."""
        return stored_weight(self.module, self.attr)


def default_filter(module: nn.Module, name: str) -> bool:
    """Accept every module of a known kind (:func:`torchshrink.kinds.layer_kind`): convolutions (1-D/2-D/3-D,
    grouped, depthwise, transposed), linear layers, embeddings, attention, RNNs, registered kinds.

    Example::

        >>> default_filter(nn.Conv1d(2, 4, 3), "conv"), default_filter(nn.LayerNorm(4), "norm")
        (True, False)
    """
    return layer_kind(module) is not None


def _has_tensor(module: nn.Module, attr: str) -> bool:
    # a parametrized weight is a tensor; reading it would run the parametrizations, so don't
    if parametrize.is_parametrized(module, attr):
        return True
    return isinstance(getattr(module, attr, None), torch.Tensor)


def _weights_of(name: str, module: nn.Module, filter_fn: FilterFn) -> list[LayerWeight]:
    kind = layer_kind(module)
    if not name or kind is None or not filter_fn(module, name):
        return []
    return [LayerWeight(name, module, attr, kind) for attr in kind.weights(module) if _has_tensor(module, attr)]


def prunable_layers(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, LayerWeight]:
    """Weight name -> :class:`LayerWeight` for every weight of every layer ``filter_fn`` accepts, in model order.

    Raises:
        ConfigError: no weight is accepted; the message lists the module types the model has.
    """
    layers = {w.name: w for name, module in model.named_modules() for w in _weights_of(name, module, filter_fn)}
    if not layers:
        seen = sorted({type(m).__name__ for m in model.modules()})
        raise ConfigError(
            "no prunable layer: the filter accepted no module with a weight (the default accepts convolutions, "
            "Linear, Embedding, MultiheadAttention, RNN/LSTM/GRU and registered kinds); module types in the model: "
            f"{', '.join(seen)}"
        )
    return layers


def module_weights(model: nn.Module, names: Mapping[str, nn.Module] | None = None) -> dict[str, LayerWeight]:
    """Weight name -> :class:`LayerWeight` of every parametrized weight of ``model`` (whatever its filter was):
    where masks, quantizers and codebooks are found again."""
    out = {}
    for name, module in (names or dict(model.named_modules())).items():
        if not parametrize.is_parametrized(module):
            continue
        kind = layer_kind(module) or _OTHER
        for attr in module.parametrizations:
            out[weight_name(name, attr)] = LayerWeight(name, module, attr, kind)
    return out


def _weight_like_parameters(model: nn.Module) -> list[tuple[str, str, str, torch.Tensor]]:
    """``(qualified name, owner module name, attribute, tensor)`` of every parameter with 2 or more dims."""
    out = []
    for qualified, p in model.named_parameters():
        if p.ndim < 2:
            continue
        match = _PARAMETRIZED.match(qualified)
        if match:
            owner, attr = match["owner"] or "", match["attr"]
            qualified = f"{owner}.{attr}" if owner else attr
        elif ".parametrizations." in f".{qualified}":
            continue  # the state of a parametrization itself (e.g. a codebook), not a model weight
        else:
            owner, _, attr = qualified.rpartition(".")
        out.append((qualified, owner, attr, p))
    return out


def skipped_layers(model: nn.Module, filter_fn: FilterFn = default_filter) -> dict[str, str]:
    """Qualified parameter name -> reason, for every weight-like parameter (2 or more dims) that no accepted
    layer covers: it is neither pruned nor quantized and stays in float.

    1-D parameters (biases, LayerNorm and BatchNorm affine parameters) are never listed. The reason is
    :data:`FILTER_REJECTED` (``"rejected by filter_fn"``) for a weight of a known kind that ``filter_fn``
    turned down, i.e. a deliberate choice. Example::

        >>> skipped_layers(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), lambda m, n: n == "1")
        {'0.weight': 'rejected by filter_fn'}
    """
    modules = dict(model.named_modules())
    skipped: dict[str, str] = {}
    for qualified, owner_name, attr, _ in _weight_like_parameters(model):
        owner = modules[owner_name]
        kind = layer_kind(owner)
        if kind is not None and owner_name and attr in kind.weights(owner):
            if filter_fn(owner, owner_name):
                continue
            reason = FILTER_REJECTED
        elif kind is None:
            reason = f"{type(owner).__name__} is not a layer kind torchshrink knows; left in float (see register_layer_kind)"
        else:
            reason = f"{attr!r} of {type(owner).__name__} is not one of its weights; left in float"
        skipped[qualified] = reason
    return skipped


def warn_skipped(
    model: nn.Module,
    filter_fn: FilterFn,
    action: str,
    extra: Mapping[str, str] | None = None,
    stacklevel: int = 3,
) -> dict[str, str]:
    """Emit one ``warnings.warn`` listing the weights ``action`` leaves alone (plus ``extra`` entries),
    unless the only reason is :data:`FILTER_REJECTED`. Returns what was listed.

    Args:
        action: what the caller does, for the message, e.g. ``"prune_"``.
        extra: more ``name -> reason`` entries from the caller (e.g. inputs it could not quantize).
        stacklevel: passed to ``warnings.warn``; the default points at the caller's caller (the user's code).
    """
    listed = {n: r for n, r in skipped_layers(model, filter_fn).items() if r != FILTER_REJECTED}
    listed.update(extra or {})
    if listed:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in listed.items())
        warnings.warn(f"{action} left {len(listed)} weight(s) or input(s) untouched:\n{lines}", stacklevel=stacklevel)
    return listed


def find_parametrization(module: nn.Module, kind: type[P], name: str = "weight") -> P | None:
    """The first parametrization of type ``kind`` on ``module.<name>``, or ``None``."""
    if parametrize.is_parametrized(module, name):
        for p in getattr(module.parametrizations, name):
            if isinstance(p, kind):
                return p
    return None


def stored_weight(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    """The tensor ``module.<attr>`` is stored in: the parametrization's original where there is one."""
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id of a stored tensor -> (module, "name.attr") of every module holding it as a parameter or weight."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # the original of a parametrized weight: its layer is the holder, found below
        labels = [(pname, p) for pname, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            labels += [(attr, stored_weight(module, attr)) for attr in module.parametrizations]
        for pname, p in labels:
            entry = (module, f"{name}.{pname}" if name else pname)
            if entry not in holders.setdefault(id(p), []):
                holders[id(p)].append(entry)
    return holders


def weight_ties(model: nn.Module, layers: Mapping[str, LayerWeight]) -> dict[str, list[str]]:
    """For each of ``layers`` whose stored tensor a module outside ``layers`` also holds (a language model's head
    tied to an embedding left in float), the names of those other holders. Ties among ``layers`` themselves are
    honoured (one mask, one quantizer: :func:`tie_groups`) and not listed; a module reached under two names is
    one layer, not a tie.

    >>> emb, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    >>> head.weight = emb.weight
    >>> model = nn.ModuleDict({"emb": emb, "head": head})
    >>> weight_ties(model, prunable_layers(model, lambda m, n: n == "head"))
    {'head': ['emb.weight']}
    """
    holders = _holders(model)
    inside = {(id(w.module), w.attr) for w in layers.values()}
    ties = {}
    for name, w in layers.items():
        others = [label for module, label in holders.get(id(w.stored), [])
                  if module is not w.module and (id(module), label.rpartition(".")[2]) not in inside]  # fmt: skip
        if others:
            ties[name] = others
    return ties


def tie_groups(layers: Mapping[str, LayerWeight]) -> list[list[str]]:
    """``layers`` grouped by the tensor they store, in order: a tied embedding and head are one group, to be
    masked, quantized and coded as one tensor."""
    groups: dict[int, list[str]] = {}
    for name, w in layers.items():
        groups.setdefault(id(w.stored), []).append(name)
    return list(groups.values())


def check_untied(model: nn.Module, layers: Mapping[str, LayerWeight], action: str) -> None:
    """Refuse weights also held by a module outside ``layers``: changing one would change the other, while
    during training only one would see it (an embedding tied to a language model's head)."""
    ties = weight_ties(model, layers)
    if ties:
        name, others = next(iter(ties.items()))
        raise ConfigError(
            f"{layers[name].key} is the same tensor as {', '.join(others)}, which {action} leaves alone: changing one "
            f"would change the other. Accept both (filter_fn), leave both out, or untie them"
        )


def has_own_forward(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution or linear layer whose class overrides ``forward`` (weight
    standardisation, as in BiT / NFNet): it computes something else than the layer it derives from, so folding a
    BatchNorm into it or exporting it as that layer's operator would change the model."""
    for base in (*CONVS, *CONV_TRANSPOSES, nn.Linear):
        if isinstance(module, base):
            return type(module).forward is not base.forward
    return False
