"""HDF5 files: the .npz names or --x-key/--y-key (also inside groups), memory maps for
contiguous datasets, row-by-row reads for chunked/compressed ones, string labels as classes,
and a DataError naming the file and key for everything a file can get wrong."""

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpidl.data.files import FileOptions, Rows, load_file_dataset, take_rows
from mpidl.data.hdf5 import H5Rows, read_hdf5
from mpidl.errors import DataError

h5py = pytest.importorskip("h5py")

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def arrays(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64)


def write(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            if isinstance(value, dict):
                f.create_dataset(name, **value)
            else:
                f.create_dataset(name, data=value)
    return str(path)


def test_train_and_val_are_memory_mapped(tmp_path):
    x, y = arrays(40)
    xv, yv = arrays(12, seed=1)
    path = write(tmp_path / "data.h5", x_train=x, y_train=y, x_val=xv, y_val=yv)
    ds = load_file_dataset(path, FileOptions())
    assert isinstance(ds.x_train, np.memmap) and isinstance(ds.x_val, np.memmap)
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.x_val, xv)
    np.testing.assert_array_equal(ds.y_val, yv)
    assert ds.task == "classification" and ds.num_classes == 3 and ds.val_name == "val"
    assert ds.sample_shape == (3, 4) and ds.scale == 1.0 and ds.class_names is None
    ds.validate()
    assert ds.digest() == load_file_dataset(path, FileOptions()).digest()


def test_test_split_big_endian_and_float_targets(tmp_path):
    x, _ = arrays(30)
    y = np.linspace(0, 1, 30)
    path = write(tmp_path / "reg.hdf5", x_train=x.astype(">f8"), y_train=y,
                 x_test=x[:5].astype(">f8"), y_test=y[:5])
    ds = load_file_dataset(path, FileOptions())
    assert ds.val_name == "test" and ds.task == "regression" and ds.num_classes == 1
    np.testing.assert_array_equal(ds.x_train, x)  # mapped with the file's byte order
    assert ds.y_train.shape == (30, 1)


def test_x_and_y_without_validation_split(tmp_path):
    x, y = arrays(40)
    path = write(tmp_path / "xy.h5", x=x, y=y)
    ds = load_file_dataset(path, FileOptions())
    assert ds.val_name == "train" and len(ds.x_train) == 40
    ds = load_file_dataset(path, FileOptions(val_fraction=0.25))
    assert len(ds.x_train) == 30 and len(ds.x_val) == 10 and isinstance(ds.x_train, Rows)
    both = np.concatenate([ds.x_train[:], ds.x_val[:]])
    np.testing.assert_array_equal(np.sort(both.reshape(40, -1), axis=0), np.sort(x.reshape(40, -1), axis=0))


def test_chunked_gzip_dataset_is_read_row_by_row(tmp_path):
    x, y = arrays(40)
    path = write(tmp_path / "chunked.h5",
                 x_train=dict(data=x, chunks=(4, 3, 4), compression="gzip"),
                 y_train=dict(data=y, chunks=(8,), compression="gzip", shuffle=True))
    ds = load_file_dataset(path, FileOptions(val_fraction=0.25))
    base = ds.x_train.base
    assert isinstance(base, H5Rows) and not isinstance(base, np.ndarray)
    assert base.shape == (40, 3, 4) and base.ndim == 3 and len(base) == 40 and base.dtype == np.float32
    rows = np.array([17, 3, 39, 3, 0, 25])  # unsorted, with a repeat
    np.testing.assert_array_equal(take_rows(base, rows), x[rows])
    np.testing.assert_array_equal(base[rows], x[rows])
    np.testing.assert_array_equal(base[np.array([1, 2, 30, 31, 32])], x[[1, 2, 30, 31, 32]])  # runs
    np.testing.assert_array_equal(base[np.array([0, 39])], x[[0, 39]])
    np.testing.assert_array_equal(base[5], x[5])
    np.testing.assert_array_equal(base[-1], x[-1])
    np.testing.assert_array_equal(base[3:20:4], x[3:20:4])
    np.testing.assert_array_equal(base[::-3], x[::-3])
    np.testing.assert_array_equal(base[x[:, 0, 0] > 0], x[x[:, 0, 0] > 0])
    np.testing.assert_array_equal(base[10:5], x[10:5])
    np.testing.assert_array_equal(np.asarray(base), x)
    with pytest.raises(IndexError):
        base[40]
    # the split's rows, read through Rows -> take_rows -> H5Rows
    for i in range(len(ds.x_train)):
        np.testing.assert_array_equal(ds.x_train[i], x[ds.x_train.index[i]])
    np.testing.assert_array_equal(ds.x_val[:], x[ds.x_val.index])
    np.testing.assert_array_equal(ds.y_train, y[ds.x_train.index])
    ds.validate()
    ds.digest()


