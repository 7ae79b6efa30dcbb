"""Datasets as whole tensors, and batched on-device augmentation.

Every dataset here is small enough to live on the accelerator in one piece, so
`load` returns complete train/test tensors on the requested device and
`augment` works on whole batches there, instead of a per-sample DataLoader.

Datasets (`DATASETS`):

- ``digits``: scikit-learn's bundled 8x8 digits, upsampled to 1x28x28; works offline.
- ``synthetic`` / ``synthetic:CxHxW`` / ``synthetic:CxHxW:TRAIN:TEST``: generated, learnable
  images for tests (512 training and 256 test images unless counts are given; give the real
  sizes, e.g. ``synthetic:3x32x32:50000:10000``, to time a full CIFAR-10-sized epoch).
- ``mnist``, ``fashion-mnist``, ``cifar10``: read from the standard files by the
  torchvision dataset classes; see `load` for the folder layouts accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision

from raysweep.errors import UserError

DATASETS: tuple[str, ...] = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10")

NUM_CLASSES = 10

# The digits split and the synthetic images are fixed properties of the dataset,
# not of a run, so their seeds are constants independent of any run seed.
_SPLIT_SEED = 0
_SYNTHETIC_SEED = 0
_DIGITS_TEST_FRACTION = 0.2

_SYNTHETIC_DEFAULT_SHAPE = (1, 28, 28)
_SYNTHETIC_TRAIN = 512
_SYNTHETIC_TEST = 256
_SYNTHETIC_NOISE = 0.3
_SYNTHETIC_SPEC = re.compile(r"synthetic(?::(\d+)x(\d+)x(\d+)(?::(\d+):(\d+))?)?")

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_IDX_CLASSES: dict[str, type[torchvision.datasets.MNIST]] = {
    "mnist": torchvision.datasets.MNIST,
    "fashion-mnist": torchvision.datasets.FashionMNIST,
}


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class Dataset:
    """A whole dataset on one device.

    Images are float32 in [0, 1] with shape (N, C, H, W); labels are int64 in
    [0, num_classes) with shape (N,).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""
        c, h, w = self.x_train.shape[1:]
        return (c, h, w)


