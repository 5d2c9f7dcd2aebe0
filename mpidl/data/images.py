"""Image folders: one sub-folder per class, decoded once into the dataset cache.

    PATH/train/<class>/*.png|jpg|jpeg|bmp  and  PATH/val/<class>/...  (or PATH/test/<class>/...)
    PATH/<class>/*.png ...                  one set; --val-fraction splits it

The classes are the sorted sub-folder names of the training folder; a label is an index into
them (saved with the model as its class names). A validation folder may hold fewer classes,
never one the training folder lacks.

Decoding is long work, so it happens once: the images (in sorted order, deterministic) are
converted to uint8 arrays (N, C, H, W) and written to the dataset cache
(:func:`mpidl.data.cache.cached_arrays`), which every later run and every rank memory-maps.
C is 1 when the first image is grayscale (modes 1, L, LA, I, F and I;16: every image is then
converted to L; 16-bit images keep their high byte, I and F are clipped to 0..255), else 3
(every image converted to RGB, alpha dropped). Every image must have the first one's size, or
``--image-size HxW`` resizes them all (bilinear). Model inputs are pixels / 255.

Pillow is an optional extra: ``pip install 'mpidl[images]'``.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from mpidl.data.cache import cached_arrays, caching_active
from mpidl.data.files import FileOptions, Splits
from mpidl.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
LAYOUT = ("expected PATH/train/<class>/*.png|jpg|jpeg|bmp (with PATH/val/<class>/... or "
          "PATH/test/<class>/...), or PATH/<class>/*.png with no validation split")
# Bump when the decoded arrays change for the same files and options (a fresh cache entry).
CACHE_VERSION = 1


def _import_pillow(path: str):
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(f"{path}: reading an image folder needs Pillow: pip install 'mpidl[images]'") from exc
    return Image


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc


def class_folders(folder: str) -> list[str]:
    return [n for n in _listdir(folder) if os.path.isdir(os.path.join(folder, n))]


def image_files(folder: str) -> list[str]:
    return [os.path.join(folder, n) for n in _listdir(folder)
            if n.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]


def find_layout(path: str) -> tuple[str, str | None, str]:
    """(training folder, validation folder or None, 'val' or 'test')."""
    train = os.path.join(path, "train")
    for name in ("val", "test"):
        other = os.path.join(path, name)
        if os.path.isdir(other):
            if not os.path.isdir(train):
                raise DataError(f"{path}: has {name}/ but no train/ folder; {LAYOUT}")
            return train, other, name
    return (train if os.path.isdir(train) else path), None, "val"


def list_split(folder: str, classes: list[str] | None) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, image files, labels) of one split; `classes`: the training split's."""
    names = class_folders(folder)
    if not names:
        raise DataError(f"{folder}: no class folders; {LAYOUT}")
    if classes is not None:
        for name in names:
            if name not in classes:
                raise DataError(f"{os.path.join(folder, name)}: class '{name}' is not in the training "
                                f"folder (its classes: {', '.join(classes[:10])}"
                                f"{', ...' if len(classes) > 10 else ''})")
    index = {n: i for i, n in enumerate(classes if classes is not None else names)}
    files, labels = [], []
    for name in names:
        found = image_files(os.path.join(folder, name))
        if not found:
            raise DataError(f"{os.path.join(folder, name)}: no images (.png, .jpg, .jpeg, .bmp) in "
                            f"class folder '{name}'; {LAYOUT}")
        files += found
        labels += [index[name]] * len(found)
    return names, files, np.asarray(labels, dtype=np.int64)


def _to_gray(Image, img):
    if img.mode.startswith("I;16"):  # 16-bit: keep the high byte (convert('L') would clip)
        a = np.asarray(img).astype(np.uint16, copy=False)
        return Image.fromarray((a >> 8).astype(np.uint8), mode="L") if a.ndim == 2 else img.convert("L")
    return img if img.mode == "L" else img.convert("L")


