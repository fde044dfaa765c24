"""The output-path check every writing command runs before any work (``torchshrink.cli.outputs``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchshrink.cli.outputs import CHECKPOINT, COMPRESSED, QUANTIZED, RECORD, STUDY, OutputError, check_output
from torchshrink.pack.format import MAGIC


def _checkpoint(folder: Path) -> Path:
    """A folder that looks like a checkpoint to the check (it reads model.json's format only)."""
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"format": "torchshrink-checkpoint", "model": "cnn"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(OutputError, match=match) as info:
        check_output(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


@pytest.mark.parametrize("kind", [CHECKPOINT, QUANTIZED, COMPRESSED, STUDY])
def test_a_new_path_is_accepted_and_nothing_is_created(tmp_path, kind):
    """A path under folders that do not exist yet is fine, and checking it creates none of them."""
    path = tmp_path / "a" / "b" / "out"
    assert check_output(path, kind) == path
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("kind", [CHECKPOINT, QUANTIZED, COMPRESSED, RECORD, STUDY])
def test_a_file_on_the_way_up_is_refused(tmp_path, kind):
    """An output under an existing file: one line naming the file, whatever the kind."""
    (tmp_path / "file").write_text("x")
    _refused("file is a file, not a folder", tmp_path / "file" / "sub" / "out", kind)
    _refused("file is a file, not a folder", tmp_path / "file" / "out", kind, force=True)


@pytest.mark.parametrize("kind", [CHECKPOINT, QUANTIZED, STUDY])
def test_a_folder_output_refuses_an_existing_file(tmp_path, kind):
    (tmp_path / "out").write_text("x")
    _refused("exists and is not a folder", tmp_path / "out", kind, force=True)


@pytest.mark.parametrize("kind", [COMPRESSED, RECORD])
def test_a_file_output_refuses_an_existing_folder(tmp_path, kind):
    (tmp_path / "out").mkdir()
    _refused("is a folder; give a file name", tmp_path / "out", kind, force=True)


def test_an_existing_file_is_replaced_only_if_it_is_of_the_same_kind(tmp_path):
    """A .tshrink file may be replaced; any other file needs --force."""
    previous = tmp_path / "m.tshrink"
    previous.write_bytes(MAGIC + b"rest of an earlier file")
    assert check_output(previous, COMPRESSED) == previous
    other = tmp_path / "weights.bin"
    other.write_bytes(b"somebody's weights")
    _refused("not a compressed file; pass --force", other, COMPRESSED)
    assert check_output(other, COMPRESSED, force=True) == other
    assert other.read_bytes() == b"somebody's weights"  # checking never writes


def test_nothing_goes_inside_a_checkpoint_folder_but_its_records(tmp_path):
    """``compress --out CKPT/model.safetensors`` once overwrote a checkpoint's weights."""
    ckpt = _checkpoint(tmp_path / "ckpt")
    _refused("inside the checkpoint folder", ckpt / "model.safetensors", COMPRESSED, force=True)
    _refused("inside the checkpoint folder", ckpt / "sub" / "m.tshrink", COMPRESSED)
    _refused("inside the checkpoint folder", ckpt / "pruned", CHECKPOINT, force=True)
    assert check_output(ckpt / "sensitivity.json", RECORD) == ckpt / "sensitivity.json"


def test_a_checkpoint_folder_may_be_replaced_by_a_checkpoint(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    (ckpt / "rewind.safetensors").write_bytes(b"early weights")
    assert check_output(ckpt, CHECKPOINT) == ckpt


def test_a_folder_of_another_kind_needs_force(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    _refused("does not hold a quantization folder; pass --force", ckpt, QUANTIZED)
    assert check_output(ckpt, QUANTIZED, force=True) == ckpt


def test_a_folder_with_the_users_files_is_never_replaced(tmp_path):
    """Replacing a folder result deletes what is in it: not the user's own files, even with --force."""
    ckpt = _checkpoint(tmp_path / "ckpt")
    (ckpt / "notes.txt").write_text("mine")
    _refused(r"files torchshrink did not write \(notes.txt\)", ckpt, CHECKPOINT, force=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("mine")
    _refused("thesis.tex", tmp_path / "home", QUANTIZED, force=True)


def test_an_empty_folder_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", CHECKPOINT) == tmp_path / "empty"


def test_hidden_temporaries_do_not_count_as_the_users_files(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    (ckpt / ".model.json.123.deadbeef.tmp").write_text("left by a killed run")
    assert check_output(ckpt, CHECKPOINT) == ckpt


def test_the_output_is_never_the_input(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    _refused("is the input", ckpt, CHECKPOINT, inputs=[ckpt])
    (tmp_path / "link").symlink_to(ckpt)
    _refused("is the input", tmp_path / "link", CHECKPOINT, force=True, inputs=[ckpt])
    _refused("is the input", tmp_path / "x" / ".." / "ckpt", CHECKPOINT, inputs=[ckpt])


def test_a_study_folder_is_written_into_not_replaced(tmp_path):
    """A previous study resumes; a folder holding anything else needs --force, which keeps its files."""
    study = tmp_path / "study"
    (study / "cache").mkdir(parents=True)
    (study / "notes.txt").write_text("mine")
    assert check_output(study, STUDY) == study
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2")
    _refused("does not hold a study folder; pass --force to write into it", other, STUDY)
    assert check_output(other, STUDY, force=True) == other


def test_the_message_names_the_option(tmp_path):
    (tmp_path / "f").write_text("x")
    message = _refused("is a file", tmp_path / "f" / "x", CHECKPOINT, option="--save-to")
    assert message.startswith(f"--save-to {tmp_path / 'f' / 'x'}: ")


def test_a_record_beside_another_file_is_said(tmp_path):
    from torchshrink.cli.outputs import file_sha256, record_mismatch

    f = tmp_path / "m.tshrink"
    f.write_bytes(b"the new file")
    (tmp_path / "m.tshrink.json").write_text(json.dumps({"file_sha256": file_sha256(f)}))
    assert record_mismatch(f) is None
    f.write_bytes(b"the old file, a kill left it in place")  # the record was written, the file not renamed in
    assert "m.tshrink.json describes another file" in record_mismatch(f)
    (tmp_path / "m.tshrink.json").write_text(json.dumps({"bits": 4}))  # an older record, naming no file
    assert record_mismatch(f) is None