class _Splits(NamedTuple):
    """Train and test tensors before limiting, device transfer and scaling.

    Images are either uint8 (scaled by 1/255 later, after the cheap uint8 copy
    to the device) or float32 already in [0, 1].
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    device: str | torch.device = "cpu",
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """Load dataset `name` (one of `DATASETS`, or ``synthetic:CxHxW[:TRAIN:TEST]``) onto `device`.

    `root` is only used by mnist, fashion-mnist and cifar10; it defaults to
    ``$XDG_CACHE_HOME/raysweep/data`` (``~/.cache/raysweep/data``). Accepted layouts:

    - torchvision's: ``root/MNIST/raw/train-images-idx3-ubyte`` ...,
      ``root/FashionMNIST/raw/...``, ``root/cifar-10-batches-py/data_batch_1`` ...;
    - flat: the four IDX files (or the CIFAR batch files) directly in `root`, as
      Debian's ``dataset-fashion-mnist`` installs them in
      ``/usr/share/datasets/fashion-mnist``.

    IDX files may be gzipped (``.gz``). The user's folder is only read, never
    written, except that `download` lets torchvision fetch missing files into
    `root` in its own layout.

    `limit_train` / `limit_test` keep the first n samples of each split (all of
    them if n exceeds the split). Raises `UserError` for an unknown name, a bad
    ``synthetic`` spec, bad limits, or files that are missing or corrupt.
    """
    for label, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit < 1:
            raise UserError(f"{label}={limit} keeps no samples: give a positive count or none")
    splits = _load_splits(name, root, download)
    return Dataset(
        name=name,
        x_train=_to_unit_float(splits.x_train[:limit_train], device),
        y_train=splits.y_train[:limit_train].to(device=device, dtype=torch.int64),
        x_test=_to_unit_float(splits.x_test[:limit_test], device),
        y_test=splits.y_test[:limit_test].to(device=device, dtype=torch.int64),
        num_classes=NUM_CLASSES,
    )


def augment(
    x: torch.Tensor, *, flip: bool, crop: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly flip and crop each image of a batch, independently, on x's device.

    With `flip`, each image is mirrored horizontally with probability 1/2. With
    `crop` > 0, each image is reflect-padded by `crop` pixels per side and a
    window of the original size is cut at a uniformly random offset. Returns a
    new tensor shaped like `x` (N, C, H, W). Random draws come from `generator`
    (on its own device) or the global generator of x's device.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if crop < 0 or crop >= min(h, w):
        raise UserError(
            f"crop={crop} does not fit {h}x{w} images: use 0 <= crop < {min(h, w)}"
        )
    rand_device = generator.device if generator is not None else x.device
    if flip:
        mirrored = torch.rand(n, generator=generator, device=rand_device) < 0.5
    else:
        mirrored = torch.zeros(n, dtype=torch.bool, device=rand_device)
    mirrored = mirrored.to(x.device)
    offsets = torch.randint(0, 2 * crop + 1, (2, n), generator=generator, device=rand_device)
    top, left = offsets.to(x.device)
    padded = F.pad(x, (crop, crop, crop, crop), mode="reflect") if crop else x
    # One gather does both: a mirrored crop reads the window's columns backwards.
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(mirrored[:, None], w - 1 - cols, cols) + left[:, None]
    rows = torch.arange(h, device=x.device) + top[:, None]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _load_splits(name: str, root: str | os.PathLike[str] | None, download: bool) -> _Splits:
    if name == "digits":
        return _digits()
    if name.startswith("synthetic"):
        return _synthetic(*_synthetic_spec(name))
    if name in _IDX_CLASSES or name == "cifar10":
        folder = Path(root).expanduser() if root is not None else _cache_home() / "data"
        return _torchvision(name, folder.absolute(), download)
    raise UserError(
        f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} (or synthetic:CxHxW[:TRAIN:TEST])"
    )


def _to_unit_float(x: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    x = x.to(device)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def _cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "raysweep"


# --- digits and synthetic -------------------------------------------------


def _digits() -> _Splits:
    # Imported here: scikit-learn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_test = int(len(labels) * _DIGITS_TEST_FRACTION)
    train, test = order[:-n_test], order[-n_test:]
    return _Splits(images[train], labels[train], images[test], labels[test])


def _synthetic_spec(name: str) -> tuple[tuple[int, int, int], int, int]:
    """Shape, training count and test count of a ``synthetic[:CxHxW[:TRAIN:TEST]]`` name."""
    match = _SYNTHETIC_SPEC.fullmatch(name)
    if match is not None and match.group(1) is None:
        return _SYNTHETIC_DEFAULT_SHAPE, _SYNTHETIC_TRAIN, _SYNTHETIC_TEST
    numbers = [int(d) for d in match.groups() if d is not None] if match is not None else []
    if numbers and min(numbers) > 0:
        c, h, w, *counts = numbers
        n_train, n_test = counts or (_SYNTHETIC_TRAIN, _SYNTHETIC_TEST)
        return (c, h, w), n_train, n_test
    raise UserError(
        f"bad dataset {name!r}: write synthetic, synthetic:CxHxW or synthetic:CxHxW:TRAIN:TEST "
        "with positive integers, e.g. synthetic:3x32x32"
    )


def _synthetic(shape: tuple[int, int, int], n_train: int, n_test: int) -> _Splits:
    """Per-class smooth prototypes plus gaussian noise: learnable but not trivial."""
    c, h, w = shape
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    # Upsampled low-resolution noise gives blob-like prototypes, closer to
    # natural images than white noise and still well separated between classes.
    coarse = torch.rand(NUM_CLASSES, c, max(1, h // 4), max(1, w // 4), generator=gen)
    prototypes = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % NUM_CLASSES)[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, c, h, w, generator=gen) * _SYNTHETIC_NOISE
        return (prototypes[labels] + noise).clamp_(0.0, 1.0), labels

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return _Splits(x_train, y_train, x_test, y_test)


# --- torchvision datasets -------------------------------------------------
#
# The torchvision classes only read their own layout (root/MNIST/raw/<uncompressed
# IDX files>, root/cifar-10-batches-py/...), and MNIST only decompresses .gz
# files as part of a download. Any other layout we accept is "staged": a folder
# under the user's cache is laid out the way torchvision expects, with symlinks
# to the user's uncompressed files and decompressed copies of gzipped ones, and
# the unmodified torchvision class reads that folder. This keeps parsing in
# torchvision, works the same for every torchvision version (no private API is
# overridden), and never writes into the user's data folder.


# What torchvision's parsers raise on missing, truncated or foreign files.
_CORRUPT_DATA_ERRORS = (
    RuntimeError, ValueError, TypeError, KeyError, AssertionError, EOFError, OSError,
    pickle.UnpicklingError,
)


def _torchvision(name: str, root: Path, download: bool) -> _Splits:
    readable = _locate(name, root)
    reason = "pass download=True to fetch them"
    if readable is None and download:
        try:
            _construct(name, root, train=True, download=True)
            readable = root
        # A failed download surfaces as many exception types (URLError,
        # RuntimeError on checksums, http and tar errors); all mean the same to the user.
        except Exception as exc:  # noqa: BLE001
            reason = f"download failed: {_short(exc)}"
    if readable is None:
        raise UserError(f"{_missing_message(name, root)} ({reason})")
    try:
        train = _construct(name, readable, train=True)
        test = _construct(name, readable, train=False)
    except _CORRUPT_DATA_ERRORS as exc:
        raise UserError(
            f"dataset {name!r} under {root} is corrupt or not the official release "
            f"({_short(exc)}): replace its files or pass another data_root=DIR"
        ) from exc
    return _Splits(*_tensors(train), *_tensors(test))


def _construct(
    name: str, root: Path, *, train: bool, download: bool = False
) -> torchvision.datasets.VisionDataset:
    if name == "cifar10":
        return torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    return _IDX_CLASSES[name](str(root), train=train, download=download)


def _tensors(dataset: torchvision.datasets.VisionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) uint8 and labels int64, straight from the parsed arrays."""
    images = torch.as_tensor(dataset.data)
    # MNIST data is (N, H, W); CIFAR10 data is (N, H, W, C).
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return images.contiguous(), labels


