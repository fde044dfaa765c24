"""Atomic writes: a crash leaves either the old result or the new one, never half of one.

A file is written to a temporary file beside it and renamed over it; a folder is built under a temporary
name beside it and renamed into place once complete. Temporary names are ``.NAME.PID.RANDOM.tmp`` in the
target's folder (the same filesystem, so the rename is atomic); the process id lets a later run remove the
ones a killed process left behind without touching those of a run still going. New files and folders get the
user's umask (0644 / 0755 under umask 022), like any other file the user creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_copy",
    "atomic_file",
    "atomic_folder",
    "remove_stale_temps",
    "TMP_SUFFIX",
]

TMP_SUFFIX = ".tmp"


def _temp_name(path: Path, tag: str = "") -> Path:
    """A fresh temporary path beside ``path``: ``.NAME.PID.RANDOM[.TAG].tmp``."""
    extra = f".{tag}" if tag else ""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{extra}{TMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    return True


def _stale_pattern(path: Path) -> re.Pattern[str]:
    # exactly what _temp_name makes (so the temporaries of a file named "a.123" are never taken for those of "a"),
    # also nested: a temporary of a temporary, ``..NAME.PID.RAND.tmp.PID.RAND.tmp``, made by a writer that writes
    # atomically to a path it was handed, which is itself a temporary
    one = rf"\.\d+\.[0-9a-f]{{8}}(?:\.old)?{re.escape(TMP_SUFFIX)}"
    return re.compile(rf"\.+{re.escape(path.name)}((?:{one})+)")


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``path`` left by processes that no longer run; return what was removed.

    Only names of the form :func:`atomic_write` and :func:`atomic_folder` make (``.NAME.PID.*.tmp``, nested
    ones included) whose every ``PID`` is dead are touched; anything else is left alone (and ignored by every
    reader, as it is hidden). A previous result moved aside by :func:`atomic_folder` (``.NAME.PID.*.old.tmp``)
    while no ``path`` exists (the writer was killed between its two renames) is put back at ``path``, never deleted.
    """
    path = Path(path)
    removed = []
    pattern = _stale_pattern(path)
    stale_ones = sorted(path.parent.glob(".*" + TMP_SUFFIX), key=lambda p: not p.name.endswith(".old" + TMP_SUFFIX))
    for stale in stale_ones:  # the moved-aside old results first: one of them may go back into place
        match = pattern.fullmatch(stale.name)
        if match is None or any(_pid_alive(int(pid)) for pid in re.findall(r"\.(\d+)\.[0-9a-f]{8}", match[1])):
            continue
        if stale.name.endswith(".old" + TMP_SUFFIX) and not (path.exists() or path.is_symlink()):
            os.rename(stale, path)  # the old result, back where it was: the new one never got into place
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the rename itself is atomic either way)."""
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    """``mkdir -p folder``; return the folders it created, deepest first (to undo on failure)."""
    created = []
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        created.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary file beside ``path``; on normal exit it replaces ``path``, on error it is removed.

    Use it when the writer wants a path of its own (a library that saves to a file name). The folders created
    for ``path`` are removed again on error, so a failure leaves nothing behind.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_file(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("hello")
        >>> (folder / "a.txt").read_text()
        'hello'
    """
    path = Path(path)
    created = _make_parents(path.parent)
    remove_stale_temps(path)
    while True:
        tmp = _temp_name(path)
        try:
            # 0o666 less the umask: the mode any other new file of the user gets (mkstemp would give 0600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except BaseException:
            _remove_empty(created)
            raise
    mode = os.fstat(fd).st_mode & 0o777  # 0o666 less the umask, read without touching the process's umask
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have replaced the file: sync what is there now
            if os.fstat(f.fileno()).st_mode & 0o777 != mode:  # e.g. safetensors saves via a 0600 file of its own
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic; it is removed if
    ``write`` raises (or the process is interrupted), and a later call removes one a killed process left.
    """
    with atomic_file(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the bytes of ``src`` to ``dst`` atomically (a kill mid-copy leaves ``dst`` as it was)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on normal exit it takes the place of ``path`` whole.

    An existing ``path`` is replaced only once the new folder is complete: it is renamed aside, the new one
    renamed in, then the old one deleted. If the body raises, the temporary folder (and any parent folders
    made for it) is removed and ``path`` is untouched. A kill leaves only hidden ``.NAME.PID.*.tmp`` folders,
    which the next call for the same ``path`` removes; a kill between the two renames leaves the old folder
    aside as ``.NAME.PID.*.old.tmp`` and no folder at ``path`` (never a mix of old and new files), and the next
    call for ``path`` first puts the old folder back (:func:`remove_stale_temps`).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_folder(folder / "result") as tmp:
        ...     _ = (tmp / "a.txt").write_text("whole")
        >>> sorted(p.name for p in folder.iterdir())
        ['result']
    """
    path = Path(path)
    created = _make_parents(path.parent)
    remove_stale_temps(path)
    tmp = _temp_name(path)
    try:
        tmp.mkdir(0o777)  # less the umask, like mkdir(1); mkdtemp would make it 0700
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield tmp
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    _fsync_dir(path.parent)


def _replace_folder(new: Path, path: Path) -> None:
    """Rename the complete folder ``new`` to ``path``, replacing what is there only after it is complete."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    old = _temp_name(path, "old")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)  # put the previous result back: the command failed, so it changes nothing
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
