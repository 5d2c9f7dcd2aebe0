"""CIFAR-10 reader on small files written in exactly the official python-batch format."""

import os
import pickle

import numpy as np
import pytest

from mpidl.data import load_dataset
from mpidl.data.cifar import TEST_FILE, TRAIN_FILES, random_crop_flip, read_batch
from mpidl.errors import DataError


def write_batch(path, images, labels, protocol=2):
    """As the official files: a pickled dict with bytes keys, data uint8 (n, 3072)."""
    batch = {b"batch_label": b"a test batch", b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [b"img%d.png" % i for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


@pytest.fixture
def cifar_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    made = {}
    for i, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        images = rng.integers(0, 256, size=(6 + i, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=6 + i)
        write_batch(folder / name, images, labels, protocol=2 if i % 2 else pickle.HIGHEST_PROTOCOL)
        made[name] = (images, labels)
    return tmp_path, made


def test_reads_official_layout_and_normalises_per_channel(cifar_dir):
    root, made = cifar_dir
    ds = load_dataset("cifar10", str(root))  # the parent of cifar-10-batches-py/ is accepted too
    train_images = np.concatenate([made[n][0] for n in TRAIN_FILES])
    np.testing.assert_array_equal(ds.x_train, train_images)
    np.testing.assert_array_equal(ds.y_train, np.concatenate([made[n][1] for n in TRAIN_FILES]))
    np.testing.assert_array_equal(ds.x_val, made[TEST_FILE][0])
    assert ds.sample_shape == (3, 32, 32) and ds.val_name == "test" and ds.num_classes == 10
    x = ds.inputs(ds.x_train, np.float32)
    assert x.dtype == np.float32
    # training-set statistics: every channel ends with mean 0 and standard deviation 1
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    ref = train_images[:, 1] / 255
    np.testing.assert_allclose(x[:, 1], (ref - ref.mean()) / ref.std(), atol=1e-4)


def test_pickle_that_would_run_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_1.*(system|refusing)"):
        read_batch(str(path))
    assert not marker.exists()


def test_other_globals_are_refused_too(tmp_path):
    path = tmp_path / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"extra": np.float64}, f)
    with pytest.raises(DataError, match="test_batch"):
        read_batch(str(path))


@pytest.mark.parametrize("data,labels,message", [
    (np.zeros((4, 1024), np.uint8), [0, 1, 2, 3], r"shape \(n, 3072\)"),
    (np.zeros((4, 3072), np.float32), [0, 1, 2, 3], "uint8"),
    (np.zeros((4, 3072), np.uint8), [0, 1, 2], "4 images but 3 labels"),
    (np.zeros((4, 3072), np.uint8), ["a", 1, 2, 3], "list of integers"),
])
def test_wrong_contents_name_the_file(tmp_path, data, labels, message):
    path = tmp_path / "data_batch_3"
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with pytest.raises(DataError, match=message) as info:
        read_batch(str(path))
    assert str(path) in str(info.value)


def test_missing_files_and_garbage_are_data_errors(cifar_dir, tmp_path):
    root, _ = cifar_dir
    os.remove(root / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match="data_batch_4 not found"):
        load_dataset("cifar10", str(root))
    with pytest.raises(DataError, match="give --data-dir"):
        load_dataset("cifar10", None)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="junk"):
        read_batch(str(junk))


def test_augmentation_crops_and_flips_from_the_given_stream():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
    out = random_crop_flip(x, np.random.default_rng(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, random_crop_flip(x, np.random.default_rng(5)))
    assert not np.array_equal(out, random_crop_flip(x, np.random.default_rng(6)))
    # every output is a shifted (and maybe mirrored) copy of its input, zero-filled at the edges
    for i in range(len(x)):
        found = False
        for img in (x[i], x[i, :, :, ::-1]):
            padded = np.pad(img, ((0, 0), (4, 4), (4, 4)))
            for oy in range(9):
                for ox in range(9):
                    if np.array_equal(padded[:, oy:oy + 32, ox:ox + 32], out[i]):
                        found = True
        assert found, i
