from __future__ import annotations

import gzip
import os
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch

from torchshrink.data import (
    FILES,
    TensorBatches,
    augment,
    find_data_dir,
    load_fashion_mnist,
    normalize,
    random_erase,
    read_idx,
)
from torchshrink.data.fashion_mnist import idx_bytes
from torchshrink.errors import DataError


def test_real_files_parse_with_official_shapes(fmnist):
    assert fmnist.train_x.shape == (55000, 1, 28, 28) and fmnist.train_x.dtype == torch.uint8
    assert fmnist.val_x.shape == (5000, 1, 28, 28)
    assert fmnist.test_x.shape == (10000, 1, 28, 28)
    assert fmnist.test_y.bincount().tolist() == [1000] * 10  # the official test set is balanced
    all_train = torch.cat([fmnist.train_y, fmnist.val_y])
    assert all_train.bincount().tolist() == [6000] * 10


def test_validation_split_is_fixed_and_disjoint(data_dir, fmnist):
    again = load_fashion_mnist(data_dir)
    assert torch.equal(again.val_x, fmnist.val_x)
    # no validation image is also a training image at the same position of the raw file
    raw = read_idx(Path(data_dir) / "train-images-idx3-ubyte.gz")
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(raw[perm[:5000]].unsqueeze(1), fmnist.val_x)
    assert len(set(perm[:5000].tolist()) & set(perm[5000:].tolist())) == 0


def _copy(data_dir: str, tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(Path(data_dir) / name, tmp_path / name)
    return tmp_path


def _rewrite(path: Path, mutate) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(mutate(raw)))


@pytest.mark.parametrize(
    "case, mutate",
    [
        ("truncated", lambda raw: raw[: len(raw) // 2]),
        ("flipped byte", lambda raw: raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]),
        ("wrong magic", lambda raw: struct.pack(">I", 1234) + raw[4:]),
    ],
)
def test_corrupt_file_fails_checksum_with_clear_message(data_dir, tmp_path, case, mutate):
    folder = _copy(data_dir, tmp_path)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    _rewrite(target, mutate)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: SHA-256.*delete it"):
        load_fashion_mnist(folder)


def test_structure_is_validated_even_without_checksum(data_dir, tmp_path):
    folder = _copy(data_dir, tmp_path)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    _rewrite(target, lambda raw: struct.pack(">I", 1234) + raw[4:])
    with pytest.raises(DataError, match="magic number 1234"):
        read_idx(target, verify=False)
    shutil.copy(Path(data_dir) / target.name, target)
    _rewrite(target, lambda raw: raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(target, verify=False)
    shutil.copy(Path(data_dir) / target.name, target)
    _rewrite(target, lambda raw: raw[:-1] + bytes([42]))
    with pytest.raises(DataError, match="label 42"):
        read_idx(target, verify=False)


def test_not_gzip_and_missing_files(data_dir, tmp_path):
    folder = _copy(data_dir, tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a valid gzip"):
        load_fashion_mnist(folder)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-images-idx3-ubyte.gz.*--data-dir"):
        find_data_dir(folder)


def test_environment_variable_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHSHRINK_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path)):
        find_data_dir()


def test_normalize_statistics(fmnist):
    x = normalize(fmnist.train_x[:20000])
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02


def test_augment_is_a_shifted_or_flipped_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28) + 1
    out = augment(x, g, pad=2)
    assert out.shape == x.shape
    for i in range(2):
        candidates = []
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        flipped = torch.nn.functional.pad(x[i].flip(-1), (2, 2, 2, 2))
        for image in (padded, flipped):
            candidates += [image[:, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_random_erase_replaces_one_rectangle_in_the_chosen_share():
    g = torch.Generator().manual_seed(0)
    x = torch.full((400, 1, 28, 28), 100.0)  # noise never lands on 100 exactly
    out = random_erase(x, g, share=0.5, area=(0.02, 0.25))
    changed = out != x
    erased = changed.flatten(1).any(1)
    assert 0.4 < float(erased.float().mean()) < 0.6
    for i in torch.nonzero(erased).flatten().tolist():
        rows = torch.nonzero(changed[i, 0].any(1)).flatten()
        cols = torch.nonzero(changed[i, 0].any(0)).flatten()
        # the changed pixels fill exactly the box they span, of an area in the range asked (after rounding)
        box = changed[i, 0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all()) and int(changed[i].sum()) == box.numel()
        assert 1 <= box.numel() <= 0.25 * 784 * 1.6
    assert torch.equal(random_erase(x, torch.Generator().manual_seed(1), share=0.0), x)


def test_training_batches_with_erasing_differ_only_where_erased(small):
    plain = next(iter(small.train_batches(64, seed=3).seeded(3)))[0]
    erased = next(iter(small.train_batches(64, seed=3, erase=1.0).seeded(3)))[0]
    assert not torch.equal(plain, erased)
    assert float((plain != erased).float().mean()) < 0.3  # rectangles, not whole images
    with pytest.raises(DataError, match="erase=1.5"):
        small.train_batches(64, erase=1.5)


def test_batches_cover_every_item_once():
    x = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in TensorBatches(x, y, 3, shuffle=True)])
    assert sorted(seen.tolist()) == list(range(10))


# --- malformed files: one DataError naming the file, bounded memory -----------------------------------------