def test_string_targets_become_classes(tmp_path):
    x, _ = arrays(6)
    names = ["dog", "cat", "dog", "bird", "cat", "dog"]
    fixed = np.array([n.encode() for n in names], dtype="S4")
    path = write(tmp_path / "fixed.h5", x=x, y=fixed)
    ds = load_file_dataset(path, FileOptions())
    assert ds.class_names == ["bird", "cat", "dog"] and ds.task == "classification"
    np.testing.assert_array_equal(ds.y_train, [2, 1, 2, 0, 1, 2])
    with h5py.File(tmp_path / "vlen.h5", "w") as f:
        f["x_train"] = x
        f.create_dataset("y_train", data=names, dtype=h5py.string_dtype())
        f["x_val"] = x[:2]
        f.create_dataset("y_val", data=["cat", "fish"], dtype=h5py.string_dtype())
    ds = load_file_dataset(str(tmp_path / "vlen.h5"), FileOptions())
    assert ds.class_names == ["bird", "cat", "dog", "fish"] and ds.num_classes == 4
    np.testing.assert_array_equal(ds.y_val, [1, 3])


def test_keys_inside_groups(tmp_path):
    x, y = arrays(20)
    with h5py.File(tmp_path / "groups.h5", "w") as f:
        f.create_dataset("images/train", data=x, chunks=(5, 3, 4), compression="lzf")
        f.create_dataset("labels/train", data=y)
        f.create_dataset("x_val", data=x[:3])  # ignored: --x-key means no split from the file
        f.create_dataset("y_val", data=y[:3])
    path = str(tmp_path / "groups.h5")
    ds = load_file_dataset(path, FileOptions(x_key="images/train", y_key="labels/train", val_fraction=0.25))
    assert len(ds.x_train) == 15 and len(ds.x_val) == 5
    np.testing.assert_array_equal(ds.x_train[:], x[ds.x_train.index])
    s = read_hdf5(path, FileOptions(x_key="images/train", y_key="/labels/train"))
    assert s.x_val is None and s.keys["x"] == "images/train" and isinstance(s.y_train, np.memmap)


def test_missing_names_list_the_datasets(tmp_path):
    x, y = arrays(10)
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["inputs/a"] = x
        f["labels"] = y
    path = str(tmp_path / "odd.h5")
    with pytest.raises(DataError) as info:
        load_file_dataset(path, FileOptions())
    msg = str(info.value)
    assert path in msg and "'x_train'" in msg and "inputs/a" in msg and "labels" in msg and "--x-key" in msg
    with pytest.raises(DataError) as info:
        load_file_dataset(path, FileOptions(x_key="inputs/b", y_key="labels"))
    msg = str(info.value)
    assert path in msg and "inputs/b" in msg and "--x-key" in msg and "inputs/a" in msg
    with pytest.raises(DataError, match="'inputs' is a group") as info:
        load_file_dataset(path, FileOptions(x_key="inputs", y_key="labels"))
    assert path in str(info.value)


def test_listing_is_bounded(tmp_path):
    with h5py.File(tmp_path / "many.h5", "w") as f:
        for i in range(30):
            f[f"group/d{i:02d}"] = np.zeros(2)
    with pytest.raises(DataError) as info:
        load_file_dataset(str(tmp_path / "many.h5"), FileOptions())
    msg = str(info.value)
    assert "group/d09" in msg and "group/d10" not in msg and "..." in msg


