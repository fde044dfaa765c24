"""Checkpoints: weights in safetensors, and a JSON beside them saying how to rebuild the model.

A checkpoint is a folder holding ``model.safetensors`` and ``model.json``. The JSON names the model and
its constructor arguments, the training config, the metrics and the library versions. Both files are
written atomically. No pickle anywhere.

Loading trusts neither file. In order, before any weight is allocated: the JSON is bounded (size, nesting,
integer digits) and its model fields are type-checked; the architecture is built on the ``meta`` device and
refused above :data:`MAX_ELEMENTS`; the safetensors header is parsed here, every offset and size checked,
and its names, shapes and dtypes compared with that architecture. Only then are the tensors read, and
NaN/inf weights refused by name. Every failure is one :class:`~torchshrink.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from torchshrink._io import atomic_write, atomic_write_json
from torchshrink.errors import CheckpointError, TorchshrinkWarning, first_line, show_value
from torchshrink.models import MODELS, build_model
from torchshrink.provenance import versions

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_rewind",
    "read_header",
    "versions",
    "WEIGHTS",
    "META",
    "REWIND",
    "MAX_ELEMENTS",
]

WEIGHTS, META, REWIND = "model.safetensors", "model.json", "rewind.safetensors"
FORMAT = "torchshrink-checkpoint"

MAX_ELEMENTS = 1 << 28  # parameters + buffers of a loadable model: 1 GiB at fp32, far above any model here
MAX_META_BYTES = 1 << 20  # model.json is a few KB; this bounds what a hostile one can make us read
MAX_HEADER_BYTES = 1 << 24  # the safetensors header (JSON); safetensors' own ceiling is 100 MB
MAX_DEPTH = 16  # JSON nesting: model.json needs 4 levels, a safetensors header 3
MAX_DIMS = 16  # dimensions of one tensor: bounds the size arithmetic on a hostile header
MAX_DIGITS = 20  # digits of a JSON integer (2**64 has 20); Python refuses > 4300 with a ValueError of its own
MAX_ARG_INT = 2**31 - 1  # |integer| in model_args: layer sizes and the like
MAX_ARG_ITEMS = 1024  # values in model_args, all nesting levels together
MAX_ARG_STR = 256  # characters of one string in model_args
# safetensors dtype -> (bytes per element, floating point); the dtypes torch can hold and checkpoints use
DTYPES: dict[str, tuple[int, bool]] = {
    "BOOL": (1, False), "U8": (1, False), "I8": (1, False), "I16": (2, False), "I32": (4, False),
    "I64": (8, False), "F16": (2, True), "BF16": (2, True), "F32": (4, True), "F64": (8, True),
}  # fmt: skip


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode and the JSON metadata."""

    model: nn.Module
    meta: dict[str, Any]
    path: Path


def save_checkpoint(
    folder: str | os.PathLike[str],
    model: nn.Module,
    model_name: str,
    model_args: dict[str, Any] | None = None,
    rewind: dict[str, torch.Tensor] | None = None,
    **meta: Any,
) -> Path:
    """Write ``model`` to ``folder/model.safetensors`` and ``folder/model.json``; return the folder.

    ``rewind`` (a ``state_dict`` from early in training) goes to ``rewind.safetensors`` for lottery-ticket
    rewinding. The weights are written first and the JSON last, so a folder whose JSON exists is complete.
    """
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {
        "format": FORMAT,
        "model": model_name,
        "model_args": model_args or {},
        "tensors": {k: list(v.shape) for k, v in state.items()},
        "versions": versions(),
        **meta,
    }
    atomic_write(
        folder / WEIGHTS, lambda tmp: safetensors.torch.save_file(state, str(tmp), metadata={"format": FORMAT})
    )
    if rewind is not None:
        rewind = {k: v.detach().cpu().contiguous() for k, v in rewind.items()}
        atomic_write(folder / REWIND, lambda tmp: safetensors.torch.save_file(rewind, str(tmp)))
    atomic_write_json(folder / META, info)
    return folder


