"""Fold BatchNorm into the convolution before it, so the quantized weights are the ones that run.

Which BatchNorm follows which convolution is read from a ``torch.fx`` trace of ``forward``, never from
the order in which modules were registered: ``__init__`` order says nothing about data flow
(``conv -> relu -> bn``, ``bn(conv(x) + x)`` and convs declared after their BatchNorms all look like
``conv, bn`` neighbours). The trace is only read: the user's module tree and qualified names stay as
they are, because a compressed file stores tensors by those names.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import torch
from torch import fx, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize

from torchshrink.errors import ConfigError
from torchshrink.layers import BATCH_NORMS, CONV_TRANSPOSES, CONVS, NORMS, has_own_forward
from torchshrink.tracing import TraceError, trace

__all__ = [
    # model-level transform
    "fold_batchnorm",
    # analysis: which pairs fold, and why the others do not
    "batchnorm_pairs",
]



def _describe(node: object, modules: dict[str, nn.Module]) -> str:
    """A short name for a graph value in messages, e.g. ``features.relu1 (ReLU)`` or ``block.add``."""
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return f"the model input {node.target}"
    if node.op == "output":
        return "the model output"
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)
    stack = list((node.meta.get("nn_module_stack") or {}).values())  # (path, class) per module, outer -> inner
    return f"{stack[-1][0]}.{name}" if stack and stack[-1][0] else name


def _is_read(name: str, reads: set[str]) -> bool:
    return any(t == name or t.startswith(name + ".") for t in reads)


def _is_lazy(module: nn.Module) -> bool:
    return isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()


def _partner(
    bn_name: str, modules: dict[str, nn.Module], calls: dict[str, list[fx.Node]], reads: set[str]
) -> tuple[str | None, str]:
    """The conv that ``bn_name`` folds into, or ``None`` and the reason it cannot fold."""
    bn = modules[bn_name]
    if not isinstance(bn, BATCH_NORMS):
        return None, f"{type(bn).__name__} is not folded (only BatchNorm1d/2d/3d)"
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return None, "has no running statistics (track_running_stats=False)"
    if _is_lazy(bn):
        return None, "is a lazy module that has not seen an input yet"
    if _is_read(bn_name, reads):
        return None, "forward reads its tensors directly, not only by calling it"
    sites = calls.get(bn_name, [])
    if not sites:
        return None, "is never called by forward"
    sources = [site.args[0] if site.args else site.kwargs.get("input") for site in sites]
    for source in sources:
        is_module = isinstance(source, fx.Node) and source.op == "call_module"
        if is_module and isinstance(modules[source.target], nn.Linear):
            return None, f"follows {_describe(source, modules)}; Linear -> BatchNorm is not folded"
        if not (is_module and isinstance(modules[source.target], CONVS + CONV_TRANSPOSES)):
            return None, f"follows {_describe(source, modules)}, not a convolution"
    conv_names = sorted({source.target for source in sources})
    if len(conv_names) > 1:
        return None, f"its calls follow different convolutions ({', '.join(conv_names)})"
    conv_name = conv_names[0]
    conv = modules[conv_name]
    if has_own_forward(conv):
        return None, f"follows {conv_name}, a {type(conv).__name__} with its own forward, which folding would bypass"
    if isinstance(conv, CONV_TRANSPOSES) and conv.groups != 1:
        return None, f"follows a grouped {type(conv).__name__} (groups={conv.groups}); only groups=1 is folded"
    if _is_lazy(conv):
        return None, f"its convolution {conv_name} is a lazy module that has not seen an input yet"
    if _is_read(conv_name, reads):
        return None, f"forward reads the tensors of its convolution {conv_name} directly"
    others = {
        _describe(user, modules)
        for site in calls[conv_name]
        for user in site.users
        if not (user.op == "call_module" and user.target == bn_name)
    }
    if others:
        return None, f"its convolution's output is also used elsewhere ({', '.join(sorted(others))})"
    if bn.num_features != conv.out_channels:
        return None, f"has {bn.num_features} features but {conv_name} has {conv.out_channels} output channels"
    return conv_name, ""


def batchnorm_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Which BatchNorm layers of ``model`` fold into which convolution, read from a ``torch.fx`` trace.

    A BatchNorm folds into a conv only when every call of the BatchNorm takes the output of that conv and
    every use of that conv's output (at every call) is the BatchNorm. ``model`` is traced but not changed.

    Args:
        model: the model to analyse; its ``forward`` must be traceable by ``torch.fx``.

    Returns:
        ``(pairs, skipped)``: the ``(conv_name, bn_name)`` pairs that can be folded, and for every other
        BatchNorm its qualified name -> the reason it cannot. When ``torch.fx`` cannot trace the model,
        no pair is returned and every BatchNorm gets that reason.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
        >>> batchnorm_pairs(model)
        ([('0', '1')], {'3': 'follows 2 (ReLU), not a convolution'})
    """
    modules = dict(model.named_modules())  # first name of each module object, as fx names its calls
    norms = [name for name, module in modules.items() if isinstance(module, NORMS)]
    if not norms:
        return [], {}
    try:
        graph = trace(model, "BatchNorm folding")
    except TraceError as error:  # report it for every norm, never guess
        return [], dict.fromkeys(norms, f"the model cannot be traced by torch.fx: {error.reason}")
    calls: dict[str, list[fx.Node]] = defaultdict(list)  # module name -> its call sites
    reads = {str(node.target) for node in graph.nodes if node.op == "get_attr"}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
    pairs, skipped = [], {}
    for bn_name in norms:
        conv_name, reason = _partner(bn_name, modules, calls, reads)
        if conv_name is None:
            skipped[bn_name] = reason
        else:
            pairs.append((conv_name, bn_name))
    return pairs, skipped


