"""Tests for raysweep.core.data: dataset loading from every supported layout, and augment."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from datafiles import write_idx_dataset
from raysweep.core import data
from raysweep.errors import UserError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar_dataset(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR-10 python batches in root/cifar-10-batches-py; returns (pixels, labels) per batch.

    Keys are str: the real batches were pickled by Python 2 and torchvision
    unpickles them with encoding="latin1", which yields str keys.
    """
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in CIFAR_BATCHES:
        n = 4 if name == "test_batch" else 3
        pixels, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)
        (folder / name).write_bytes(pickle.dumps({"data": pixels, "labels": labels.tolist()}))
        written[name] = (pixels, labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return written


def accept_cifar_checksums(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's CIFAR10 integrity check accept the files written under root."""
    folder = root / "cifar-10-batches-py"

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "train_list", [[name, md5(name)] for name in CIFAR_BATCHES[:5]])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": md5("batches.meta")})


def listing(folder: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of everything under folder, to prove it was not written."""
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
    )


def assert_idx_dataset_equals(dataset: data.Dataset, written: dict[str, np.ndarray]) -> None:
    expected_train = torch.from_numpy(written["train-images-idx3-ubyte"]).float().div(255).unsqueeze(1)
    expected_test = torch.from_numpy(written["t10k-images-idx3-ubyte"]).float().div(255).unsqueeze(1)
    assert dataset.x_train.dtype == torch.float32 and dataset.y_train.dtype == torch.int64
    assert torch.equal(dataset.x_train, expected_train)
    assert torch.equal(dataset.x_test, expected_test)
    assert dataset.y_train.tolist() == written["train-labels-idx1-ubyte"].tolist()
    assert dataset.y_test.tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    assert dataset.shape == (1, 28, 28) and dataset.num_classes == 10


# --- digits -----------------------------------------------------------------


def test_digits_are_unit_range_28x28_with_all_classes_in_both_splits() -> None:
    ds = data.load("digits")
    assert ds.shape == (1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert (len(ds.x_train), len(ds.x_test)) == (1438, 359)
    assert len(ds.y_train) == 1438 and len(ds.y_test) == 359
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    assert ds.num_classes == 10 and ds.name == "digits"


def test_digits_split_is_deterministic_and_disjoint() -> None:
    first, second = data.load("digits"), data.load("digits")
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    # The 1,797 digits are pairwise distinct, so no test image may appear in training.
    distances = torch.cdist(first.x_test.flatten(1), first.x_train.flatten(1))
    assert distances.min() > 0


def test_limits_keep_the_first_samples_of_each_split() -> None:
    full = data.load("digits")
    small = data.load("digits", limit_train=100, limit_test=30)
    assert torch.equal(small.x_train, full.x_train[:100]) and torch.equal(small.y_train, full.y_train[:100])
    assert torch.equal(small.x_test, full.x_test[:30]) and torch.equal(small.y_test, full.y_test[:30])


@pytest.mark.parametrize("limits", [{"limit_train": 0}, {"limit_test": -5}])
def test_non_positive_limit_raises_user_error(limits: dict[str, int]) -> None:
    with pytest.raises(UserError, match="positive"):
        data.load("synthetic", **limits)


# --- synthetic --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape"), [("synthetic", (1, 28, 28)), ("synthetic:3x32x32", (3, 32, 32)), ("synthetic:2x5x7", (2, 5, 7))]
)
def test_synthetic_spec_sets_the_image_shape(name: str, shape: tuple[int, int, int]) -> None:
    ds = data.load(name)
    assert ds.shape == shape and ds.name == name
    assert ds.x_train.shape == (512, *shape) and ds.x_test.shape == (256, *shape)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())


def test_synthetic_counts_set_the_split_sizes() -> None:
    ds = data.load("synthetic:3x8x8:1000:30")
    assert ds.x_train.shape == (1000, 3, 8, 8) and ds.x_test.shape == (30, 3, 8, 8)
    assert torch.bincount(ds.y_train).tolist() == [100] * 10  # balanced classes at any count


@pytest.mark.parametrize(
    "name",
    ["synthetic:3x32", "synthetic:0x32x32", "synthetic:axbxc", "synthetic:", "synthetic3x3x3",
     "synthetic:3x8x8:100", "synthetic:3x8x8:0:10", "synthetic:3x8x8:10:x"],
)
def test_malformed_synthetic_spec_raises_user_error_naming_the_format(name: str) -> None:
    with pytest.raises(UserError, match="synthetic:CxHxW") as info:
        data.load(name)
    assert "\n" not in str(info.value)


def test_synthetic_is_deterministic() -> None:
    first, second = data.load("synthetic:3x8x8"), data.load("synthetic:3x8x8")
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.x_test, second.x_test)
    assert torch.equal(first.y_train, second.y_train) and torch.equal(first.y_test, second.y_test)


def test_synthetic_is_learnable_by_nearest_class_mean() -> None:
    ds = data.load("synthetic")
    means = torch.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(ds.x_test.flatten(1), means).argmin(1)
    assert (predicted == ds.y_test).float().mean() > 0.9


# --- torchvision datasets from files ------------------------------------------


def test_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    written = write_idx_dataset(tmp_path / "data" / "MNIST" / "raw", gz=False)
    assert_idx_dataset_equals(data.load("mnist", str(tmp_path / "data")), written)


@pytest.mark.parametrize(
    ("name", "subdir", "gz"),
    [
        ("fashion-mnist", "", True),  # Debian's dataset-fashion-mnist
        ("mnist", "", True),
        ("mnist", "", False),
        ("fashion-mnist", "FashionMNIST/raw", True),  # torchvision layout, left compressed
    ],
)
def test_idx_files_in_other_layouts_load_without_writing_to_the_data_folder(
    tmp_path: Path, name: str, subdir: str, gz: bool
) -> None:
    root = tmp_path / "data"
    written = write_idx_dataset(root / subdir, gz=gz)
    before = listing(root)
    assert_idx_dataset_equals(data.load(name, root), written)
    assert listing(root) == before


def test_staged_copy_follows_a_replaced_gzipped_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_idx_dataset(root, gz=True, seed=0)
    data.load("fashion-mnist", root)
    written = write_idx_dataset(root, gz=True, seed=1)
    for path in root.iterdir():  # a distinct mtime, as a real replacement would have
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    assert_idx_dataset_equals(data.load("fashion-mnist", root), written)


def test_cifar10_reads_python_batches_as_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar_dataset(tmp_path)
    accept_cifar_checksums(tmp_path, monkeypatch)
    ds = data.load("cifar10", tmp_path)

    def images(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).float().div(255).view(-1, 3, 32, 32)

    train_pixels, train_labels = (np.concatenate(arrays) for arrays in zip(*(written[b] for b in CIFAR_BATCHES[:5])))
    assert ds.shape == (3, 32, 32) and ds.x_train.is_contiguous() and ds.y_train.dtype == torch.int64
    assert torch.equal(ds.x_train, images(train_pixels))
    assert torch.equal(ds.x_test, images(written["test_batch"][0]))
    assert ds.y_train.tolist() == train_labels.tolist()
    assert ds.y_test.tolist() == written["test_batch"][1].tolist()


def test_cifar10_batches_directly_in_root_are_staged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar_dataset(tmp_path)
    accept_cifar_checksums(tmp_path, monkeypatch)
    ds = data.load("cifar10", tmp_path / "cifar-10-batches-py")
    assert ds.y_test.tolist() == written["test_batch"][1].tolist()


def test_cifar10_with_foreign_checksums_raises_user_error(tmp_path: Path) -> None:
    write_cifar_dataset(tmp_path)  # not the official files, and torchvision checks md5s
    with pytest.raises(UserError, match="corrupt") as info:
        data.load("cifar10", tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_corrupt_idx_files_raise_user_error_naming_the_folder(tmp_path: Path, gz: bool) -> None:
    write_idx_dataset(tmp_path, gz=gz)
    broken = tmp_path / ("train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte")
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt") as info:
        data.load("mnist", tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_files_raise_one_line_user_error_naming_path_and_data_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError) as info:
        data.load(name, tmp_path / "empty", download=False)
    message = str(info.value)
    assert str(tmp_path / "empty") in message and "data_root" in message and "\n" not in message


def test_default_root_is_under_the_cache_home(private_cache: Path) -> None:
    with pytest.raises(UserError, match=str(private_cache / "raysweep" / "data")):
        data.load("mnist")


def test_unknown_dataset_raises_user_error_listing_valid_names() -> None:
    with pytest.raises(UserError) as info:
        data.load("imagenet")
    assert all(name in str(info.value) for name in data.DATASETS)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_loads_in_full() -> None:
    ds = data.load("fashion-mnist", DEBIAN_FASHION_MNIST)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.bincount().tolist() == [6000] * 10 and ds.y_test.bincount().tolist() == [1000] * 10
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


# --- augment -------------------------------------------------------------------


def windows(image: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """Every image augment may return for one input: each crop window, plain and mirrored."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image[None], (crop,) * 4, mode="reflect")[0] if crop else image
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * crop + 1) for j in range(2 * crop + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_flip_only_returns_each_image_or_its_mirror_both_occurring() -> None:
    x = torch.rand(64, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    out = augment_fixed(x, flip=True, crop=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert out.shape == x.shape and bool((same | mirrored).all())
    assert same.any() and mirrored.any()


def test_crop_returns_windows_of_the_reflect_padded_image_in_unit_range() -> None:
    x = torch.rand(16, 2, 5, 6, generator=torch.Generator().manual_seed(1))
    out = augment_fixed(x, flip=True, crop=2)
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    chosen = []
    for image, result in zip(x, out):
        matches = [i for i, window in enumerate(windows(image, 2)) if torch.equal(result, window)]
        assert matches, "output is not a (mirrored) window of the padded input"
        chosen.append(matches[0])
    assert len(set(chosen)) > 3  # each image draws its own offset and flip


def test_augment_with_fixed_generator_is_deterministic_and_leaves_input_alone() -> None:
    x = torch.rand(8, 1, 10, 10, generator=torch.Generator().manual_seed(2))
    original = x.clone()
    assert torch.equal(augment_fixed(x, flip=True, crop=3), augment_fixed(x, flip=True, crop=3))
    assert torch.equal(x, original)


def test_augment_without_flip_or_crop_returns_an_equal_new_tensor() -> None:
    x = torch.rand(4, 1, 3, 3)
    out = data.augment(x, flip=False, crop=0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("crop", [-1, 5])
def test_crop_that_does_not_fit_raises_user_error(crop: int) -> None:
    with pytest.raises(UserError, match="crop"):
        data.augment(torch.rand(2, 1, 5, 8), flip=False, crop=crop)


def augment_fixed(x: torch.Tensor, *, flip: bool, crop: int) -> torch.Tensor:
    return data.augment(x, flip=flip, crop=crop, generator=torch.Generator().manual_seed(123))