def load_rewind(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The early-training weights saved beside a checkpoint, for ``--rewind``."""
    file = _resolve(path) / REWIND
    _check_regular_file(file, "missing; only checkpoints from `torchshrink train` carry a rewind point")
    read_header(file)
    state = _load_tensors(file)
    _check_values(file, state)
    return state


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (or the path of either of its files) into a model in eval mode.

    Raises:
        CheckpointError: a file is missing, unreadable, malformed, or does not match the model it names;
            or a weight is NaN or infinite. A weight tensor of zeros only loads, with a warning.
    """
    folder = _resolve(path)
    meta_path, weights_path = folder / META, folder / WEIGHTS
    for p in (meta_path, weights_path):
        _check_regular_file(p, "missing; the checkpoint is incomplete, train again or pass another folder")
    meta = _read_meta(meta_path)
    name, args = meta["model"], meta.get("model_args", {})
    expected = _expected_tensors(meta_path, name, args)
    header = read_header(weights_path)
    _match(weights_path, name, header, expected)
    state = _load_tensors(weights_path)
    _check_values(weights_path, state)
    model = _build(meta_path, name, args)
    model.load_state_dict(state)
    model.to(device).eval()
    return Checkpoint(model, meta, folder)


def read_header(path: str | os.PathLike[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse and check a safetensors file's header without reading any tensor: name -> (dtype, shape).

    The format: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (name -> dtype, shape,
    ``data_offsets`` into the data that follows; an optional ``__metadata__`` of strings), then the data.
    Every offset must lie in the file, and the tensors must tile the data exactly, as safetensors requires.

    Raises:
        CheckpointError: the file is unreadable or its header is malformed, naming what is wrong.
    """
    path = Path(path)
    size = _size(path)
    bad = f"{path}: not a valid safetensors file"
    try:
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{bad} ({size} bytes is shorter than the 8-byte header length)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{bad} (header length {n} does not fit the file's {size} bytes; truncated?)")
            text = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}); check its permissions") from exc
    header = _parse_json(path, text, "header", constants=False)
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (header is a {type(header).__name__}, not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{bad} (__metadata__ must map names to strings)")
    data_bytes, spans, out = size - 8 - n, [], {}
    for key, entry in header.items():
        where = f"{bad} (tensor {show_value(key)}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: needs exactly dtype, shape and data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"{where}: dtype {show_value(dtype)} is not one of {', '.join(DTYPES)})")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_int(d) and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: shape {show_value(shape)} is not a list of up to {MAX_DIMS} sizes >= 0)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointError(f"{where}: data_offsets {show_value(offsets)} is not [begin, end])")
        begin, end = offsets
        nbytes = math.prod(shape) * DTYPES[dtype][0]
        if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
            raise CheckpointError(
                f"{where}: bytes {begin}..{end} do not hold {dtype} {shape} ({nbytes} bytes) "
                f"within the {data_bytes} data bytes)"
            )
        spans.append((begin, end))
        out[key] = (dtype, tuple(shape))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise CheckpointError(f"{bad} (tensor data overlaps or leaves a gap at byte {covered})")
        covered = end
    if covered != data_bytes:
        raise CheckpointError(f"{bad} ({data_bytes - covered} bytes after the last tensor)")
    return out


# --- the steps of loading, in order -----------------------------------------------------------------------


_NOT_FILES = (  # what a checkpoint's file may turn out to be instead, and how a message names it
    (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
)  # fmt: skip


def _check_regular_file(path: Path, missing: str) -> None:
    """Refuse anything but a regular file (links followed) at ``path``, saying what is there instead.

    A folder or a link to ``/dev/zero`` is not "missing", and must never be opened: reading a device or a
    named pipe can return endless bytes or block forever. ``missing`` is the message's end when nothing is there.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():  # a link whose target is gone
            raise CheckpointError(f"{path}: a link to {os.readlink(path)}, which does not exist; {missing}") from None
        raise CheckpointError(f"{path}: {missing}") from None
    except OSError as exc:  # EACCES on a parent folder, a loop of links: pathlib does not swallow these
        raise CheckpointError(f"{path}: cannot access ({exc.strerror}); check the folder's permissions") from exc
    if stat.S_ISREG(mode):
        return
    what = next((name for is_kind, name in _NOT_FILES if is_kind(mode)), "not a file")
    link = f" (through a link to {os.path.realpath(path)})" if path.is_symlink() else ""
    raise CheckpointError(f"{path}: is {what}{link}, where the checkpoint's {path.name} file is expected; train "
                          "again or pass another folder")  # fmt: skip


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}); check its permissions") from exc


def _resolve(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    try:
        # a folder named like one of the files (``ckpt/model.safetensors``) names its checkpoint, which says
        # that a folder stands where the file belongs
        if path.is_dir() and not (path.name in (WEIGHTS, META) and not (path / META).exists()):
            return path
        exists = path.exists()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot access ({exc.strerror}); check the folder's permissions") from exc
    if path.name in (WEIGHTS, META):
        return path.parent
    if not exists:
        raise CheckpointError(f"{path}: no such checkpoint; pass the folder written by `torchshrink train`")
    raise CheckpointError(f"{path}: not a checkpoint folder (expected {WEIGHTS} and {META} inside)")


def _read_meta(path: Path) -> dict[str, Any]:
    """model.json, bounded and with its model fields checked; other fields are the caller's business."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_META_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}); check its permissions") from exc
    if len(data) > MAX_META_BYTES:
        raise CheckpointError(f"{path}: over {MAX_META_BYTES:,} bytes; a checkpoint's JSON is a few KB (corrupt?)")
    meta = _parse_json(path, data, "JSON", constants=True)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a torchshrink checkpoint (format field missing or wrong)")
    name = meta.get("model")
    if not isinstance(name, str) or name not in MODELS:
        raise CheckpointError(f"{path}: model {show_value(name)} is not a registered model; known: {', '.join(MODELS)}")
    args = meta.get("model_args", {})
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: model_args must be an object of constructor arguments, got {show_value(args)}")
    _check_args(path, args)
    return meta


def _parse_json(path: Path, data: bytes, what: str, constants: bool) -> Any:
    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_DIGITS})")
        return int(text)

    def parse_constant(text: str) -> float:
        if not constants:
            raise ValueError(f"{text} is not a JSON value")
        return float(text)  # NaN in a metric of a diverged run is a fact worth keeping

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("a key appears twice in one object")
        return out

    try:
        obj = json.loads(data.decode("utf-8"), parse_int=parse_int, parse_constant=parse_constant,
                         object_pairs_hook=no_duplicates)  # fmt: skip
    except RecursionError:
        raise CheckpointError(f"{path}: {what} nested too deeply (at most {MAX_DEPTH} levels); corrupt") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable {what} ({first_line(str(exc))}); the file is corrupt") from None
    stack = [(obj, 1)]  # iterative: the depth check must not itself recurse
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{path}: {what} nested more than {MAX_DEPTH} levels deep; the file is corrupt")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return obj


def _check_args(path: Path, args: dict[str, Any]) -> None:
    """Constructor arguments are plain JSON values of sane size: a bound on what the constructor is handed."""
    stack: list[tuple[str, Any]] = [(f"model_args.{k}", v) for k, v in args.items()]
    seen = 0
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > MAX_ARG_ITEMS:
            raise CheckpointError(f"{path}: model_args holds over {MAX_ARG_ITEMS} values; the file is corrupt")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if abs(value) > MAX_ARG_INT:
                raise CheckpointError(f"{path}: {where} = {show_value(value)} is out of range (|value| <= {MAX_ARG_INT})")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise CheckpointError(f"{path}: {where} = {value} is not a finite number")
        elif isinstance(value, str):
            if len(value) > MAX_ARG_STR:
                raise CheckpointError(
                    f"{path}: {where} is a string of {len(value):,} characters (at most {MAX_ARG_STR})"
                )
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}", v) for k, v in value.items())


def _build(path: Path, name: str, args: dict[str, Any]) -> nn.Module:
    try:
        return build_model(name, **args)
    except Exception as exc:  # the arguments come from a file and the constructor may be any registered code
        raise CheckpointError(
            f"{path}: model_args {show_value(args)} do not build model {name!r} ({type(exc).__name__}: {first_line(str(exc), 100)})"
        ) from None


def _expected_tensors(path: Path, name: str, args: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Build the architecture on the meta device (no memory) and return name -> (shape, floating)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "zero-element tensor": the real build below says it again
        with torch.device("meta"):
            model = _build(path, name, args)
    elements = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if elements > MAX_ELEMENTS:
        raise CheckpointError(
            f"{path}: model {name!r} with model_args {show_value(args)} has {elements:,} elements, over the "
            f"{MAX_ELEMENTS:,} a checkpoint may hold; the arguments are corrupt"
        )
    return {k: (tuple(t.shape), t.is_floating_point()) for k, t in model.state_dict().items()}


def _match(
    path: Path,
    name: str,
    header: dict[str, tuple[str, tuple[int, ...]]],
    expected: dict[str, tuple[tuple[int, ...], bool]],
) -> None:
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match model {name!r} (missing {show_value(missing[:3])}, unexpected {show_value(unexpected[:3])})"
        )
    for key, (dtype, shape) in header.items():
        want, floating = expected[key]
        if shape != want:
            raise CheckpointError(f"{path}: tensor {key} has shape {list(shape)}, model {name!r} expects {list(want)}")
        if DTYPES[dtype][1] != floating:
            kind = "a floating-point" if floating else "an integer"
            raise CheckpointError(f"{path}: tensor {key} is {dtype}, model {name!r} expects {kind} tensor")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(path))
    except (OSError, safetensors.SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({first_line(str(exc))})") from exc


def _check_values(path: Path, state: dict[str, torch.Tensor]) -> None:
    """NaN/inf weights are refused (the model would be silently useless); all-zero weights only warn, once for
    the whole file, since a layer pruned to nothing is legal, if rarely what anyone wanted."""
    zeros = []
    for key, tensor in state.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(
                f"{path}: tensor {key} holds {bad:,} NaN or infinite values of {tensor.numel():,}; "
                "the training diverged: train again (lower --lr) or pass another checkpoint"
            )
        if key.endswith("weight") and not bool(tensor.any()):
            zeros.append(key)
    if zeros:
        warnings.warn(_zero_weights_note(path, zeros), TorchshrinkWarning, stacklevel=3)


def _zero_weights_note(path: Path, keys: list[str], shown: int = 3) -> str:
    """One line naming the all-zero weight tensors (the first ``shown`` of them): a file of zeros has dozens."""
    if len(keys) == 1:
        return f"{path}: weight tensor {keys[0]} is all zeros; the model will ignore that layer's inputs"
    names = ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
    return (f"{path}: {len(keys)} weight tensors are all zeros ({names}); the model will ignore those layers' "
            "inputs")  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


