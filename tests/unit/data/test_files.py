"""Your own data: .npz and .npy folders (memory-mapped), tables, the split, the task, the
checks that name the file, and bounded fuzzing of the readers."""

import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpidl.data import load_dataset
from mpidl.data.cache import npy_cache
from mpidl.data.files import FileOptions, load_file_dataset, take_rows, validation_rows
from mpidl.errors import DataError
from mpidl.parallel.comm import SerialComm


def _xy(n=60, features=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n)


# -- arrays ---------------------------------------------------------------------------

def test_uncompressed_npz_is_memory_mapped_in_place(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    ds = load_file_dataset(str(tmp_path / "d.npz"))
    assert isinstance(ds.x_train, np.memmap) and isinstance(ds.x_val, np.memmap)
    np.testing.assert_array_equal(ds.x_train, x[:40])
    np.testing.assert_array_equal(ds.y_val, y[40:])
    assert (ds.task, ds.num_classes, ds.val_name, ds.sample_shape) == ("classification", 3, "test", (5,))


def test_fortran_order_and_npy_folder_are_mapped(tmp_path):
    x, y = _xy()
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "x.npy", np.asfortranarray(x))
    np.save(folder / "y.npy", y)
    ds = load_file_dataset(str(folder), FileOptions(val_fraction=0.25, seed=3))
    assert isinstance(ds.x_train.base, np.memmap)
    val, train = validation_rows(60, 0.25, 3)
    np.testing.assert_array_equal(ds.x_val[:], x[val])
    np.testing.assert_array_equal(ds.x_train[np.array([5, 1])], x[train[[5, 1]]])
    np.testing.assert_array_equal(ds.y_train, y[train])
    assert len(val) == 15 and not set(val) & set(train)


def test_val_fraction_split_is_reproducible_from_the_seed():
    a, b, c = validation_rows(100, 0.2, 1), validation_rows(100, 0.2, 1), validation_rows(100, 0.2, 2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_compressed_npz_is_converted_once_into_the_cache_and_says_so(tmp_path, capsys):
    x, y = _xy()
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y)
    with npy_cache(str(tmp_path / "cache"), SerialComm()):
        ds = load_file_dataset(str(tmp_path / "c.npz"))
        assert "decompressing it once into the dataset cache" in capsys.readouterr().err
        again = load_file_dataset(str(tmp_path / "c.npz"))
        assert capsys.readouterr().err == ""
    assert isinstance(again.x_train, np.memmap)
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_keys_and_regression_targets(tmp_path):
    x, _ = _xy()
    targets = x[:, :2] @ np.array([[1.0, 2.0], [0.5, -1.0]])
    np.savez(tmp_path / "r.npz", inputs=x, outputs=targets)
    ds = load_file_dataset(str(tmp_path / "r.npz"), FileOptions(x_key="inputs", y_key="outputs"))
    assert (ds.task, ds.num_classes, ds.val_name) == ("regression", 2, "train")
    with pytest.raises(DataError, match="no array named 'wrong' \\(it has: inputs, outputs\\)"):
        load_file_dataset(str(tmp_path / "r.npz"), FileOptions(x_key="wrong", y_key="outputs"))


