"""Output paths, checked before any work: every command that writes calls :func:`check_output` first.

The rule, for a path given with ``--out`` (or its default):

1. Its parent must be a folder, or be creatable (no existing file on the way up), and writable.
2. No output goes inside a checkpoint folder (a folder with a torchshrink ``model.json``), except the
   records that belong there (``sensitivity.json``).
3. A folder output needs a folder or nothing at the path; a file output needs a file or nothing.
4. What is already there is replaced only when it is an earlier result of the same kind (a checkpoint over
   a checkpoint, a ``.tshrink`` file over a ``.tshrink`` file) or an empty folder. Anything else is refused
   unless ``--force``, and a folder holding files torchshrink did not write is refused even then: replacing a
   folder result deletes what was in it.
5. An output is never the command's own input.

Folder results are then built beside the path and renamed into place (:func:`torchshrink._io.atomic_folder`),
files through a temporary file (:func:`torchshrink._io.atomic_file`), so a failure leaves the old result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torchshrink.errors import TorchshrinkError

__all__ = [
    "OutputError",
    "OutputKind",
    "CHECKPOINT",
    "QUANTIZED",
    "COMPRESSED",
    "ONNX",
    "RECORD",
    "STUDY",
    "check_output",
    "add_force",
]


class OutputError(TorchshrinkError):
    """An output path that cannot or must not be written."""


def _json_object(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_checkpoint(folder: Path) -> bool:
    meta = folder / "model.json"
    return meta.is_file() and (_json_object(meta) or {}).get("format") == "torchshrink-checkpoint"


def _is_compressed(file: Path) -> bool:
    from torchshrink.pack.format import MAGIC

    try:
        with open(file, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _is_onnx(file: Path) -> bool:
    """An ONNX model: a protobuf ``ModelProto`` with an IR version and a graph (parsed, never executed)."""
    import onnx

    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception:  # protobuf raises its own DecodeError, and OSError for unreadable files
        return False
    return proto.ir_version > 0 and proto.HasField("graph")


@dataclass(frozen=True)
class OutputKind:
    """What a command writes at its output path, and how to recognise an earlier result of the same kind."""

    what: str  # how messages name it, e.g. "checkpoint folder"
    folder: bool  # a folder (replaced whole) or a single file
    is_previous: Callable[[Path], bool]  # whether an existing path holds an earlier result of this kind
    files: frozenset[str] = frozenset()  # folder kinds: the names it writes (others in the way are the user's)
    replaced: bool = True  # folder kinds: replaced whole (False: written into, as the resumable study is)
    in_checkpoint: bool = False  # may live inside a checkpoint folder
    example: str = ""  # a valid name, for messages


CHECKPOINT = OutputKind(
    "checkpoint folder", True, _is_checkpoint,
    frozenset({"model.json", "model.safetensors", "rewind.safetensors", "pruning.json", "sensitivity.json"}),
    example="runs/baseline",
)  # fmt: skip
QUANTIZED = OutputKind(
    "quantization folder", True, lambda p: (p / "quantization.json").is_file(),
    frozenset({"quantization.json", "codes.safetensors"}), example="runs/w4a4",
)  # fmt: skip
COMPRESSED = OutputKind("compressed file", False, _is_compressed, example="model.tshrink")
ONNX = OutputKind("ONNX file", False, lambda p: p.suffix == ".onnx" and _is_onnx(p), example="model.onnx")
RECORD = OutputKind(
    "JSON record", False, lambda p: _json_object(p) is not None, in_checkpoint=True, example="record.json"
)
STUDY = OutputKind(
    "study folder", True, lambda p: (p / "cache").is_dir() or (p / "results.json").is_file(),
    replaced=False, example="runs/study",
)  # fmt: skip
_REPLACEABLE = CHECKPOINT.files | QUANTIZED.files  # what a folder about to be replaced may hold, and lose


def add_force(p: argparse.ArgumentParser) -> None:
    """The ``--force`` option of every command that writes."""
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output that is not an earlier result of this command (never one holding "
        "files torchshrink did not write)",
    )


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _check_parent(path: Path, kind: OutputKind, option: str) -> None:
    """Rule 1 and 2: the nearest existing ancestor is a writable folder, and none is a checkpoint folder."""
    existing = None
    for ancestor in Path(os.path.abspath(path)).parents:  # abspath: "a/../b" is under the folder of b
        if existing is None and (ancestor.exists() or ancestor.is_symlink()):
            if not ancestor.is_dir():
                raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder; choose a path in a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {path}: cannot write into {ancestor} (permission denied)")
            existing = ancestor
        if existing is not None and not kind.in_checkpoint and _is_checkpoint(ancestor):
            raise OutputError(f"{option} {path}: inside the checkpoint folder {ancestor}; writing there would "
                              f"mix with the checkpoint's files, choose a path outside it")  # fmt: skip


def _names(folder: Path, option: str) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        raise OutputError(
            f"{option} {folder}: cannot list the folder ({exc.strerror}); check its permissions"
        ) from None


def check_output(
    path: str | os.PathLike[str],
    kind: OutputKind,
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    option: str = "--out",
) -> Path:
    """Check that ``path`` can take a result of ``kind`` (see the module's rule); return it as a ``Path``.

    Nothing is created or changed: call this before any work, then write with ``atomic_folder`` or
    ``atomic_file``.

    Args:
        path: the output path as the user gave it (messages quote it as given).
        kind: what will be written there.
        force: replace an existing output of another kind (``--force``).
        inputs: paths the command reads; the output may be none of them.
        option: the option that named ``path``, for messages.

    Raises:
        OutputError: the path cannot be written, or must not be; the message names the path, what is there
            and the fix.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_output(folder / "new" / "m.tshrink", COMPRESSED) == folder / "new" / "m.tshrink"
        True
    """
    path = Path(path)
    _check_parent(path, kind, option)
    for source in inputs:
        if _same(path, Path(source)):
            raise OutputError(f"{option} {path}: is the input {source}; choose another path")
    if not (path.exists() or path.is_symlink()):
        return path
    if not kind.folder:
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a folder; give a file name such as {kind.example}")
        if not path.is_file():
            raise OutputError(f"{option} {path}: exists and is not a regular file; choose another path")
        if not (kind.is_previous(path) or force):
            raise OutputError(f"{option} {path}: exists and is not a {kind.what}; pass --force to overwrite it, "
                              "or choose another path")  # fmt: skip
        return path
    if not path.is_dir():
        raise OutputError(f"{option} {path}: exists and is not a folder; choose another path such as {kind.example}")
    names = _names(path, option)
    # torchshrink's own hidden temporaries (".NAME.PID.RANDOM.tmp") count as its files; anything else is the user's
    strangers = [n for n in names if n not in _REPLACEABLE and not n.endswith(".tmp")] if kind.replaced else []
    if strangers:
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise OutputError(f"{option} {path}: the folder holds files torchshrink did not write ({shown}), which "
                          "replacing it would delete; choose a new or empty folder")  # fmt: skip
    # only hidden entries left (temporaries of a killed run, a study's lock): as good as empty
    empty = all(n.startswith(".") for n in names)
    if not (empty or kind.is_previous(path) or force):
        raise OutputError(f"{option} {path}: the folder exists and does not hold a {kind.what}; pass --force to "
                          f"{'replace' if kind.replaced else 'write into'} it, or choose another folder")  # fmt: skip
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex: what a record names to say which file it describes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_mismatch(path: str | Path) -> str | None:
    """A one-line note when ``PATH.json`` beside a file names another file's SHA-256 (a run killed between
    writing the record and putting the file in place), else ``None``."""
    path = Path(path)
    record = _json_object(path.with_name(path.name + ".json"))
    named = record.get("file_sha256") if record else None
    if not isinstance(named, str) or named == file_sha256(path):
        return None
    return (f"note: {path}.json describes another file (its file_sha256 differs from {path.name}'s): an interrupted "
            "run left it; rerun the command that made the file to get its record")  # fmt: skip
