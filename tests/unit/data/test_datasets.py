"""The built-in digits, the IDX reader and data sets (mpidl.data.idx, mpidl.data.datasets): round
trips, named errors for damaged or inconsistent files, non-finite inputs refused."""

import gzip
import struct

import numpy as np
import pytest

from mpidl.data.datasets import load_dataset, load_digits
from mpidl.data.idx import parse_idx, read_idx
from mpidl.errors import DataError


def test_builtin_digits():
    ds = load_digits()
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_val.shape == (360, 1, 8, 8)
    assert set(np.unique(ds.y_train)) == set(range(10))
    x = ds.inputs(ds.x_train[:5], np.float32)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


def _idx_bytes(array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_mnist(folder, n_train=12, n_test=5, gz=True, labels_train=None):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (labels_train if labels_train is not None
                                    else rng.integers(0, 10, n_train)).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, arr in files.items():
        raw = _idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_round_trip(tmp_path, gz):
    files = _write_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", str(tmp_path))
    np.testing.assert_array_equal(ds.x_train[:, 0], files["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_val, files["t10k-labels-idx1-ubyte"])
    assert ds.val_name == "test"


def test_idx_other_types():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(a, 0x0D)), a)
    b = np.array([-5, 7], dtype=np.int32)
    np.testing.assert_array_equal(parse_idx(_idx_bytes(b, 0x0C)), b)


@pytest.mark.parametrize("raw,message", [
    (b"\x12\x34\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
    (b"\x00", "too short"),
])
def test_bad_idx_bytes_are_named_errors(raw, message):
    with pytest.raises(DataError, match=message):
        parse_idx(raw, "f.idx")


def test_corrupt_gzip_and_missing_files(tmp_path):
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob[:-10]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        read_idx(str(path))
    with pytest.raises(DataError, match="no such directory"):
        load_dataset("mnist", str(tmp_path / "nope"))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((12, 28, 28), np.uint8))))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", str(tmp_path))


def test_label_count_mismatch_and_out_of_range_labels(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(11, np.uint8))))
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        load_dataset("mnist", str(tmp_path))
    _write_mnist(tmp_path, labels_train=np.full(12, 10))
    with pytest.raises(DataError, match="outside the 10 classes"):
        load_dataset("mnist", str(tmp_path))


def test_non_finite_inputs_are_refused_by_name():
    from mpidl.data.datasets import Dataset
    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    ds = Dataset("toy", "regression", x, np.zeros((4, 1)), np.zeros((2, 3)), np.zeros((2, 1)), num_classes=1)
    with pytest.raises(DataError, match="toy: train sample 2 has NaN or infinite inputs"):
        ds.validate()
    ds.x_train[2, 1] = 0
    ds.y_val[1, 0] = np.inf
    with pytest.raises(DataError, match="validation targets contain NaN"):
        ds.validate()
