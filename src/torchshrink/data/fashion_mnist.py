"""Fashion-MNIST: locate the four official IDX files, verify them, parse them, batch them in memory.

It is the embedded default dataset, and one adapter to the data interface: :meth:`FashionMNIST.task` gives
the batches every procedure takes (:class:`torchshrink.data.Task`), with normalisation and augmentation inside.

Every file is checked against the SHA-256 of its *decompressed* content before it is parsed (Debian's
``dataset-fashion-mnist`` recompressed the ``.gz`` files, so the compressed bytes differ from the official
release while the contents are identical). The decompressed size of each file is known, so no file is read or
inflated past it: a gzip bomb costs what the real file would. Any bad file is one :class:`DataError` naming it.
Everything is held as ``uint8`` tensors and normalised per batch.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from torchshrink._io import atomic_write_bytes
from torchshrink.data.task import DEFAULT_CALIBRATION_SAMPLES, Task
from torchshrink.data.tensors import TensorBatches
from torchshrink.errors import DataError

__all__ = [
    "FILES",
    "CLASSES",
    "MEAN",
    "STD",
    "EVAL_BATCH",
    "FashionMNIST",
    "find_data_dir",
    "read_idx",
    "idx_bytes",
    "load_fashion_mnist",
    "normalize",
    "augment",
    "random_erase",
]

IMAGES, LABELS = 2051, 2049  # IDX magic numbers: unsigned bytes in 3 dimensions, in 1
# name -> (SHA-256 of the decompressed IDX content, magic number, item count)
FILES: dict[str, tuple[str, int, int]] = {
    "train-images-idx3-ubyte.gz": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 2051, 60000),
    "train-labels-idx1-ubyte.gz": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 2049, 60000),
    "t10k-images-idx3-ubyte.gz": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 2051, 10000),
    "t10k-labels-idx1-ubyte.gz": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 2049, 10000),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # of the training pixels scaled to [0, 1]
EVAL_BATCH = 128  # fastest measured on 2 CPU cores with channels-last convs: 10k images in 1.0 s (pruned: 1.6 s, 2.4 s at 256)

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_VAR = "TORCHSHRINK_DATA"
FIX = (
    "install the Debian/Ubuntu package (apt-get install dataset-fashion-mnist), "
    f"or pass --data-dir / set {ENV_VAR} to a folder holding the four official .gz files"
)
MAX_GZIP_MEMBERS = 16  # the official files are one gzip member each
PERMISSION_FIX = f"make it readable by this user (chmod a+rX), or pass --data-dir / set {ENV_VAR} to another folder"


def cache_dir() -> Path:
    """The per-user download cache (``$XDG_CACHE_HOME/torchshrink/fashion-mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "torchshrink" / "fashion-mnist"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as exc:  # pathlib swallows "no such file" but not EACCES on the folder
        raise DataError(f"{path.parent}: cannot open the folder ({exc.strerror}); {PERMISSION_FIX}") from exc


def _has_all(folder: Path) -> bool:
    return all(_is_file(folder / name) for name in FILES)


def find_data_dir(data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Return the folder holding the four files, looking in order at ``data_dir`` (or ``$TORCHSHRINK_DATA``),
    the Debian package's folder, then the user cache; download into the cache as a last resort.

    An explicitly named folder must hold the files: it is never silently replaced by another one.
    """
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if explicit is not None:
        folder = Path(explicit).expanduser()
        missing = [name for name in FILES if not _is_file(folder / name)]
        if missing:
            raise DataError(f"{folder}: missing {', '.join(missing)}; {FIX}")
        return folder
    for folder in (SYSTEM_DIR, cache_dir()):
        if _has_all(folder):
            return folder
    if not download:
        raise DataError(f"Fashion-MNIST not found in {SYSTEM_DIR} or {cache_dir()}; {FIX}")
    return _download(cache_dir())


def _download(folder: Path) -> Path:
    for name in FILES:
        target = folder / name
        if _is_file(target):
            continue
        try:
            with urllib.request.urlopen(URL + name, timeout=60) as response:
                payload = response.read(_max_gz_bytes(name) + 1)
        except OSError as exc:
            raise DataError(
                f"Fashion-MNIST not found locally and downloading {URL + name} failed ({exc}); {FIX}"
            ) from exc
        _check(name, _decompress(target, payload, idx_bytes(name)))  # never cache a file that would fail later
        atomic_write_bytes(target, payload)
    return folder


def idx_bytes(name: str) -> int:
    """Size of a file's decompressed IDX content: the header, then one byte per pixel or label.

    >>> idx_bytes("t10k-labels-idx1-ubyte.gz"), idx_bytes("t10k-images-idx3-ubyte.gz")
    (10008, 7840016)
    """
    _, magic, count = FILES[name]
    return 16 + 28 * 28 * count if magic == IMAGES else 8 + count


def _max_gz_bytes(name: str) -> int:
    # gzip never grows data by more than ~0.01% (stored blocks) plus its header: 1% + 4 KiB is ample
    return idx_bytes(name) + idx_bytes(name) // 100 + 4096


def _read(path: Path) -> bytes:
    limit = _max_gz_bytes(path.name)
    try:
        with path.open("rb") as f:
            payload = f.read(limit + 1)
    except OSError as exc:
        fix = PERMISSION_FIX if isinstance(exc, PermissionError) else FIX
        raise DataError(f"{path}: cannot read ({exc.strerror}); {fix}") from exc
    if len(payload) > limit:
        raise DataError(
            f"{path}: over {limit:,} bytes, more than the official file can be{_holds(_head(payload), path.name)}; "
            f"delete it and {FIX}"
        )
    return payload


def _head(payload: bytes) -> bytes:
    """The first 8 decompressed bytes (the IDX magic and count), or none if they cannot be had."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload[:65536], 8)
    except zlib.error:
        return b""


def _decompress(path: Path, payload: bytes, limit: int) -> bytearray:
    """Inflate ``payload`` (one or more gzip members), refusing to produce more than ``limit`` bytes.

    The bound is what stops a gzip bomb: ``gzip.decompress`` would inflate all of it before any check.
    """
    out, rest, members = bytearray(), payload, 0
    try:
        while rest:
            members += 1
            if members > MAX_GZIP_MEMBERS:  # each member copies the rest of the input: many tiny ones would crawl
                raise DataError(f"{path}: more than {MAX_GZIP_MEMBERS} gzip members; delete it and {FIX}")
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16 +: expect a gzip header and trailer
            out += inflater.decompress(rest, limit + 1 - len(out))  # max_length >= 1 here: 0 would mean no limit
            if len(out) > limit:
                raise DataError(
                    f"{path}: decompresses to more than {limit:,} bytes, the size of the official file"
                    f"{_holds(bytes(out[:8]), path.name)}; delete it and {FIX}"
                )
            if not inflater.eof:
                raise DataError(f"{path}: gzip stream ends early (truncated copy or download?); delete it and {FIX}")
            rest = inflater.unused_data.lstrip(b"\0")  # gzip allows zero padding after the last member
    except zlib.error as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc}); delete it and {FIX}") from exc
    if not out:
        raise DataError(f"{path}: empty file; delete it and {FIX}")
    return out  # a bytearray: torch.frombuffer can use it without another copy


