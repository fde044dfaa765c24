"""Atomic files and folders (``torchshrink._io``): a result is whole or absent, with the user's file modes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchshrink._io as io
from torchshrink._io import (
    atomic_copy,
    atomic_file,
    atomic_folder,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temps,
)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    """A process id no process can have: above the kernel's limit."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1


@pytest.fixture
def umask():
    """Set the umask for one test and restore it after (the mode of new files follows it)."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(saved)


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert path.read_text() == '{\n  "x": 2\n}\n'
    assert _entries(tmp_path) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """A writer that dies half-way (here: raises after writing some bytes) changes nothing."""
    path = tmp_path / "report.md"
    path.write_text("old report")

    def half(tmp: Path) -> None:
        tmp.write_text("new rep")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old report"
    assert _entries(tmp_path) == ["report.md"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a" / "b" / "m.tshrink") as tmp:
        tmp.write_bytes(b"774 bytes of a file that does not load")
        raise RuntimeError("verification failed")
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, umask, mask, mode):
    """Not mkstemp's 0600: the mode any other new file of the user gets."""
    umask(mask)
    atomic_write_bytes(tmp_path / "results.json", b"{}")
    atomic_write(tmp_path / "plot.png", lambda tmp: tmp.write_bytes(b"png"))  # the writer opens the path itself
    atomic_copy(tmp_path / "plot.png", tmp_path / "copy.png")

    def replaces_it(tmp: Path) -> None:  # as safetensors 0.8 does: its own 0600 file, renamed over the path
        (tmp.parent / "own").write_bytes(b"weights")
        os.chmod(tmp.parent / "own", 0o600)
        os.replace(tmp.parent / "own", tmp)

    atomic_write(tmp_path / "model.safetensors", replaces_it)
    for name in ("results.json", "plot.png", "copy.png", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_folders_get_the_users_umask(tmp_path, umask, mask, mode):
    umask(mask)
    with atomic_folder(tmp_path / "ckpt") as tmp:
        (tmp / "model.json").write_text("{}")
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == mode


def test_atomic_copy_copies_the_bytes(tmp_path):
    (tmp_path / "src.tshrink").write_bytes(bytes(range(256)) * 10)
    atomic_copy(tmp_path / "src.tshrink", tmp_path / "out" / "dst.tshrink")
    assert (tmp_path / "out" / "dst.tshrink").read_bytes() == bytes(range(256)) * 10


def test_atomic_folder_replaces_an_existing_folder_whole(tmp_path):
    """The new folder takes the old one's place: no file of the old one survives beside the new ones."""
    old = tmp_path / "ckpt"
    old.mkdir()
    (old / "model.json").write_text("old")
    (old / "rewind.safetensors").write_text("old rewind point")
    with atomic_folder(old) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".ckpt.")  # beside it: the same filesystem
        (tmp / "model.json").write_text("new")
        assert (old / "model.json").read_text() == "old"  # nothing visible until the end
    assert _entries(old) == ["model.json"] and (old / "model.json").read_text() == "new"
    assert _entries(tmp_path) == ["ckpt"]


def test_a_failure_mid_folder_leaves_the_old_folder(tmp_path):
    """Killed between the weights and the JSON: the old checkpoint is what remains, not a mix."""
    old = tmp_path / "ckpt"
    old.mkdir()
    (old / "model.safetensors").write_text("old weights")
    (old / "model.json").write_text("old json")
    with pytest.raises(KeyboardInterrupt), atomic_folder(old) as tmp:
        (tmp / "model.safetensors").write_text("new weights")
        raise KeyboardInterrupt
    assert (old / "model.safetensors").read_text() == "old weights"
    assert (old / "model.json").read_text() == "old json"
    assert _entries(tmp_path) == ["ckpt"]


def test_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    old = tmp_path / "ckpt"
    old.mkdir()
    (old / "model.json").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".ckpt.") and not Path(src).name.endswith(".old.tmp"):
            raise OSError("simulated failure moving the new folder in")
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"), atomic_folder(old) as tmp:
        (tmp / "model.json").write_text("new")
    assert (old / "model.json").read_text() == "old"
    assert _entries(tmp_path) == ["ckpt"]