@pytest.fixture
def bad(tmp_path):
    def write(name, **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return str(path)
    return write


def test_bad_arrays_get_one_line_naming_the_file(bad, tmp_path):
    x, y = _xy()
    cases = [
        (bad("nan.npz", x=np.where(np.arange(60)[:, None] == 7, np.nan, x), y=y), "sample 7 has NaN"),
        (bad("inf.npz", x_train=x, y_train=y, x_val=np.full((3, 5), np.inf), y_val=y[:3]), "validation sample 0"),
        (bad("keys.npz", a=x, b=y), "expected arrays x_train and y_train"),
        (bad("half.npz", x_train=x, y_train=y, x_val=x), "has x_val but no y_val"),
        (bad("shape.npz", x_train=x, y_train=y, x_val=x[:, :4], y_val=y), "samples (4,)"),
        (bad("len.npz", x=x, y=y[:50]), "60 training inputs but 50 targets"),
        (bad("float.npz", x=x, y=y + 0.5), None),  # regression: accepted
        (bad("one.npz", x=x, y=np.zeros(60, dtype=int)), "classification needs two classes"),
        (bad("neg.npz", x=x, y=y - 1), "is negative"),
        (bad("vec.npz", x=x[:, 0], y=y), "one row per sample"),
    ]
    for path, message in cases:
        if message is None:
            assert load_dataset(path).task == "regression"
            continue
        with pytest.raises(DataError) as err:
            load_dataset(path)
        text = str(err.value)
        assert message in text and "\n" not in text, (path, text)
        assert "keys.npz" not in path or "keys.npz" in text


def test_non_integer_labels_for_classification_are_refused(bad):
    x, y = _xy()
    path = bad("f.npz", x=x, y=y + 0.5)
    with pytest.raises(DataError, match=r"f.npz: label 0.5 of sample 0 is not an integer"):
        load_file_dataset(path, FileOptions(task="classification"))


def test_object_arrays_stay_off(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "o.npz", x=np.array([object()] * 60, dtype=object), y=y)
    with pytest.raises(DataError, match="Python objects"):
        load_file_dataset(str(tmp_path / "o.npz"))
    folder = tmp_path / "objs"
    folder.mkdir()
    np.save(folder / "x.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    np.save(folder / "y.npy", np.arange(4))
    with pytest.raises(DataError, match=r"x.npy: holds Python objects"):
        load_file_dataset(str(folder))


def test_fewer_samples_than_ranks_is_refused():
    from mpidl import nn
    from mpidl.errors import ConfigError
    from mpidl.trainer import Trainer

    class Three:
        rank, size, local_rank, local_size = 0, 4, 0, 4
    x, y = _xy(n=3)
    with pytest.raises(ConfigError, match="3 training samples are fewer than the 4 ranks"):
        t = Trainer.__new__(Trainer)
        from mpidl.config import library_config
        from mpidl.data import ArrayDataset
        from mpidl.models.base import Model
        t._setup(library_config({"batch_size": 4, "epochs": 1}), Three(),
                 Model(nn.Sequential(nn.Linear(5, 3)), "cross_entropy"), ArrayDataset(x, y), ())


# -- tables ---------------------------------------------------------------------------

def _csv(path, header, rows, sep=","):
    path.write_text(sep.join(header) + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in rows))
    return str(path)


def test_table_with_string_targets_becomes_classes(tmp_path):
    rows = [[i * 0.5, -i, ["setosa", "virginica", "versicolor"][i % 3]] for i in range(30)]
    path = _csv(tmp_path / "iris.csv", ["a", "b", "species"], rows)
    ds = load_file_dataset(path, FileOptions(target="species", val_fraction=0.2))
    assert ds.class_names == ["setosa", "versicolor", "virginica"]
    assert ds.feature_names == ["a", "b"] and ds.sample_shape == (2,)
    assert (ds.task, ds.num_classes, len(ds.x_train), len(ds.x_val)) == ("classification", 3, 24, 6)
    row = int(np.flatnonzero(np.asarray(ds.x_train[:])[:, 0] == 0.5)[0])
    assert ds.class_names[ds.y_train[row]] == "virginica"


def test_tsv_with_a_default_target_column_and_float_values(tmp_path):
    rows = [[i, i * 0.25, 2.5 * i + 1] for i in range(20)]
    path = _csv(tmp_path / "t.tsv", ["x1", "x2", "target"], rows, sep="\t")
    ds = load_file_dataset(path)
    assert ds.task == "regression" and ds.y_train.shape == (20, 1)
    np.testing.assert_allclose(ds.x_train[:, 1], np.arange(20) * 0.25)


@pytest.mark.parametrize("text, target, message", [
    ("a,b,y\n1,2,0\n3,4\n", None, "line 3 has 2 fields but the header has 3"),
    ("a,b,y\n1,2,0\n3,oops,1\n", None, "line 3, column 'b': 'oops' is not a number"),
    ("a,b,y\n1,2,0\n3,nan,1\n", None, "line 3, column 'b': NaN or infinite"),
    ("a,b,y\n1,2,0\n3,inf,1\n", None, "line 3, column 'b': NaN or infinite"),
    ("a,b,c\n1,2,0\n", None, "give --target NAME"),
    ("a,b,c\n1,2,0\n", "label", "no column 'label' for --target"),
    ("a,b,y\n", None, "no data rows"),
    ("", None, "empty"),
    ("a,a,y\n1,2,3\n", None, "name every column once"),
    ("a,b,y\n1,2,\n", None, "line 2: the target column 'y' is empty"),
    ("y\n1\n2\n", None, "no feature columns"),
])
def test_bad_tables_get_one_line_naming_file_and_line(tmp_path, text, target, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_file_dataset(str(path), FileOptions(target=target))
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)


def test_table_is_parsed_once_into_the_cache(tmp_path):
    path = _csv(tmp_path / "d.csv", ["a", "y"], [[i, i % 2] for i in range(10)])
    with npy_cache(str(tmp_path / "cache"), SerialComm()):
        first = load_file_dataset(path)
        second = load_file_dataset(path)
    assert isinstance(second.x_train, np.memmap)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert len(os.listdir(tmp_path / "cache")) == 1


# -- reading rows ---------------------------------------------------------------------

def test_take_rows_reads_unsorted_indices_in_order_from_a_reader():
    class Increasing:  # like h5py: increasing indices only
        shape, dtype, ndim = (10, 2), np.dtype(float), 2

        def __len__(self):
            return 10

        def __getitem__(self, rows):
            assert np.all(np.diff(rows) > 0)
            return np.arange(20.0).reshape(10, 2)[rows]
    got = take_rows(Increasing(), np.array([7, 2, 2, 9]))
    np.testing.assert_array_equal(got[:, 0], [14, 4, 4, 18])


# -- fuzzing (bounded) ----------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_random_bytes_as_npz_or_table_raise_data_errors_only(tmp_path, blob):
    for name in ("f.npz", "f.csv"):
        path = tmp_path / name
        path.write_bytes(blob)
        try:
            load_dataset(str(path))
        except DataError:
            pass


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=1, max_value=2000), st.integers(min_value=0, max_value=255))
def test_damaged_npz_raises_data_errors_only(tmp_path, cut, byte):
    x, y = _xy()
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    raw = bytearray(path.read_bytes())
    raw[min(cut, len(raw) - 1)] = byte
    path.write_bytes(bytes(raw[:len(raw) - cut % 7]))
    try:
        ds = load_dataset(str(path))
        assert zipfile.is_zipfile(path) and len(ds.x_train) > 0
    except DataError:
        pass
