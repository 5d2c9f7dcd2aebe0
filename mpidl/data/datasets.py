"""Datasets: every rank loads the same arrays; the loader picks each rank's samples.

Images stay in their stored integer type and are scaled to [0, 1] batch by batch,
so a rank holds 1 byte per pixel, not 4 or 8.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

from mpidl.data.base import Dataset
from mpidl.data.cache import cached_arrays
from mpidl.data.idx import find_idx, read_idx
from mpidl.errors import DataError

# Debian's package dataset-fashion-mnist installs the IDX files here.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def load_digits(data_dir=None) -> Dataset:
    """The 1,797 8x8 handwritten digits of UCI (Alpaydin & Kaynak), shipped in the package.
    A fixed 80/20 split (independent of --seed) keeps validation figures comparable."""
    with resources.files("mpidl.data").joinpath("digits8x8.npz").open("rb") as f:
        npz = np.load(f, allow_pickle=False)
        images, labels = npz["images"], npz["labels"].astype(np.int64)
    order = np.random.default_rng(20240601).permutation(len(labels))
    n_val = 360
    val, train = order[:n_val], order[n_val:]
    return Dataset("digits", "classification", images[train, None], labels[train],
                   images[val, None], labels[val], num_classes=10, scale=1 / 16)


def _load_idx_pair(directory: str, name: str, split: str):
    imgs_stem, labels_stem = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
    imgs_path, labels_path = find_idx(directory, imgs_stem), find_idx(directory, labels_stem)
    for path, stem in ((imgs_path, imgs_stem), (labels_path, labels_stem)):
        if path is None:
            raise DataError(f"{name}: {stem}[.gz] not found in {directory}")

    def read():
        images, labels = read_idx(imgs_path), read_idx(labels_path)
        if images.ndim != 3:
            raise DataError(f"{imgs_path}: expected images of shape (n, rows, cols), found {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{labels_path}: expected a vector of labels, found shape {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{name}: {imgs_path} holds {len(images)} images but {labels_path} "
                            f"holds {len(labels)} labels")
        return {"images": images[:, None], "labels": labels.astype(np.int64)}

    # Decompressed once into .npy and memory-mapped afterwards (when the trainer enables it).
    arrays = cached_arrays(f"{name}-{split}", [imgs_path, labels_path], ("images", "labels"), read)
    return arrays["images"], arrays["labels"]


def load_idx_dataset(name: str, data_dir: str | None) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files: train-* for training, t10k-* as the test set."""
    if data_dir is None:
        if name == "fashion-mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
            data_dir = DEBIAN_FASHION_MNIST
        else:
            hint = (" (or install Debian's dataset-fashion-mnist package)" if name == "fashion-mnist" else "")
            raise DataError(f"{name}: give --data-dir, the folder holding the IDX files{hint}")
    if not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir}: no such directory")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError(f"--data-dir {data_dir}: not readable")
    x_train, y_train = _load_idx_pair(data_dir, name, "train")
    x_test, y_test = _load_idx_pair(data_dir, name, "t10k")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ in size")
    return Dataset(name, "classification", x_train, y_train, x_test, y_test, num_classes=10,
                   scale=1 / 255, val_name="test")


def load_xor(data_dir=None) -> Dataset:
    """The four points of XOR, used for training and for evaluation."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return Dataset("xor", "binary", x, y, x.copy(), y.copy(), num_classes=1)


def load_regression(data_dir=None, n_train=2048, n_val=512, features=8) -> Dataset:
    """y = x.w + b + noise with fixed w, b (seeded, independent of --seed)."""
    rng = np.random.default_rng(1234)
    w = rng.normal(size=features)
    b = 0.5
    x = rng.normal(size=(n_train + n_val, features))
    y = x @ w + b + 0.1 * rng.normal(size=n_train + n_val)
    return Dataset("regression", "regression", x[:n_train], y[:n_train, None],
                   x[n_train:], y[n_train:, None], num_classes=1)


LOADERS = {
    "digits": load_digits,
    "mnist": lambda data_dir: load_idx_dataset("mnist", data_dir),
    "fashion-mnist": lambda data_dir: load_idx_dataset("fashion-mnist", data_dir),
    "xor": load_xor,
    "regression": load_regression,
    "cifar10": lambda data_dir: _load_cifar10(data_dir),
}


def _load_cifar10(data_dir):
    from mpidl.data.cifar import load_cifar10  # only when asked for
    return load_cifar10(data_dir)


def load_dataset(name: str, data_dir: str | None = None, options=None, comm=None,
                 cache_dir: str | None = "default") -> Dataset:
    """A built-in dataset by name, or your own from a file or folder (mpidl.data.files).

    With `comm`, collective: files that must be decoded (IDX, CIFAR, compressed .npz, tables,
    image folders) are decoded once per node into `cache_dir` (default ~/.cache/mpidl; None:
    no cache) and memory-mapped, and each rank checks only its share of the samples."""
    from mpidl.data.cache import default_cache_dir, npy_cache
    from mpidl.data.files import load_file_dataset, looks_like_path
    if name not in LOADERS:
        name = os.path.expanduser(name)
    if name not in LOADERS and not looks_like_path(name):
        from mpidl.config import did_you_mean
        raise DataError(f"--dataset {name}: neither a built-in dataset ({', '.join(LOADERS)}) nor a "
                        f"file or folder{did_you_mean(name, LOADERS)}")
    def read():
        return LOADERS[name](data_dir) if name in LOADERS else load_file_dataset(name, options)
    if comm is None:
        ds = read()
        ds.validate()
        return ds
    from mpidl.parallel.guard import agreed
    folder = default_cache_dir() if cache_dir == "default" else cache_dir
    with npy_cache(folder, comm):
        ds = read()
    agreed(comm, lambda: ds.validate(comm.rank, comm.size))
    return ds
