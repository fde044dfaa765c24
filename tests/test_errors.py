"""Every error a user can cause is a TorchshrinkError: the command line turns those into one line, anything else
into a traceback."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from torchshrink.errors import ConfigError, TorchshrinkError
from torchshrink.pack import encode_compressed
from torchshrink.pruning.masks import layer_magnitude_mask
from torchshrink.quant import QuantConfig, quantize_

SOURCE = Path(__file__).resolve().parents[1] / "src" / "torchshrink"
BUILTINS = {"ValueError", "TypeError", "RuntimeError"}

# The reader turns these byte-level primitives' ValueErrors into a FormatError naming the file and the field
# (pack/records.py, pack/decode.py); the writer calls them only with codes and widths it made itself.
CODEC = "byte-level codec primitive: the reader rewraps its ValueError as a FormatError, the writer never trips it"

# (file under src/torchshrink, function's qualified name) -> why a builtin error is right there
ALLOWED: dict[tuple[str, str], str] = {
    ("pack/bitpack.py", "bits_for"): CODEC,
    ("pack/bitpack.py", "pack_bits"): CODEC,
    ("pack/bitpack.py", "unpack_bits"): CODEC,
    ("pack/huffman.py", "code_lengths"): CODEC,
    ("pack/huffman.py", "canonical_codes"): CODEC,
    ("pack/huffman.py", "huffman_encode"): CODEC,
    ("pack/huffman.py", "huffman_decode"): CODEC,
    ("pack/huffman.py", "check_complete"): CODEC,
    ("pack/sparse.py", "decode_positions"): CODEC,
    ("pack/streams.py", "check_padding"): CODEC,
    ("pack/streams.py", "decode_stream"): CODEC,
    ("pack/format.py", "encode_file"): "its one caller, encode_compressed, refuses a bad compression first",
    ("pruning/rebuild.py", "shrink_layer"): "an internal invariant: the dependency graph never asks for that axis",
    ("quant/fake_quant.py", "FakeQuant.set_observed_sample"): "an internal invariant: the merge pairs values and keys",
}


Scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _builtin_raises(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(qualified name of the enclosing function, line, whether a private helper encloses it) of every
    ``raise ValueError`` and every ``ValueError(...)`` built (a helper may build the error its caller raises)."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, scopes: tuple[Scope, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scopes, child))
                continue
            target = child.func if isinstance(child, ast.Call) else child.exc if isinstance(child, ast.Raise) else None
            if isinstance(target, ast.Name) and target.id in BUILTINS:
                names = [s.name for s in scopes]
                functions = [s.name for s in scopes if not isinstance(s, ast.ClassDef)]
                private = any(f.startswith("_") and not f.startswith("__") for f in functions)
                found.append((".".join(names) or "<module>", child.lineno, private))
            visit(child, scopes)

    visit(tree, ())
    return found


def test_only_private_helpers_and_the_allowed_raise_builtin_errors() -> None:
    """A builtin error outside a private argument-checking helper is on ALLOWED, with its reason."""
    unexplained, used = [], set()
    for path in sorted(SOURCE.rglob("*.py")):
        rel = path.relative_to(SOURCE).as_posix()
        for where, line, private in _builtin_raises(ast.parse(path.read_text(encoding="utf-8"))):
            if (rel, where) in ALLOWED:
                used.add((rel, where))
            elif not private:
                unexplained.append(f"{rel}:{line} in {where}")
    assert not unexplained, "raise a TorchshrinkError subclass (errors.py) instead: " + ", ".join(unexplained)
    assert not set(ALLOWED) - used, f"stale ALLOWED entries: {sorted(set(ALLOWED) - used)}"


def test_the_scan_sees_raises_and_built_errors() -> None:
    """The scan finds what it must: public raises, errors built for a caller, and private helpers as such."""
    tree = ast.parse(
        "def f():\n    raise ValueError('x')\n"
        "def _g():\n    raise TypeError\n"
        "def _h():\n    return RuntimeError('y')\n"
        "class C:\n    def __init__(self):\n        raise ValueError('z')\n"
    )
    assert _builtin_raises(tree) == [("f", 2, False), ("_g", 4, True), ("_h", 6, True), ("C.__init__", 9, False)]


def _quantized() -> nn.Module:
    return quantize_(nn.Sequential(nn.Linear(4, 3)), QuantConfig(bits=4, quantize_inputs=False))


@pytest.mark.parametrize(
    "model, kwargs, match",
    [
        (nn.Sequential(nn.Linear(4, 3)), {}, "no quantized layer"),
        (None, {"model_name": "no_such_model"}, "unknown model 'no_such_model'; registered models: "),
        (None, {"model_args": {"hidden": 3}}, "pass its model_name too"),
        (None, {"compression": "gzip"}, "compression 'gzip': choose one of auto, none, zlib, lzma"),
    ],
)
def test_saving_refusals_are_config_errors(model: nn.Module | None, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        encode_compressed(model if model is not None else _quantized(), **kwargs)


def test_a_previous_mask_of_another_shape_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"previous mask of shape \(2, 2\) for scores of shape \(3,\)"):
        layer_magnitude_mask(torch.ones(3), 0.5, torch.ones(2, 2))
    assert issubclass(ConfigError, TorchshrinkError)