def test_validation_inputs_without_targets(tmp_path):
    x, y = arrays(10)
    path = write(tmp_path / "half.h5", x_train=x, y_train=y, x_test=x)
    with pytest.raises(DataError, match="no dataset 'y_test'") as info:
        load_file_dataset(path, FileOptions())
    assert path in str(info.value)


def test_numeric_training_and_string_validation_targets(tmp_path):
    x, y = arrays(10)
    path = write(tmp_path / "mixed.h5", x_train=x, y_train=y, x_val=x[:2], y_val=np.array([b"cat", b"dog"]))
    message = "'y_train' are numbers but the val targets 'y_val' are strings"
    with pytest.raises(DataError, match=message) as info:
        load_file_dataset(path, FileOptions())
    assert path in str(info.value)


@pytest.mark.parametrize("make,kind", [
    (lambda f: f.create_dataset("x", data=np.zeros(4, dtype=[("a", "f4"), ("b", "i4")])), "compound"),
    (lambda f: f.create_dataset("x", data=["a", "b", "c", "d"], dtype=h5py.string_dtype()), "strings"),
    (lambda f: f.create_dataset("x", (4,), dtype=h5py.vlen_dtype(np.float32)), "variable-length"),
    (lambda f: f.create_dataset("x", data=np.zeros((4, 2), np.complex64)), "complex64"),
    (lambda f: f.create_dataset("x", data=np.float32(1)), "single value"),
])
def test_inputs_that_are_not_numbers(tmp_path, make, kind):
    path = str(tmp_path / "bad.h5")
    with h5py.File(path, "w") as f:
        make(f)
        f["y"] = np.arange(4)
    with pytest.raises(DataError, match=kind) as info:
        load_file_dataset(path, FileOptions())
    assert path in str(info.value) and "'x'" in str(info.value)


def test_not_hdf5_and_truncated(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("this is not HDF5\n")
    with pytest.raises(DataError, match="not a readable HDF5 file") as info:
        load_file_dataset(str(text), FileOptions())
    assert str(text) in str(info.value)
    x, y = arrays(400)
    path = write(tmp_path / "cut.h5", x=x, y=y)
    raw = open(path, "rb").read()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as info:
        load_file_dataset(path, FileOptions())
    assert path in str(info.value)


def test_without_h5py(tmp_path, monkeypatch):
    x, y = arrays(4)
    path = write(tmp_path / "d.h5", x=x, y=y)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(DataError, match=r"needs h5py: pip install 'mpidl\[hdf5\]'") as info:
        load_file_dataset(path, FileOptions())
    assert path in str(info.value)


def _sample_file(path):
    x, y = arrays(16)
    with h5py.File(path, "w") as f:
        f.create_dataset("x_train", data=x, chunks=(4, 3, 4), compression="gzip")
        f.create_dataset("y_train", data=np.array([b"ab", b"cd", b"ef"])[y])
        f.create_dataset("x_val", data=x[:4])
        f.create_dataset("y_val", data=np.array([b"ab", b"cd", b"ef", b"cd"]))
    return open(path, "rb").read()


def _load_fully(path):
    """A DataError, or a dataset whose every row reads."""
    try:
        ds = load_file_dataset(str(path), FileOptions())
        for a in (ds.x_train, ds.y_train, ds.x_val, ds.y_val):
            take_rows(a, np.arange(len(a)))
    except DataError:
        return


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("h5") / "fuzz.h5"
    path.write_bytes(raw)
    _load_fully(path)


@FUZZ
@given(cut=st.integers(0, 4000), flip=st.integers(0, 100_000), mask=st.integers(1, 255))
def test_fuzz_truncated_and_flipped_files(tmp_path_factory, cut, flip, mask):
    folder = tmp_path_factory.mktemp("h5")
    raw = bytearray(_sample_file(folder / "good.h5"))
    raw[flip % len(raw)] ^= mask
    path = folder / "fuzz.h5"
    path.write_bytes(bytes(raw[: max(len(raw) - cut, 0)]))
    _load_fully(path)