def _holds(raw: bytes | bytearray, name: str) -> str:
    """A hint when a file holds the other kind of IDX data than its name says (swapped files)."""
    if len(raw) < 8:
        return ""
    got, want = struct.unpack(">I", raw[:4])[0], FILES[name][1]
    kinds = {IMAGES: "images", LABELS: "labels"}
    if got in kinds and got != want:
        return f" (it holds {kinds[got]}, the name says {kinds[want]}: are two files swapped?)"
    return ""


def _check(name: str, raw: bytes | bytearray, path: Path | None = None) -> None:
    where = path or Path(name)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name][0]:
        raise DataError(
            f"{where}: SHA-256 of the decompressed content is {digest[:16]}..., expected {FILES[name][0][:16]}... "
            f"(corrupt or not the official file{_holds(raw, name)}); delete it and {FIX}"
        )


def read_idx(path: str | os.PathLike[str], verify: bool = True) -> torch.Tensor:
    """Read one official Fashion-MNIST ``.gz`` IDX file into a ``uint8`` tensor.

    Images come back as ``(N, 28, 28)``, labels as ``(N,)``. With ``verify`` the SHA-256 of the
    decompressed content must match the official release; without it, the structure is still checked
    (magic number, item count, image size, length, label range). Decompression stops at the official
    size, so no file can make this hold more than that in memory.

    Raises:
        DataError: the file is unreadable, not gzip, or not the file its name says; the message names it.
    """
    path = Path(path)
    name = path.name
    if name not in FILES:
        raise DataError(f"{path}: not one of the four Fashion-MNIST files ({', '.join(FILES)})")
    raw = _decompress(path, _read(path), idx_bytes(name))
    if verify:
        _check(name, raw, path)
    _, magic, count = FILES[name]
    offset = 16 if magic == IMAGES else 8
    if len(raw) < offset:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header (truncated?); delete it and {FIX}")
    got_magic, got_count = struct.unpack(">II", raw[:8])
    if got_magic != magic:
        raise DataError(
            f"{path}: IDX magic number {got_magic}, expected {magic}{_holds(raw, name)}; delete it and {FIX}"
        )
    if got_count != count:
        raise DataError(f"{path}: {got_count} items, expected {count}; delete it and {FIX}")
    dims = [count]
    if magic == IMAGES:
        rows, cols = struct.unpack(">II", raw[8:16])
        if (rows, cols) != (28, 28):
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28; delete it and {FIX}")
        dims += [rows, cols]
    if len(raw) != idx_bytes(name):
        raise DataError(
            f"{path}: {len(raw)} bytes decompressed, expected {idx_bytes(name)} (truncated?); delete it and {FIX}"
        )
    data = torch.frombuffer(raw, dtype=torch.uint8, offset=offset).reshape(dims)  # shares raw: no copy
    if magic == LABELS and int(data.max()) > 9:
        raise DataError(f"{path}: label {int(data.max())} outside 0..9; delete it and {FIX}")
    return data


