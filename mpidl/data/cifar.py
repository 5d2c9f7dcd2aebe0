"""CIFAR-10 from the official "python version" batches (Krizhevsky, 2009).

The folder (``--data-dir``, or its ``cifar-10-batches-py`` subfolder) holds
``data_batch_1`` .. ``data_batch_5`` and ``test_batch``: pickled dicts with
``b'data'`` (uint8, n x 3072: 1024 red, 1024 green, 1024 blue values, rows in order)
and ``b'labels'`` (n ints in 0..9).

Pickle can run arbitrary code, so the files are read by an unpickler that admits only
the plain types these files hold and the two numpy functions that rebuild an ndarray;
anything else is refused with a DataError before it can run.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from mpidl.data.base import Dataset
from mpidl.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGE_SHAPE = (3, 32, 32)

# The only globals a CIFAR batch (pickled by Python 2 or 3, numpy 1 or 2) refers to.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 writes bytes under protocol 2 as _codecs.encode(text, 'latin1'): a pure function.
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")


def read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 3, 32, 32), labels int64 (n,)) from one batch file."""
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever a damaged pickle raises (found by fuzzing:
        # a flipped length byte raised MemoryError); code cannot run, find_class refuses globals
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: missing 'data' or 'labels' (keys: {sorted(map(str, batch))})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: 'data' should be uint8 of shape (n, 3072), found "
                        f"{getattr(data, 'dtype', type(data).__name__)} {shape}")
    if not isinstance(labels, (list, np.ndarray)) or \
            not all(isinstance(v, (int, np.integer)) for v in labels):
        raise DataError(f"{path}: 'labels' should be a list of integers")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _find_folder(data_dir: str | None) -> str:
    if data_dir is None:
        raise DataError("cifar10: give --data-dir, the folder holding data_batch_1..5 and test_batch "
                        "(the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html)")
    for folder in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(folder, TEST_FILE)):
            return folder
    if not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {data_dir}: no such directory")
    raise DataError(f"cifar10: {TEST_FILE} not found in {data_dir} (nor in its cifar-10-batches-py/)")


@dataclass
class NormalizedImages(Dataset):
    """Images normalised per channel, (x*scale - mean[c]) / std[c], with mean and std taken
    from the training set; optional random-crop + flip augmentation during training."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def inputs(self, x, dtype):
        out = super().inputs(x, dtype)
        shape = (1, -1) + (1,) * (out.ndim - 2)
        out -= self.mean.astype(dtype).reshape(shape)
        out *= (1.0 / self.std).astype(dtype).reshape(shape)
        return out

    def digest(self) -> bytes:
        import hashlib
        return hashlib.sha256(super().digest() + self.mean.tobytes() + self.std.tobytes()).digest()


def channel_stats(images: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images (n, C, H, W) after scaling."""
    counts = np.stack([np.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])])
    values = np.arange(256) * scale
    n = counts.sum(axis=1)
    mean = counts @ values / n
    var = counts @ (values * values) / n - mean * mean
    return mean, np.sqrt(np.maximum(var, 1e-12))


def random_crop_flip(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Each image shifted by a random crop of its zero-padded copy (zero = the channel mean
    after normalisation) and mirrored left-right with probability 1/2; all vectorised."""
    N, C, H, W = x.shape
    padded = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + H, pad:pad + W] = x
    windows = np.lib.stride_tricks.sliding_window_view(padded, (H, W), axis=(2, 3))
    oy = rng.integers(0, 2 * pad + 1, size=N)
    ox = rng.integers(0, 2 * pad + 1, size=N)
    out = windows[np.arange(N), :, oy, ox]          # (N, C, H, W), a fresh array
    flip = rng.random(N) < 0.5
    out[flip] = out[flip, :, :, ::-1]
    return out


def load_cifar10(data_dir: str | None, augment: bool = True) -> Dataset:
    folder = _find_folder(data_dir)
    parts = []
    for name in TRAIN_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"cifar10: {name} not found in {folder}")
        parts.append(read_batch(path))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_batch(os.path.join(folder, TEST_FILE))
    scale = 1 / 255
    mean, std = channel_stats(x_train, scale)
    return NormalizedImages("cifar10", "classification", x_train, y_train, x_test, y_test, num_classes=10,
                            scale=scale, val_name="test", augment=random_crop_flip if augment else None,
                            mean=mean, std=std)