def _check_plain(conv: nn.Module, name: str) -> None:
    if parametrize.is_parametrized(conv):
        tensors = ", ".join(f"{name}.{t}" for t in conv.parametrizations)
        raise ConfigError(
            f"cannot fold BatchNorm into {name}: {tensors} has a parametrization (pruning mask or fake quant); "
            "call torchshrink.pruning.make_permanent first, and fold before attaching fake quant"
        )


def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    # same arithmetic, in the same order, as the registration-order fold this replaces (bit-identical results)
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    new_bias = ((bias - bn.running_mean) * factor + shift).to(conv.weight.device, conv.weight.dtype)
    axis = 1 if isinstance(conv, CONV_TRANSPOSES) else 0  # output channels: (in, out, *k) or (out, in/groups, *k)
    shape = [1] * conv.weight.ndim
    shape[axis] = -1
    conv.weight.mul_(factor.to(conv.weight.device).reshape(shape))  # (out,) -> e.g. (out, 1, 1, 1)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def _replace(model: nn.Module, target: nn.Module, replacement: nn.Module) -> None:
    # every name the module is registered under: all of its calls were checked, so all aliases go
    names = [name for name, module in model.named_modules(remove_duplicate=False) if module is target and name]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly and only consumes a convolution into that convolution.

    Pairs come from :func:`batchnorm_pairs` (a ``torch.fx`` trace of ``forward``). Per output channel,
    ``w' = w * gamma / sqrt(var + eps)`` and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``; the
    BatchNorm becomes ``nn.Identity``. Eval-mode outputs are unchanged up to float rounding. BatchNorms
    that cannot be folded stay as float modules, and one warning lists them with the reasons. Works in
    place and returns ``model``.

    Args:
        model: the model to fold; its module names do not change.

    Returns:
        ``model``, folded.

    Raises:
        ConfigError: a conv to fold into carries a parametrization: pruning masks must be made permanent
            first (zeros stay zeros: scaling a zero gives zero).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> fold_batchnorm(model)[1]
        Identity()
    """
    pairs, skipped = batchnorm_pairs(model)
    for conv_name, _ in pairs:  # check all before changing anything
        _check_plain(model.get_submodule(conv_name), conv_name)
    with torch.no_grad():  # not a decorator: the warning's stacklevel must reach the caller
        for conv_name, bn_name in pairs:
            bn = model.get_submodule(bn_name)
            _fold_into(model.get_submodule(conv_name), bn)
            _replace(model, bn, nn.Identity())
    if skipped:
        by_reason: dict[str, list[str]] = defaultdict(list)
        for name, reason in skipped.items():
            by_reason[reason].append(name or "<the model itself>")
        lines = [f"  {', '.join(names)}: {reason}" for reason, names in by_reason.items()]
        warnings.warn(
            f"fold_batchnorm left {len(skipped)} BatchNorm layer(s) unfolded (they stay float modules):\n"
            + "\n".join(lines),
            stacklevel=2,
        )
    return model