@dataclass(frozen=True)
class FashionMNIST:
    """The dataset as ``uint8`` tensors: images ``(N, 1, 28, 28)``, labels ``(N,)`` as int64.

    ``train`` excludes the held-out ``val`` split; ``test`` is only for reported figures.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    def subset(self, train: int | None = None, val: int | None = None, test: int | None = None) -> FashionMNIST:
        """The first ``train`` / ``val`` / ``test`` items of each split (already shuffled by the split)."""
        return FashionMNIST(
            self.train_x[:train], self.train_y[:train], self.val_x[:val], self.val_y[:val],
            self.test_x[:test], self.test_y[:test], self.source,
        )  # fmt: skip

    # --- the adapter to torchshrink's data interface (``Task``) ------------------------------------------

    def train_batches(
        self, batch_size: int = 256, augment: bool = True, crop_padding: int = 0, seed: int = 0, erase: float = 0.0
    ) -> TensorBatches:
        """Shuffled, normalised (and augmented: random crop after ``crop_padding``, horizontal flip, and a
        random rectangle erased from a share ``erase`` of the images) training batches; ``fit`` re-seeds them
        with its own seed."""
        if not 0 <= erase <= 1:
            raise DataError(f"erase={erase}: the share of erased images must be in [0, 1]")
        transform = _train_transform(crop_padding, erase) if augment else _eval_transform
        return TensorBatches(self.train_x, self.train_y, batch_size, shuffle=True, transform=transform, seed=seed)

    def val_batches(self, batch_size: int = EVAL_BATCH) -> TensorBatches:
        """Normalised validation batches, in order."""
        return TensorBatches(self.val_x, self.val_y, batch_size, transform=_eval_transform)

    def test_batches(self, batch_size: int = EVAL_BATCH) -> TensorBatches:
        """Normalised test batches, in order: only for reported figures, never for choosing settings."""
        return TensorBatches(self.test_x, self.test_y, batch_size, transform=_eval_transform)

    def calibration_batches(
        self, images: int = DEFAULT_CALIBRATION_SAMPLES, batch_size: int = 256
    ) -> list[torch.Tensor]:
        """The first ``images`` training images (the split is already shuffled), normalised, in batches."""
        x = self.train_x[:images]
        return [normalize(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]

    def task(
        self,
        batch_size: int = 256,
        augment: bool = True,
        crop_padding: int = 0,
        calibration_images: int = DEFAULT_CALIBRATION_SAMPLES,
        erase: float = 0.0,
    ) -> Task:
        """Training, validation and calibration batches of this dataset as a :class:`Task` (top-1 accuracy,
        cross-entropy). The test split is not part of it: evaluate on :meth:`test_batches` to report."""
        return Task(
            train=self.train_batches(batch_size, augment, crop_padding, erase=erase),
            val=self.val_batches(),
            calibration=self.calibration_batches(calibration_images),
        )


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, val_size: int = 5000, split_seed: int = 0
) -> FashionMNIST:
    """Locate, verify and load Fashion-MNIST, holding out ``val_size`` training images for validation.

    The split depends only on ``split_seed``, never on the training seed, so every setting is chosen on
    the same validation images.
    """
    if not 0 <= val_size < 60000:
        raise DataError(f"val_size={val_size}: must be in 0..59999")
    folder = find_data_dir(data_dir)
    train_x = read_idx(folder / "train-images-idx3-ubyte.gz").unsqueeze(1)
    train_y = read_idx(folder / "train-labels-idx1-ubyte.gz").long()
    test_x = read_idx(folder / "t10k-images-idx3-ubyte.gz").unsqueeze(1)
    test_y = read_idx(folder / "t10k-labels-idx1-ubyte.gz").long()
    perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    return FashionMNIST(
        train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx], test_x, test_y, str(folder)
    )


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> float32, zero mean and unit variance over the training set."""
    return (x.float() * (1.0 / 255) - MEAN) * (1.0 / STD)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels, and horizontal flip, drawn per image.

    Works on a whole batch ``(N, C, H, W)`` with one gather, so it costs far less than the model.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device="cpu").to(x.device)
    flip = torch.rand(n, 1, generator=generator, device="cpu").to(x.device) < 0.5
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx  # (N, W)
    rows = torch.arange(h, device=x.device).expand(n, h) + dy  # (N, H)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # (N, C, H+2p, W+2p) -> (N, H, W, C) -> (N, C, H, W)
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_erase(
    x: torch.Tensor,
    generator: torch.Generator,
    share: float,
    area: tuple[float, float] = (0.02, 0.25),
    aspect: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): in a share ``share`` of the images, one rectangle of ``area``
    (fraction of the image) and ``aspect`` (height / width, log-uniform) is replaced by standard normal noise,
    the statistics of a normalised pixel. Drawn per image for a whole batch at once."""
    n, _, h, w = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, device="cpu")

    chosen = torch.rand(n, generator=generator, device="cpu") < share
    size = uniform(*area) * h * w
    ratio = torch.exp(uniform(math.log(aspect[0]), math.log(aspect[1])))
    eh = torch.sqrt(size * ratio).round().clamp(1, h)
    ew = torch.sqrt(size / ratio).round().clamp(1, w)
    top = (torch.rand(n, generator=generator, device="cpu") * (h - eh + 1)).floor()
    left = (torch.rand(n, generator=generator, device="cpu") * (w - ew + 1)).floor()
    rows, cols = torch.arange(h), torch.arange(w)
    inside_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (N, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (N, W)
    mask = (chosen[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1).to(x.device)
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
    return torch.where(mask, noise, x)


def _eval_transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return normalize(x)


def _train_transform(pad: int, erase: float = 0.0) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    if erase > 0:
        return lambda x, generator: random_erase(augment(normalize(x), generator, pad), generator, erase)
    return lambda x, generator: augment(normalize(x), generator, pad)
