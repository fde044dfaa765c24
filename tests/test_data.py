from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest
import torch

from torchshrink.data import FILES, TensorBatches, augment, find_data_dir, load_fashion_mnist, normalize, read_idx
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


def test_batches_cover_every_item_once():
    x = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in TensorBatches(x, y, 3, shuffle=True)])
    assert sorted(seen.tolist()) == list(range(10))