def _locate(name: str, root: Path) -> Path | None:
    """A root that torchvision can read for `name`, staging one if needed; None if absent."""
    if name == "cifar10":
        standard = root / torchvision.datasets.CIFAR10.base_folder
        if _find(standard, _CIFAR_FILES, gz=False) is not None:
            return root
        flat = _find(root, _CIFAR_FILES, gz=False)
        if flat is None:
            return None
        return _stage(flat, root, torchvision.datasets.CIFAR10.base_folder)
    raw_subdir = Path(_IDX_CLASSES[name].__name__) / "raw"
    standard = root / raw_subdir
    found = _find(standard, _IDX_FILES, gz=False)
    if found is not None:
        return root
    for folder in (standard, root):
        found = _find(folder, _IDX_FILES, gz=True)
        if found is not None:
            return _stage(found, folder, raw_subdir)
    return None


def _find(folder: Path, names: tuple[str, ...], *, gz: bool) -> dict[str, Path] | None:
    """Map each wanted name to its file in `folder` (plain, else .gz if `gz`), or None."""
    found = {}
    for name in names:
        candidates = [folder / name] + ([folder / f"{name}.gz"] if gz else [])
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            return None
        found[name] = existing[0]
    return found


def _stage(files: dict[str, Path], source: Path, subdir: Path | str) -> Path:
    """Lay `files` out as `<staged root>/<subdir>/<name>` and return the staged root."""
    key = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    staged_root = _cache_home() / "staged" / f"{source.name}-{key}"
    target = staged_root / subdir
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            if path.suffix == ".gz":
                _decompress(path, target / name)
            else:
                _replace_atomically(target / name, partial(_symlink, path))
    # BadGzipFile is an OSError too, so it must be told apart from a cache we cannot write.
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{source} holds a corrupt .gz file ({_short(exc)}): replace it") from exc
    except OSError as exc:
        raise UserError(
            f"cannot prepare {source} in cache {target} ({_short(exc)}): "
            "set XDG_CACHE_HOME to a writable folder"
        ) from exc
    return staged_root


def _decompress(source: Path, target: Path) -> None:
    # The copy carries the source's mtime, so an unchanged source is not
    # decompressed again and a replaced one is.
    stat = source.stat()
    if not target.is_symlink() and target.is_file() and target.stat().st_mtime_ns == stat.st_mtime_ns:
        return

    def write(tmp: Path) -> None:
        with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    _replace_atomically(target, write)


def _symlink(source: Path, link: Path) -> None:
    link.unlink()
    link.symlink_to(source.resolve())


def _replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    # Parallel trials may stage the same folder at once: each writes a private
    # temporary file and renames it into place, so readers never see a partial file.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _missing_message(name: str, root: Path) -> str:
    if name == "cifar10":
        where = f"{root / torchvision.datasets.CIFAR10.base_folder} (extract cifar-10-python.tar.gz in {root})"
        files = "data_batch_1..5, test_batch, batches.meta"
    else:
        where = f"{root} or {root / _IDX_CLASSES[name].__name__ / 'raw'}"
        files = ", ".join(_IDX_FILES) + " (each may end in .gz)"
    return f"dataset {name!r} not found under {root}: put {files} in {where}, or pass data_root=DIR"


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