def _synthetic(name: str) -> bytes:
    """Valid-looking IDX content for ``name`` (all-zero pixels, labels 0..9): structure without the checksum."""
    _, magic, count = FILES[name]
    if magic == 2051:
        return struct.pack(">IIII", magic, count, 28, 28) + bytes(28 * 28 * count)
    return struct.pack(">II", magic, count) + bytes(i % 10 for i in range(count))


def _write(folder: Path, name: str, raw: bytes) -> Path:
    path = folder / name
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def _bomb(size: int) -> bytes:
    """Gzip of ``size`` zeros in ~size/1000 bytes: after a full flush each MiB compresses alike, so it is repeated
    (the trailer's checksum is wrong, but only a loader that inflated everything would ever reach it)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return first + again * ((size >> 20) - 1) + packer.flush()


def test_synthetic_files_pass_the_structure_checks(tmp_path):
    for name in ("t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        data = read_idx(_write(tmp_path, name, _synthetic(name)), verify=False)
        assert data.shape[0] == FILES[name][2] and data.dtype == torch.uint8
        assert len(_synthetic(name)) == idx_bytes(name)


@pytest.mark.parametrize("verify", [False, True])
def test_gzip_bomb_is_refused_within_the_official_size(tmp_path, verify):
    """4 GiB of zeros in a 4 MB file: decompression stops at the official size (7,840,016 bytes here)."""
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(_bomb(4 << 30))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: decompresses to more than 7,840,016 bytes"):
            read_idx(path, verify=verify)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20  # the compressed file and a bounded output (and a copy), not 4 GiB


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        ("t10k-images-idx3-ubyte.gz", lambda raw: raw[:12], "12 bytes is too short for an IDX header"),
        ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:5], "5 bytes is too short for an IDX header"),
        ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:-10], "9998 bytes decompressed, expected 10008 \\(truncated"),
        ("t10k-labels-idx1-ubyte.gz", lambda raw: raw + b"\0", "decompresses to more than 10,008 bytes"),
        ("t10k-labels-idx1-ubyte.gz", lambda raw: struct.pack(">I", 7) + raw[4:], "IDX magic number 7, expected 2049"),
        ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:4] + struct.pack(">I", 9999) + raw[8:], "9999 items, expected"),
        ("t10k-images-idx3-ubyte.gz", lambda raw: raw[:8] + struct.pack(">II", 1, 784) + raw[16:], "images are 1x784"),
        (
            "t10k-images-idx3-ubyte.gz",
            lambda raw: _synthetic("t10k-labels-idx1-ubyte.gz"),
            "IDX magic number 2049, expected 2051 \\(it holds labels, the name says images: are two files swapped",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            lambda raw: _synthetic("t10k-images-idx3-ubyte.gz"),
            "over 14,204 bytes, more than the official file can be \\(it holds images, the name says labels: are two files swapped",
        ),
    ],
)
def test_malformed_idx_content_is_one_data_error_naming_the_file(tmp_path, name, mutate, message):
    path = _write(tmp_path, name, mutate(_synthetic(name)))
    with pytest.raises(DataError, match=f"{name}: {message}") as info:
        read_idx(path, verify=False)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda gz: gz[: len(gz) // 2], "gzip stream ends early \\(truncated"),
        (lambda gz: gz + b"garbage", "not a valid gzip file"),
        (lambda gz: gzip.compress(b"") * 100 + gz, "more than 16 gzip members"),
        (lambda gz: b"", "empty file"),
    ],
)
def test_malformed_gzip_is_one_data_error_naming_the_file(tmp_path, mutate, message):
    name = "t10k-labels-idx1-ubyte.gz"
    path = _write(tmp_path, name, _synthetic(name))
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(DataError, match=f"{name}: {message}"):
        read_idx(path, verify=False)


def test_gzip_members_and_zero_padding_are_accepted(tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    raw = _synthetic(name)
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]) + bytes(32))
    assert read_idx(path, verify=False).tolist() == list(raw[8:])


def test_swapped_real_files_fail_the_checksum_with_a_hint(data_dir, tmp_path):
    folder = _copy(data_dir, tmp_path)
    labels, images = folder / "t10k-labels-idx1-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz"
    shutil.copy(Path(data_dir) / labels.name, images)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: SHA-256 .*it holds labels.*swapped"):
        read_idx(images)
    shutil.copy(Path(data_dir) / images.name, labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: over 14,204 bytes.*it holds images.*swapped"):
        read_idx(labels)


def test_oversized_compressed_file_is_refused_unread(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(20_000))  # more than 10,008 bytes can ever take compressed (+1% + 4 KiB)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: over 14,204 bytes"):
        read_idx(path, verify=False)


def test_unreadable_folder_and_file_are_data_errors_with_the_fix(data_dir, tmp_path, monkeypatch):
    folder = _copy(data_dir, tmp_path)
    real_is_file, real_open = Path.is_file, Path.open

    def no_folder(self):
        if self.parent == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", no_folder)
    with pytest.raises(DataError, match=f"{folder}: cannot open the folder \\(Permission denied\\); make it readable"):
        find_data_dir(folder)
    monkeypatch.setattr(Path, "is_file", real_is_file)

    def no_file(self, *args, **kwargs):
        if self.name == "train-labels-idx1-ubyte.gz":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", no_file)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot read \\(Permission denied\\); make it"):
        read_idx(folder / "train-labels-idx1-ubyte.gz")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its permissions")
def test_unreadable_file_by_permissions(data_dir, tmp_path):
    folder = _copy(data_dir, tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").chmod(0)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read .*chmod"):
        read_idx(folder / "t10k-labels-idx1-ubyte.gz")
