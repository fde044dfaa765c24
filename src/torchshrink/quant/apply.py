"""Model-level quantization: attach fake quant to every weight of every accepted layer (convolutions, linear
layers, embeddings, attention, RNNs: :mod:`torchshrink.kinds`), calibrate it (PTQ), train it (QAT), and report
the exact weight storage.

Weights: signed, symmetric (zero point 0, so pruned zeros stay exact zero codes), per output channel by
default, attached as a parametrization after any pruning mask: ``weight = fq(original * mask)``. Their codes
are the narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (ternary at 2 bits) unless ``full_range_weights`` asks
for every signed code ``[-2^(b-1), 2^(b-1) - 1]``.

Inputs of quantized layers (activations): calibrated on training images. An input that is never negative
(everything after a ReLU) is unsigned with zero point 0. Two deliberate exceptions:

* the first layer's input is the image itself, which is 8-bit data by nature (normalised ``uint8`` pixels),
  so it is quantized at 8 bits whatever ``act_bits`` is: this loses nothing, and 2-bit pixels would be a
  change of dataset rather than of model;
* the logits (the last layer's output) stay in float: only their argmax is used.

With ``keep_first_last_8bit`` the first and last layers' weights and the last layer's input are 8-bit too.
Per-layer widths (``layer_bits``, ``layer_act_bits``: mixed precision) override all of the above for the
layers they name, the first layer's input included.

Layers are chosen by :mod:`torchshrink.layers` (every layer of a known kind by default). Tied weights (a head
sharing its embedding's tensor) get one quantizer, attached to both. An input quantizer goes on each layer whose
input is a float tensor (its kind's ``input_args``: attention's query, key and value share one), with these
exceptions, each listed in the warning ``quantize_`` gives: an embedding's input is indices; the ``out_proj`` of
an ``nn.MultiheadAttention`` is applied inside ``F.multi_head_attention_forward``, which reads ``out_proj.weight``
(so the quantized weight is used) but never calls the module, so no input hook would run; an RNN's hidden state
(its second input and its recurrence) stays float.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from torchshrink import distributed as dist
from torchshrink.errors import ConfigError
from torchshrink.kinds import layer_kind
from torchshrink.layers import (
    FilterFn,
    LayerWeight,
    check_untied,
    default_filter,
    find_parametrization,
    module_weights,
    prunable_layers,
    tie_groups,
    warn_skipped,
)
from torchshrink.quant.adds import attach_join_quant_, discover_joins_, has_join_quant, join_quantizers
from torchshrink.quant.fake_quant import CALIBRATIONS, FakeQuant, QuantSpec
from torchshrink.quant.observe_sync import merge_observations_
from torchshrink.quant.primitives import check_bits

__all__ = [
    "QuantConfig",
    "quantize_",
    "detach_input_quant_",
    "calibrated_weight_quantizer",
    "attach_input_quant_",
    "input_skip_reason",
    "quantized_layers",
    "weight_quantizer",
    "input_quantizer",
    "set_quant_enabled",
    "calibrate_",
    "set_scales_trainable",
    "LayerStorage",
    "storage_report",
]


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Example::

        QuantConfig(bits=4, act_bits=8)  # W4A8 everywhere
        QuantConfig(bits=4, layer_bits={"features.conv1": 8, "classifier.fc2": 2})  # mixed precision
        QuantConfig(bits=2, full_range_weights=True)  # 2-bit weights on 4 levels (-2..1), not ternary
    """

    bits: int = 8  # weight code width, 2..8
    act_bits: int | None = None  # input code width of each quantized layer (None: same as bits)
    per_channel: bool = True  # one weight scale per output channel (else per tensor)
    weight_calibration: str = "mse"  # "minmax" or "mse" (clipping search; better below 8 bits)
    act_calibration: str = "percentile"  # "minmax", "percentile" (99.99th) or "mse"
    keep_first_last_8bit: bool = False  # first/last layers at 8 bits (report both variants)
    quantize_inputs: bool = True  # fake-quantize activations (False: weight-only)
    layer_bits: Mapping[str, int] | None = None  # weight width per layer name, overriding bits (mixed precision)
    layer_act_bits: Mapping[str, int] | None = None  # input width per layer name, overriding act_bits
    # Weight codes in the full signed range [-2^(b-1), 2^(b-1) - 1] (LSQ, Esser et al. 2020) instead of the
    # narrow, mirrored [-(2^(b-1) - 1), 2^(b-1) - 1]: one more level in the same bits, zero still an exact code
    # (pruned weights stay zeros). It matters most at 2 bits: 4 levels (-2, -1, 0, 1) instead of ternary;
    # at 8 bits it is 256 levels instead of 255. Activations are not affected.
    full_range_weights: bool = False
    # 8-bit quantizers on the inputs of residual adds and torch.cat between activations (ModelOpt's "shortcut
    # quantizers"): the layers feeding them then export as integer kernels (:mod:`torchshrink.quant.adds`)
    quantize_joins: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        for flag in ("full_range_weights", "quantize_joins"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag}={getattr(self, flag)!r}: must be True or False")
        if self.act_bits is not None:
            check_bits(self.act_bits)
        if self.weight_calibration not in ("minmax", "mse"):
            raise ConfigError(f"weight calibration {self.weight_calibration!r}: choose 'minmax' or 'mse'")
        if self.act_calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration {self.act_calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        for field in ("layer_bits", "layer_act_bits"):
            widths = getattr(self, field)
            if widths is None:
                continue
            if not isinstance(widths, Mapping):
                raise ConfigError(f"{field}: expected a mapping of layer name -> bits, got {type(widths).__name__}")
            for name, bits in widths.items():
                if not isinstance(name, str):
                    raise ConfigError(f"{field}: layer name {name!r} is not a string")
                try:
                    check_bits(bits)
                except ConfigError as exc:
                    raise ConfigError(f"{field}[{name!r}]: {exc}") from None
            # a copy: a caller's later change to its dict must not change a frozen config
            object.__setattr__(self, field, dict(widths))
        if self.quantize_joins and not self.quantize_inputs:
            raise ConfigError("quantize_joins quantizes the inputs of adds and concatenations, but quantize_inputs=False "
                              "quantizes no activation: drop one of them")  # fmt: skip
        if self.layer_act_bits and not self.quantize_inputs:
            raise ConfigError("layer_act_bits sets input widths, but quantize_inputs=False quantizes no input: "
                              "drop one of them")  # fmt: skip

    def __hash__(self) -> int:
        # the per-layer dicts are unhashable: hash them as sorted pairs (equal dicts give equal pairs)
        def pairs(widths: Mapping[str, int] | None) -> tuple[tuple[str, int], ...] | None:
            return None if widths is None else tuple(sorted(widths.items()))

        plain = tuple(getattr(self, f) for f in self.__dataclass_fields__ if f not in ("layer_bits", "layer_act_bits"))
        return hash((plain, pairs(self.layer_bits), pairs(self.layer_act_bits)))

    @property
    def activation_bits(self) -> int:
        return self.act_bits if self.act_bits is not None else self.bits

    def weight_bits_of(self, name: str, edge: bool = False) -> int:
        """Weight width of layer ``name``; ``edge``: it is the first or the last quantized layer."""
        if self.layer_bits and name in self.layer_bits:
            return self.layer_bits[name]
        return 8 if (self.keep_first_last_8bit and edge) else self.bits

    def input_bits_of(self, name: str, first: bool = False, last: bool = False) -> int:
        """Input width of layer ``name``; ``first``/``last``: its place among the quantized layers.

        The first layer's input is the model's input (8-bit data by nature): 8 bits unless named explicitly.
        """
        if self.layer_act_bits and name in self.layer_act_bits:
            return self.layer_act_bits[name]
        return 8 if first or (self.keep_first_last_8bit and last) else self.activation_bits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.quantize_joins:  # absent when off: records written before it existed stay byte for byte
            del d["quantize_joins"]
        return d


def _quantize_input_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    kind = layer_kind(module)
    count = 1 if kind is None else max(kind.input_args, 1)
    done: dict[int, torch.Tensor] = {}  # self-attention passes one tensor as query, key and value: quantize it once
    out = list(args)
    for i, x in enumerate(args[:count]):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            if id(x) not in done:
                done[id(x)] = module.input_quant(x)
            out[i] = done[id(x)]
    return tuple(out)


def weight_quantizer(module: nn.Module, attr: str = "weight") -> FakeQuant | None:
    """The fake-quant parametrization of ``module.<attr>``, or ``None``."""
    return find_parametrization(module, FakeQuant, attr)


def input_quantizer(module: nn.Module) -> FakeQuant | None:
    """The fake quant applied to the module's input, or ``None``."""
    fq = getattr(module, "input_quant", None)
    return fq if isinstance(fq, FakeQuant) else None


def quantized_layers(model: nn.Module) -> dict[str, LayerWeight]:
    """Weight name -> :class:`~torchshrink.layers.LayerWeight` for every weight with a fake quantizer."""
    return {n: w for n, w in module_weights(model).items() if weight_quantizer(w.module, w.attr) is not None}


def attach_input_quant_(layer: nn.Module, bits: int | FakeQuant) -> FakeQuant:
    """Fake-quantize ``layer``'s input with a new ``bits``-wide quantizer (calibrate before use: it starts
    disabled), or with the given, ready quantizer (e.g. one read back from a file). The input is the leading
    float tensor arguments its kind names (:mod:`torchshrink.kinds`; the first one for an unknown module)."""
    fq = bits if isinstance(bits, FakeQuant) else FakeQuant(QuantSpec(bits=bits, signed=True, symmetric=False),
                                                            is_activation=True)  # fmt: skip
    layer.input_quant = fq
    layer.register_forward_pre_hook(_quantize_input_hook)
    return fq


def detach_input_quant_(layer: nn.Module) -> None:
    """Undo :func:`attach_input_quant_`: ``layer``'s input is no longer quantized."""
    if input_quantizer(layer) is not None:
        del layer.input_quant
    for key, hook in list(layer._forward_pre_hooks.items()):
        if hook is _quantize_input_hook:
            del layer._forward_pre_hooks[key]


_MHA_INPUT_REASON = (
    "input not quantized: the out_proj of nn.MultiheadAttention is applied inside F.multi_head_attention_forward, "
    "which never calls the module (no input hook runs); its weight is quantized"
)


def input_skip_reason(model: nn.Module, name: str) -> str | None:
    """Why module ``name``'s input cannot be fake-quantized by a forward hook, or ``None`` when it can."""
    module = model.get_submodule(name)
    kind = layer_kind(module)
    if kind is not None and kind.input_args == 0:
        return f"input not quantized: {kind.input_note or kind.name + ' takes no float input'}"
    parent = name.rpartition(".")[0]
    if isinstance(model.get_submodule(parent), nn.MultiheadAttention):
        return _MHA_INPUT_REASON
    return None


def quantize_(model: nn.Module, config: QuantConfig, filter_fn: FilterFn = default_filter) -> nn.Module:
    """Attach weight and input fake quant to every layer ``filter_fn`` accepts, calibrate the weights, and
    enable weight quantization. Inputs still need :func:`calibrate_` before they are quantized.

    Fold BatchNorm first (:func:`torchshrink.quant.fold_batchnorm`) so the quantized weights are the ones
    that run. Warns once, listing the weight-like parameters left in float and the layers whose input is not
    quantized (the ``out_proj`` of ``nn.MultiheadAttention``). Works in place; returns ``model``.
    """
    layers = prunable_layers(model, filter_fn)
    names = list(layers)
    for field in ("layer_bits", "layer_act_bits"):
        known = names if field == "layer_bits" else list(dict.fromkeys(w.module_name for w in layers.values()))
        unknown = [n for n in getattr(config, field) or {} if n not in known]
        if unknown:
            raise ConfigError(f"QuantConfig.{field} names {', '.join(map(repr, unknown))}: not a layer quantized "
                              f"here; the layers are {', '.join(known)}")  # fmt: skip
    check_untied(model, layers, "quantize_")
    for name, w in layers.items():
        if weight_quantizer(w.module, w.attr) is not None:
            raise ConfigError(f"{name}: already quantized")
    edges = {names[0], names[-1]}
    for group in tie_groups(layers):  # tied weights: one quantizer, attached to each use
        widths = {config.weight_bits_of(n, edge=n in edges) for n in group}
        if len(widths) > 1:
            raise ConfigError(f"{' and '.join(group)} are one tied tensor but get different widths "
                              f"({sorted(widths)} bits): give them the same layer_bits")  # fmt: skip
        first = layers[group[0]]
        try:
            fq = calibrated_weight_quantizer(first.tensor, widths.pop(), config.per_channel,
                                             config.weight_calibration, full_range=config.full_range_weights)  # fmt: skip
        except ConfigError as exc:  # e.g. an overflowing weight; the quantizer does not know its layer's name
            raise ConfigError(f"{' and '.join(group)}: {exc}") from None
        for n in group:
            parametrize.register_parametrization(layers[n].module, layers[n].attr, fq)
    unquantized_inputs = {}
    modules = list(dict.fromkeys(w.module_name for w in layers.values()))  # the input quantizers: one per module
    for i, module_name in enumerate(modules if config.quantize_inputs else []):
        if (reason := input_skip_reason(model, module_name)) is not None:
            unquantized_inputs[module_name] = reason
            continue
        first, last = i == 0, i == len(modules) - 1
        attach_input_quant_(model.get_submodule(module_name), config.input_bits_of(module_name, first, last))
    if config.quantize_joins:
        attach_join_quant_(model)
    warn_skipped(model, filter_fn, "quantize_", extra=unquantized_inputs)
    if dist.is_distributed():  # calibrated from each rank's own copy of the weights: they must agree
        dist.check_same_on_all_ranks(
            {n: weight_quantizer(w.module, w.attr).scale for n, w in layers.items()}, "weight quantizer scales"
        )
    return model


@torch.no_grad()
def calibrated_weight_quantizer(weight: torch.Tensor, bits: int, per_channel: bool = True, method: str = "mse",
                                full_range: bool = False) -> FakeQuant:  # fmt: skip
    """An enabled, signed, symmetric weight quantizer calibrated on ``weight`` (as masked, if pruned): what
    :func:`quantize_` attaches. Symmetric, so a pruned zero stays an exact zero code.

    Codes are narrow, ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, or with ``full_range`` every signed code,
    ``[-2^(b-1), 2^(b-1) - 1]`` (``QuantConfig.full_range_weights``).

    Example::

        fq = calibrated_weight_quantizer(conv.weight, 4)
        w4 = fq(conv.weight)  # at most 15 levels per output channel
        fq = calibrated_weight_quantizer(conv.weight, 2, full_range=True)  # 4 levels: -2, -1, 0, 1 times the scale
    """
    spec = QuantSpec(bits=bits, signed=True, symmetric=True, per_channel=per_channel,
                     narrow=False if full_range else None)  # fmt: skip
    fq = FakeQuant(spec, channels=weight.shape[0])
    fq.calibrate_from(weight, method)
    fq.enabled = True
    return fq


def _inputs(batch: Any) -> torch.Tensor:
    # a tensor, or an (inputs, targets, ...) batch as a DataLoader yields it
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(inputs, torch.Tensor):
        raise ConfigError(f"a calibration batch of {type(inputs).__name__}: expected a tensor or (inputs, targets)")
    return inputs


def set_quant_enabled(model: nn.Module, enabled: bool = True) -> None:
    """Switch every fake quant on or off (off: the float model, for comparison)."""
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.enabled = enabled


@torch.no_grad()
def calibrate_(model: nn.Module, batches: Iterable[Any], method: str | None = None) -> nn.Module:
    """Run ``batches`` through the model to set every input quantizer's range.

    Weight quantization stays on while observing, so each range reflects the quantized weights upstream;
    all inputs are observed in one pass (upstream activations not yet quantized).

    Under torchrun every rank calls it with the same batches: each rank observes its slice of every batch and
    the observations are merged (:func:`torchshrink.quant.observe_sync.merge_observations_`), so all ranks
    set the ranges one process sets from all the batches. (Batches already split by a ``DistributedSampler``
    would be split again: pass the same calibration batches to every rank.)

    Args:
        batches: input tensors or ``(inputs, targets)`` tuples/lists (a ``DataLoader`` works); each is moved
            to the model's device.
        method: ``"minmax"``, ``"percentile"`` (the default) or ``"mse"``.

    Raises:
        ConfigError: no batch, a quantized layer whose input saw no data (its forward never ran), or one whose
            observed range, scale or zero point is not finite (the layers before it overflow float32).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = iter(batches)
    first = next(batches, None)
    if first is not None and has_join_quant(model):  # the joins are known once the model has run
        discover_joins_(model, _inputs(first).to(device))
    quantizers = {name: q for name, m in model.named_modules() if (q := input_quantizer(m)) is not None}
    quantizers.update(join_quantizers(model))
    if not quantizers:
        return model
    was_training = model.training
    model.eval()
    for fq in quantizers.values():
        fq.observing = True
    seen = 0
    distributed = dist.is_distributed()
    try:
        for batch in itertools.chain([first] if first is not None else [], batches):
            inputs = _inputs(batch)
            seen += 1
            if distributed:
                inputs = dist.shard_batch(inputs, dist.rank(), dist.world_size())
                if not len(inputs):
                    continue  # fewer samples than ranks: the other ranks observe them
            model(inputs.to(device))
        if distributed:
            merge_observations_(quantizers)
        if not seen:
            raise ConfigError("calibration batches are empty: pass at least one batch of inputs")
        unseen = [name for name, fq in quantizers.items() if not fq.has_observed]
        if unseen:
            raise ConfigError(
                f"calibration: the input quantizer of {', '.join(repr(n) for n in unseen)} saw no data: its "
                "forward was never called (e.g. the out_proj of nn.MultiheadAttention is applied inside "
                "F.multi_head_attention_forward); exclude it with filter_fn or quantize its weight only "
                "(QuantConfig(quantize_inputs=False))"
            )
    except BaseException:
        for fq in quantizers.values():
            fq.cancel_observing()  # leave the model as it was, not half-observing
        raise
    finally:
        model.train(was_training)
    for name, fq in quantizers.items():
        try:
            fq.finish_observing(method or "percentile")
        except ConfigError as exc:  # e.g. an overflowing range: name the layer, and leave no quantizer observing
            for other in quantizers.values():
                if other.observing:
                    other.cancel_observing()
            raise ConfigError(f"{name}: its input's {exc}") from None
        fq.enabled = True
    if distributed:
        dist.check_same_on_all_ranks({n: fq.scale for n, fq in quantizers.items()}, "activation quantizer scales")
    return model


def set_scales_trainable(model: nn.Module, trainable: bool = True) -> None:
    """Make every fake quant's scale a trainable parameter (LSQ) or freeze it."""
    for m in model.modules():
        if isinstance(m, FakeQuant):
            m.scale.requires_grad_(trainable)


@dataclass(frozen=True)
class LayerStorage:
    """Exact weight storage of one quantized layer."""

    name: str
    params: int
    bits: int
    scales: int
    weight_bytes: float  # bits * params / 8
    scale_bytes: int  # fp32 scales
    bias_bytes: int  # fp32 bias

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.scale_bytes + self.bias_bytes


def storage_report(model: nn.Module) -> list[LayerStorage]:
    """Per quantized layer: weight bits x parameters, plus fp32 scales and bias."""
    rows = []
    for name, w in quantized_layers(model).items():
        fq = weight_quantizer(w.module, w.attr)
        params = w.tensor.numel()
        bias = getattr(w.module, "bias", None) if w.attr == "weight" else None
        rows.append(
            LayerStorage(
                name,
                params,
                fq.spec.bits,
                fq.scale.numel(),
                fq.spec.bits * params / 8,
                4 * fq.scale.numel(),
                4 * bias.numel() if isinstance(bias, torch.Tensor) else 0,
            )  # fmt: skip
        )
    return rows
