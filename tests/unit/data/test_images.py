"""Image folders: classes from sub-folders, grayscale or RGB uint8 (N, C, H, W) scaled by
1/255, --image-size resizing, decoded once into the dataset cache, and a DataError naming
the folder or file for every layout or file problem."""

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpidl.data.images as images
from mpidl.data.cache import npy_cache
from mpidl.data.files import FileOptions, Rows, load_file_dataset
from mpidl.errors import DataError
from mpidl.parallel.comm import SerialComm

Image = pytest.importorskip("PIL.Image")

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def save(path, array, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, fmt)
    return array


def make_split(root, counts, shape=(8, 8), rgb=False, seed=0, ext="png"):
    """root/<class>/iNN.ext with random pixels; returns (images (N, C, H, W), labels) in
    sorted order, as the reader must give them."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            a = rng.integers(0, 256, size=(*shape, 3) if rgb else shape, dtype=np.uint8)
            save(root / name / f"i{i:02d}.{ext}", a)
            xs.append(a.transpose(2, 0, 1) if rgb else a[None])
            ys.append(label)
    return np.stack(xs), np.array(ys)


def test_grayscale_train_and_val(tmp_path, capsys):
    x, y = make_split(tmp_path / "train", {"cat": 10, "dog": 12, "emu": 8})
    xv, yv = make_split(tmp_path / "val", {"cat": 3, "emu": 2}, seed=1)
    yv = np.where(yv == 1, 2, yv)  # val has no dog: emu is class 2 of the training folder
    ds = load_file_dataset(str(tmp_path), FileOptions())
    assert f"decoding 35 images from {tmp_path} into memory (no dataset cache" in capsys.readouterr().err
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (30, 1, 8, 8)
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.x_val, xv)
    np.testing.assert_array_equal(ds.y_val, yv)
    assert ds.class_names == ["cat", "dog", "emu"] and ds.num_classes == 3 and ds.task == "classification"
    assert ds.sample_shape == (1, 8, 8) and ds.scale == pytest.approx(1 / 255) and ds.val_name == "val"
    np.testing.assert_allclose(ds.inputs(ds.x_val[:2], np.float32), xv[:2] / 255, rtol=1e-6)
    ds.validate()


def test_rgb_with_test_folder_and_converted_modes(tmp_path):
    x, y = make_split(tmp_path / "train", {"a": 5, "b": 5}, shape=(6, 7), rgb=True)
    # an RGBA png and a palette image in class b: both become RGB
    rgba = np.random.default_rng(3).integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
    save(tmp_path / "train" / "b" / "z_rgba.png", rgba)
    pal = Image.fromarray(rgba[..., :3]).convert("P")
    pal.save(tmp_path / "train" / "b" / "z_pal.bmp")
    # a PNG without an image file name: not read
    save(tmp_path / "train" / "b" / "notes.txt.gz", np.zeros((2, 2), np.uint8), fmt="PNG")
    xt, _ = make_split(tmp_path / "test", {"a": 2, "b": 2}, shape=(6, 7), rgb=True, seed=2, ext="bmp")
    ds = load_file_dataset(str(tmp_path), FileOptions())
    assert ds.val_name == "test" and ds.x_train.shape == (12, 3, 6, 7) and ds.x_val.shape == (4, 3, 6, 7)
    np.testing.assert_array_equal(ds.x_train[:10], x)
    np.testing.assert_array_equal(ds.x_train[11], rgba[..., :3].transpose(2, 0, 1))  # z_rgba
    np.testing.assert_array_equal(ds.x_train[10], np.asarray(pal.convert("RGB")).transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.x_val, xt)  # BMP is lossless
    np.testing.assert_array_equal(ds.y_train, [0] * 5 + [1] * 7)


def test_jpeg_and_first_image_decides_channels(tmp_path):
    save(tmp_path / "a" / "0.jpg", np.full((8, 8), 100, np.uint8))
    rgb = save(tmp_path / "b" / "1.JPEG", np.zeros((8, 8, 3), np.uint8) + np.uint8([200, 10, 10]))
    ds = load_file_dataset(str(tmp_path), FileOptions())
    assert ds.x_train.shape == (2, 1, 8, 8)  # the first image is grayscale: RGB becomes L
    assert abs(int(ds.x_train[0].mean()) - 100) <= 2
    expected = np.asarray(Image.fromarray(rgb.astype(np.uint8)).convert("L")).mean()
    assert abs(float(ds.x_train[1].mean()) - expected) <= 3


def test_sixteen_bit_grayscale_keeps_the_high_byte(tmp_path):
    a = np.array([[0, 255, 256, 40000], [65535, 1000, 513, 7]], dtype=np.uint16)
    save(tmp_path / "a" / "0.png", a)
    save(tmp_path / "b" / "1.png", np.zeros((2, 4), np.uint8))
    ds = load_file_dataset(str(tmp_path), FileOptions())
    np.testing.assert_array_equal(ds.x_train[0, 0], (a >> 8).astype(np.uint8))


def test_resize_to_image_size(tmp_path):
    rng = np.random.default_rng(0)
    small = save(tmp_path / "a" / "0.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save(tmp_path / "b" / "1.png", rng.integers(0, 256, (12, 5, 3), dtype=np.uint8))
    ds = load_file_dataset(str(tmp_path), FileOptions(image_size=(6, 10)))
    assert ds.x_train.shape == (2, 3, 6, 10)
    expected = np.asarray(Image.fromarray(small).resize((10, 6), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.x_train[0], expected)


def test_mixed_sizes_need_image_size(tmp_path):
    save(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "b" / "1.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError) as info:
        load_file_dataset(str(tmp_path), FileOptions())
    msg = str(info.value)
    assert str(tmp_path / "b" / "1.png") in msg and "8x9" in msg and "8x8" in msg and "--image-size" in msg
    assert str(tmp_path / "a" / "0.png") in msg


def test_train_only_layout_with_val_fraction(tmp_path):
    x, y = make_split(tmp_path, {"left": 20, "right": 20})
    ds = load_file_dataset(str(tmp_path), FileOptions(val_fraction=0.25))
    assert len(ds.x_train) == 30 and len(ds.x_val) == 10 and isinstance(ds.x_val, Rows)
    np.testing.assert_array_equal(ds.x_val[:], x[ds.x_val.index])
    np.testing.assert_array_equal(ds.y_val, y[ds.x_val.index])
    assert ds.class_names == ["left", "right"] and ds.val_name == "val"
    ds = load_file_dataset(str(tmp_path), FileOptions())
    assert ds.val_name == "train" and len(ds.x_train) == 40


def test_val_class_the_training_folder_lacks(tmp_path):
    make_split(tmp_path / "train", {"a": 2, "b": 2})
    make_split(tmp_path / "val", {"a": 1, "c": 1})
    with pytest.raises(DataError, match="not in the training folder") as info:
        load_file_dataset(str(tmp_path), FileOptions())
    assert str(tmp_path / "val" / "c") in str(info.value)


def test_layout_errors(tmp_path):
    make_split(tmp_path / "one" / "train", {"a": 2})
    (tmp_path / "one" / "train" / "b").mkdir()
    (tmp_path / "one" / "train" / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images") as info:
        load_file_dataset(str(tmp_path / "one"), FileOptions())
    assert str(tmp_path / "one" / "train" / "b") in str(info.value) and "expected" in str(info.value)
    flat = tmp_path / "flat"
    save(flat / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="no class folders.*expected PATH/train/<class>") as info:
        load_file_dataset(str(flat), FileOptions())
    assert str(flat) in str(info.value)
    make_split(tmp_path / "valonly" / "val", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="no train/ folder"):
        load_file_dataset(str(tmp_path / "valonly"), FileOptions())
    make_split(tmp_path / "emptyval" / "train", {"a": 1, "b": 1})
    (tmp_path / "emptyval" / "val").mkdir()
    with pytest.raises(DataError, match="no class folders") as info:
        load_file_dataset(str(tmp_path / "emptyval"), FileOptions())
    assert str(tmp_path / "emptyval" / "val") in str(info.value)


def test_unreadable_image_names_the_file(tmp_path):
    make_split(tmp_path, {"a": 2, "b": 2})
    bad = tmp_path / "b" / "i01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    with pytest.raises(DataError, match="cannot read the image") as info:
        load_file_dataset(str(tmp_path), FileOptions())
    assert str(bad) in str(info.value)


def test_without_pillow(tmp_path, monkeypatch):
    make_split(tmp_path, {"a": 1, "b": 1})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"needs Pillow: pip install 'mpidl\[images\]'") as info:
        load_file_dataset(str(tmp_path), FileOptions())
    assert str(tmp_path) in str(info.value)


def test_decoded_once_into_the_cache(tmp_path, monkeypatch, capsys):
    root = tmp_path / "imgs"
    x, y = make_split(root / "train", {"a": 6, "b": 6})
    xv, _ = make_split(root / "val", {"a": 2, "b": 2}, seed=1)
    calls = []
    decode = images.decode_images
    monkeypatch.setattr(images, "decode_images", lambda *a: calls.append(1) or decode(*a))
    with npy_cache(str(tmp_path / "cache"), SerialComm()):
        first = load_file_dataset(str(root), FileOptions())
        line = f"mpidl: decoding 16 images from {root} into the dataset cache (once)"
        assert line in capsys.readouterr().err
        second = load_file_dataset(str(root), FileOptions())
        assert calls == [1] and "decoding" not in capsys.readouterr().err
        for ds in (first, second):
            assert isinstance(ds.x_train, np.memmap) and isinstance(ds.x_val, np.memmap)
            np.testing.assert_array_equal(ds.x_train, x)
            np.testing.assert_array_equal(ds.x_val, xv)
            assert ds.class_names == ["a", "b"]
        assert first.digest() == second.digest()
        resized = load_file_dataset(str(root), FileOptions(image_size=(4, 4)))  # a new entry
        assert calls == [1, 1] and resized.sample_shape == (1, 4, 4)
        save(root / "train" / "b" / "i99.png", np.zeros((8, 8), np.uint8))  # a new file: a new entry
        third = load_file_dataset(str(root), FileOptions())
        assert calls == [1, 1, 1] and len(third.x_train) == 13


@FUZZ
@given(st.binary(max_size=300) | st.tuples(st.integers(0, 400), st.integers(0, 10_000), st.integers(1, 255),
                                           st.sampled_from(["png", "jpg", "bmp"])))
def test_fuzz_damaged_images(tmp_path_factory, case):
    """Random bytes, truncated or bit-flipped real images: a DataError or a valid dataset,
    never another exception."""
    root = tmp_path_factory.mktemp("imgs")
    good = save(root / "b" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    if isinstance(case, tuple):
        cut, flip, mask, ext = case
        path = root / "a" / f"fuzz.{ext}"
        save(path, np.random.default_rng(flip).integers(0, 256, good.shape, dtype=np.uint8))
        raw = bytearray(path.read_bytes())
        raw[flip % len(raw)] ^= mask
        path.write_bytes(bytes(raw[: max(len(raw) - cut, 0)]))
    else:
        (root / "a").mkdir()
        (root / "a" / "fuzz.png").write_bytes(case)
    try:
        ds = load_file_dataset(str(root), FileOptions())
    except DataError:
        return
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[0] == 2 and ds.x_train.shape[2:] == (8, 8)
