"""Layer kinds: for each kind of weight-bearing module, which of its tensors are weights and what its input is.

Pruning, quantization, codebooks and the file all work on *weights*: a tensor attribute of a module (``conv.weight``,
``attention.in_proj_weight``, ``lstm.weight_hh_l0``), masked or quantized in place by a parametrization, so the
module's own forward keeps running and a fresh instance of the user's class loads the file. A kind says which
attributes those are and how many leading positional arguments of the module's forward are float tensors an
input quantizer may fake-quantize (0 for an embedding, whose input is indices).

Every weight is quantized per channel along its axis 0 (a row of a linear layer, an output channel of a
convolution, an embedding's row, a gate row of an RNN, one input feature of Hugging Face's transposed ``Conv1D``).

The built-in kinds cover ``torch.nn``'s convolutions (1-D to 3-D, transposed), ``Linear``, ``Embedding`` /
``EmbeddingBag``, ``MultiheadAttention`` (``in_proj_weight``, or ``q/k/v_proj_weight``; its ``out_proj`` is a
``Linear``), ``RNN`` / ``LSTM`` / ``GRU`` (every ``weight_*``), and Hugging Face's ``Conv1D`` (recognised when
``transformers`` is already imported; torchshrink never imports it). Users add their own with
:func:`register_layer_kind`, without editing torchshrink.

This module sits at the bottom of the package: it imports nothing of torchshrink but its errors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from torchshrink.errors import ConfigError

__all__ = ["LayerKind", "register_layer_kind", "unregister_layer_kind", "layer_kind", "weight_name", "BUILTIN_KINDS"]

Match = Callable[[nn.Module], bool]


@dataclass(frozen=True)
class LayerKind:
    """What torchshrink needs to know of a kind of layer.

    Attributes:
        name: shown in messages and tables, e.g. ``"attention"``.
        weights: ``module -> attribute names`` of its weight tensors (those that are absent or ``None`` on a
            given instance are skipped).
        input_args: how many leading positional arguments of ``forward`` are float tensors an input quantizer
            fake-quantizes (all with one quantizer: attention's query, key and value); 0 when its input is not
            a float tensor (an embedding's indices).
        input_note: why the input is not quantized, when ``input_args`` is 0.
    """

    name: str
    weights: Callable[[nn.Module], Sequence[str]]
    input_args: int = 1
    input_note: str = ""


def _fixed(names: Sequence[str]) -> Callable[[nn.Module], Sequence[str]]:
    names = tuple(names)
    return lambda _module: names


def _attention_weights(m: nn.Module) -> Sequence[str]:
    # one packed (3E, E) tensor when query, key and value share the embedding size, else three
    return ("in_proj_weight",) if m._qkv_same_embed_dim else ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _recurrent_weights(m: nn.Module) -> Sequence[str]:
    # weight_ih_l{k}[_reverse], weight_hh_l{k}[_reverse] and an LSTM's weight_hr_l{k}: its biases stay float
    return tuple(n for n in m._flat_weights_names if n.startswith("weight_"))


def _is_hf_conv1d(m: nn.Module) -> bool:
    # Hugging Face's Conv1D (GPT-2's projections) is a Linear storing its weight transposed, (in, out). Looked up
    # only where the user's process already imported transformers: torchshrink never imports it.
    module = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(module, "Conv1D", None)
    return isinstance(cls, type) and isinstance(m, cls)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

BUILTIN_KINDS: list[tuple[Match, LayerKind]] = [
    (lambda m: isinstance(m, _CONVS), LayerKind("convolution", _fixed(["weight"]))),
    (lambda m: isinstance(m, nn.Linear), LayerKind("linear", _fixed(["weight"]))),
    (_is_hf_conv1d, LayerKind("hf_conv1d", _fixed(["weight"]))),
    (
        lambda m: isinstance(m, (nn.Embedding, nn.EmbeddingBag)),
        LayerKind("embedding", _fixed(["weight"]), 0, "an embedding's input is integer indices, not activations"),
    ),
    (lambda m: isinstance(m, nn.MultiheadAttention), LayerKind("attention", _attention_weights, 3)),
    (lambda m: isinstance(m, nn.RNNBase), LayerKind("recurrent", _recurrent_weights)),
]
_USER_KINDS: list[tuple[Match, LayerKind]] = []  # checked first, the latest registration first


def register_layer_kind(
    match: type[nn.Module] | Match,
    weights: Sequence[str] | Callable[[nn.Module], Sequence[str]] = ("weight",),
    *,
    input_args: int = 1,
    name: str | None = None,
) -> LayerKind:
    """Teach torchshrink a layer of your own: its weights are then pruned, quantized, coded and stored like
    those of the built-in kinds. A registration takes precedence over the built-in kinds and earlier ones.

    Args:
        match: a module class (its subclasses match too) or a predicate ``module -> bool``.
        weights: the attribute names of its weight tensors, or ``module -> names``. Each is quantized per
            channel along its axis 0.
        input_args: leading positional arguments of ``forward`` that are float activations an input quantizer
            may fake-quantize (0: none, e.g. indices).
        name: for messages; the class name by default.

    Example::

        class Gated(nn.Module):  # two weights, no Linear inside
            def __init__(self):
                super().__init__()
                self.w_in, self.w_gate = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(8, 4))
            def forward(self, x):
                return (x @ self.w_in.T) * torch.sigmoid(x @ self.w_gate.T)

        register_layer_kind(Gated, ["w_in", "w_gate"])
    """
    if isinstance(match, type):
        if not issubclass(match, nn.Module):
            raise ConfigError(f"register_layer_kind: {match.__name__} is not an nn.Module class")
        cls = match
        label = name or cls.__name__
        predicate: Match = lambda m: isinstance(m, cls)  # noqa: E731
    elif callable(match):
        label = name or getattr(match, "__name__", "custom")
        predicate = match
    else:
        raise ConfigError(f"register_layer_kind: match must be a module class or a predicate, not {type(match).__name__}")
    if isinstance(weights, str) or not (callable(weights) or all(isinstance(w, str) for w in weights)):
        raise ConfigError(f"register_layer_kind: weights must be attribute names, e.g. ['weight'], not {weights!r}")
    if not isinstance(input_args, int) or input_args < 0:
        raise ConfigError(f"register_layer_kind: input_args={input_args!r}, expected a count >= 0")
    kind = LayerKind(label, weights if callable(weights) else _fixed(weights), input_args,
                     "" if input_args else f"{label} was registered with input_args=0")  # fmt: skip
    _USER_KINDS.insert(0, (predicate, kind))
    return kind


def unregister_layer_kind(kind: LayerKind) -> None:
    """Forget a kind :func:`register_layer_kind` returned (e.g. at the end of a test)."""
    _USER_KINDS[:] = [(m, k) for m, k in _USER_KINDS if k is not kind]


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``, or ``None`` when torchshrink knows no weights of it.

    >>> layer_kind(nn.LSTM(4, 8)).name, layer_kind(nn.LayerNorm(4))
    ('recurrent', None)
    """
    for match, kind in (*_USER_KINDS, *BUILTIN_KINDS):
        if match(module):
            return kind
    return None


def weight_name(module_name: str, attr: str) -> str:
    """The name a weight goes by in configs and reports: the module's name for its ``weight`` (``"fc1"``, as
    always), ``"<module>.<attribute>"`` for any other (``"attn.in_proj_weight"``, ``"lstm.weight_hh_l0"``)."""
    if attr == "weight":
        return module_name
    return f"{module_name}.{attr}" if module_name else attr