KILLED_MID_FOLDER = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("tsio", sys.argv[1])
tsio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tsio)
with tsio.atomic_folder(sys.argv[2]) as tmp:
    (tmp / "model.safetensors").write_text("new weights")
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between the two files
"""


def test_a_killed_process_leaves_the_old_folder_and_its_temporary_is_cleaned_next_time(tmp_path):
    old = tmp_path / "ckpt"
    old.mkdir()
    (old / "model.json").write_text("old")
    r = subprocess.run([sys.executable, "-c", KILLED_MID_FOLDER, io.__file__, str(old)], timeout=60)
    assert r.returncode == -9
    assert _entries(old) == ["model.json"] and (old / "model.json").read_text() == "old"
    (stale,) = [p for p in tmp_path.iterdir() if p.name != "ckpt"]  # hidden, named after its dead process
    assert stale.name.startswith(".ckpt.") and stale.name.endswith(".tmp")
    with atomic_folder(old) as tmp:
        (tmp / "model.json").write_text("new")
    assert _entries(tmp_path) == ["ckpt"] and (old / "model.json").read_text() == "new"


def test_stale_temporaries_of_dead_processes_are_removed_others_kept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale_file = tmp_path / f".model.json.{dead}.0123abcd.tmp"
    stale_folder = tmp_path / f".ckpt.{dead}.0123abcd.tmp"
    stale_old = tmp_path / f".ckpt.{dead}.0123abcd.old.tmp"
    live = tmp_path / f".ckpt.{alive}.0123abcd.tmp"  # a run still going: never touched
    other_file = tmp_path / f".ckpt.1.{dead}.0123abcd.tmp"  # a temporary of "ckpt.1", not of "ckpt"
    foreign = tmp_path / ".ckpt.notes.tmp"  # not a name torchshrink makes
    stale_file.write_text("x")
    for folder in (stale_folder, stale_old, live):
        folder.mkdir()
        (folder / "model.safetensors").write_text("x")
    other_file.write_text("x")
    foreign.write_text("x")
    (tmp_path / "ckpt").mkdir()  # the new result is in place: the old one moved aside is deleted
    assert remove_stale_temps(tmp_path / "model.json") == [stale_file]
    assert sorted(remove_stale_temps(tmp_path / "ckpt")) == sorted([stale_folder, stale_old])
    assert all(p.exists() for p in (live, other_file, foreign))


def test_atomic_write_cleans_a_stale_temporary_of_its_file(tmp_path):
    stale = tmp_path / f".results.json.{_dead_pid()}.0123abcd.tmp"
    stale.write_text('{"trunc')
    atomic_write_json(tmp_path / "results.json", {})
    assert _entries(tmp_path) == ["results.json"]


def test_an_old_folder_moved_aside_by_a_killed_run_goes_back_into_place_never_deleted(tmp_path):
    """A kill between atomic_folder's two renames: no folder at the path, the old one aside, the new one whole."""
    dead = _dead_pid()
    old = tmp_path / f".ckpt.{dead}.0123abcd.old.tmp"
    new = tmp_path / f".ckpt.{dead}.4567cdef.tmp"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "model.json").write_text(text)
    with atomic_folder(tmp_path / "ckpt") as tmp:  # the next run: its cleanup restores, then it replaces
        assert (tmp_path / "ckpt" / "model.json").read_text() == "old"
        (tmp / "model.json").write_text("newer")
    assert _entries(tmp_path) == ["ckpt"] and (tmp_path / "ckpt" / "model.json").read_text() == "newer"


def test_a_nested_temporary_of_a_dead_process_is_cleaned(tmp_path):
    """A writer handed a temporary path (the command's) that writes atomically itself makes a temporary of a
    temporary; once both processes are dead it is stale like any other."""
    dead = _dead_pid()
    nested = tmp_path / f"..m.tshrink.{dead}.0123abcd.tmp.{dead}.89abcdef.tmp"
    live = tmp_path / f"..m.tshrink.{dead}.0123abcd.tmp.{os.getpid()}.89abcdef.tmp"
    nested.write_text("x")
    live.write_text("x")
    assert remove_stale_temps(tmp_path / "m.tshrink") == [nested]
    assert live.exists()


@pytest.fixture
def writes_opened():
    """The paths opened for writing (audit events) while the test runs: a final path must never be one of
    them, only the target of a rename, or a reader could see a half-written file."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR):
                seen.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # cannot be removed: switched off after the test instead
    yield seen
    active[0] = False


def test_final_paths_are_only_ever_renamed_into_never_written_in_place(tmp_path, writes_opened):
    import torch

    from torchshrink import QuantConfig, save_compressed
    from torchshrink.checkpoint import save_checkpoint
    from torchshrink.models import build_model
    from torchshrink.recipes import ptq

    (tmp_path / "old.bin").write_bytes(b"old")
    finals = [tmp_path / n for n in ("a.bin", "b.json", "c.bin", "d", "m.tshrink", "ckpt")]
    for final in finals[:3]:
        final.write_bytes(b"previous")  # replaced, not overwritten
    writes_opened.clear()
    atomic_write_bytes(finals[0], b"new")
    atomic_write_json(finals[1], {"a": 1})
    atomic_copy(tmp_path / "old.bin", finals[2])
    with atomic_folder(finals[3]) as tmp:
        (tmp / "x.txt").write_text("whole")
    q = ptq(build_model("cnn_tiny"), [torch.randn(4, 1, 28, 28)], QuantConfig(bits=8)).model
    save_compressed(q, finals[4], "cnn_tiny")
    save_checkpoint(finals[5], build_model("cnn_tiny"), "cnn_tiny")
    written = {Path(p).resolve() for p in writes_opened}
    assert written, "the audit hook saw no write"
    assert not written & {f.resolve() for f in finals}
    assert not any(f.resolve() in p.parents for p in written for f in finals[3:4])  # nor inside the final folder
    assert (finals[3] / "x.txt").read_text() == "whole"