class Decoder:
    """Opens, converts and resizes every image like the first (or to `size`)."""

    def __init__(self, Image, size: tuple[int, int] | None):
        self.Image, self.size = Image, size          # size: (height, width)
        self.channels, self.first, self.first_size = None, None, None

    def open(self, path: str):
        Image = self.Image
        try:
            with Image.open(path) as img:
                img.load()
                if self.channels is None:
                    self.channels = 1 if img.mode in GRAYSCALE_MODES else 3
                if self.channels == 1:
                    out = _to_gray(Image, img)
                elif img.mode in GRAYSCALE_MODES:
                    out = _to_gray(Image, img).convert("RGB")
                else:
                    out = img.convert("RGB")
                if self.size is not None and out.size != (self.size[1], self.size[0]):
                    out = out.resize((self.size[1], self.size[0]), Image.BILINEAR)
                a = np.asarray(out, dtype=np.uint8)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
            raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc
        if self.first is None:
            self.first, self.first_size = path, a.shape[:2]
        elif a.shape[:2] != self.first_size:
            h, w = a.shape[:2]
            fh, fw = self.first_size
            raise DataError(f"{path}: image is {h}x{w} (height x width) but the first image, {self.first}, "
                            f"is {fh}x{fw}; give --image-size HxW (e.g. --image-size {fh}x{fw}) to resize "
                            "every image")
        return a.reshape(*a.shape[:2], self.channels).transpose(2, 0, 1)


def decode_images(Image, files: list[str], size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (N, C, H, W) from `files`, in that order."""
    decoder = Decoder(Image, size)
    first = decoder.open(files[0])
    out = np.empty((len(files), *first.shape), np.uint8)
    out[0] = first
    for i, path in enumerate(files[1:], 1):
        out[i] = decoder.open(path)
    return out


def _cache_label(path: str, size: tuple[int, int] | None) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(os.path.abspath(path))))
    shape = f"{size[0]}x{size[1]}" if size else "native"
    return f"images-{base[:40] or 'folder'}-{shape}-v{CACHE_VERSION}"


def read_image_folder(path: str, options: FileOptions) -> Splits:
    Image = _import_pillow(path)
    size = options.image_size
    if size is not None:
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise DataError(f"--image-size {size}: give HEIGHTxWIDTH, both at least 1")
        size = (int(size[0]), int(size[1]))
    train_dir, val_dir, val_name = find_layout(path)
    classes, train_files, y_train = list_split(train_dir, None)
    val_files, y_val = [], None
    if val_dir is not None:
        _, val_files, y_val = list_split(val_dir, classes)
    files = train_files + val_files
    names = ("x_train", "y_train") + (("x_val", "y_val") if val_dir is not None else ())

    def build():
        where = "into the dataset cache (once)" if caching_active() else \
            "into memory (no dataset cache: decoded again on every load)"
        print(f"mpidl: decoding {len(files)} images from {path} {where}", file=sys.stderr, flush=True)
        x = decode_images(Image, files, size)
        arrays = {"x_train": x[:len(train_files)], "y_train": y_train}
        if val_dir is not None:
            arrays.update(x_val=x[len(train_files):], y_val=y_val)
        return arrays

    try:
        arrays = cached_arrays(_cache_label(path, size), files, names, build)
    except OSError as exc:  # a file vanished or became unreadable while its size was read
        raise DataError(f"{path}: cannot read {exc.filename or 'an image'} ({exc.strerror or exc})") from exc
    keys = dict(x=train_dir, y=train_dir, x_val=val_dir, y_val=val_dir)
    return Splits(source=path, x_train=arrays["x_train"], y_train=arrays["y_train"],
                  x_val=arrays.get("x_val"), y_val=arrays.get("y_val"), val_name=val_name,
                  scale=1 / 255, class_names=list(classes), keys=keys)
