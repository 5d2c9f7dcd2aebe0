"""Datasets cached as .npy and memory-mapped: same arrays as the source, written once,
renewed when the source changes, and skipped gracefully when the folder is read-only."""

import gzip
import os

import numpy as np
import pytest

from mpidl.parallel.comm import SerialComm
from mpidl.data.cache import npy_cache, source_key
from mpidl.data.datasets import load_idx_dataset


def _write_idx(path, array):
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "src"
    d.mkdir()
    for split, n in (("train", 40), ("t10k", 12)):
        _write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 6, 5), dtype=np.uint8))
        _write_idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return d


def test_cached_dataset_equals_source_and_is_memory_mapped(idx_dir, tmp_path):
    direct = load_idx_dataset("mnist", str(idx_dir))
    cache = tmp_path / "cache"
    with npy_cache(str(cache), SerialComm()):
        first = load_idx_dataset("mnist", str(idx_dir))
        second = load_idx_dataset("mnist", str(idx_dir))
    entries = sorted(os.listdir(cache))
    assert len(entries) == 2 and all(e.startswith("mnist-") for e in entries)  # train and t10k
    for ds in (first, second):
        for name in ("x_train", "y_train", "x_val", "y_val"):
            np.testing.assert_array_equal(getattr(ds, name), getattr(direct, name))
        assert isinstance(ds.x_train, np.memmap) and ds.x_train.shape == (40, 1, 6, 5)
        assert ds.y_train.dtype == np.int64
    assert direct.digest() == second.digest()


def test_changed_source_gets_a_new_entry(idx_dir, tmp_path):
    path = str(idx_dir / "train-labels-idx1-ubyte.gz")
    key = source_key("mnist-train", [path])
    _write_idx(path, np.arange(40, dtype=np.uint8) % 10)
    os.utime(path, ns=(1, 1))
    assert source_key("mnist-train", [path]) != key
    with npy_cache(str(tmp_path / "cache"), SerialComm()):
        ds = load_idx_dataset("mnist", str(idx_dir))
    np.testing.assert_array_equal(ds.y_train, np.arange(40) % 10)


def test_unwritable_cache_folder_falls_back_to_the_source(idx_dir, tmp_path, capsys):
    cache = tmp_path / "not-a-folder"
    cache.write_text("a file where the cache folder should be")  # fails for root too
    with npy_cache(str(cache), SerialComm()):
        ds = load_idx_dataset("mnist", str(idx_dir))
    assert ds.x_train.shape == (40, 1, 6, 5) and not isinstance(ds.x_train, np.memmap)
    assert "cannot write the dataset cache" in capsys.readouterr().err
