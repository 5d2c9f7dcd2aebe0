"""Your own data from files: ``--dataset PATH`` (or ``mpidl.data.load_dataset(PATH)``).

One reader per format turns a path into :class:`Splits` (arrays, memory-mapped wherever the
format allows, and what the file says about them); :func:`to_dataset` then does what is the
same for every format: string labels to classes, the task and class count from the targets,
a seeded validation split when the file has none, and the checks that name the file.

    .npz / folder of .npy    mpidl.data.arrays     x_train, y_train, x_val|x_test, y_val|y_test (or x, y)
    .csv / .tsv              mpidl.data.table      a header; --target NAME, the other columns features
    .h5 / .hdf5              mpidl.data.hdf5       the same names as .npz, or --x-key / --y-key
    image folder             mpidl.data.images     train/<class>/*.png|jpg and val/<class>/...

Row arrays may also be a reader's own type with ``shape``, ``dtype``, ``ndim``, ``len()`` and
``[...]`` by slice or index array (HDF5 chunks): nothing here reads a whole array at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from mpidl.errors import DataError

# Rows checked, or summed for --normalize, per read: bounds the memory of a pass over a
# dataset far larger than a rank's memory.
CHUNK_BYTES = 32 * 2**20


@dataclass
class FileOptions:
    """What the command line (or the caller) says about a data file."""
    target: str | None = None        # table: the column holding the targets
    x_key: str | None = None         # .npz / .npy folder / HDF5: the inputs' name (default x_train or x)
    y_key: str | None = None         # ... and the targets' (default y_train or y)
    image_size: tuple[int, int] | None = None  # image folders: resize every image to (height, width)
    val_fraction: float | None = None  # hold out this fraction when the file has no validation split
    task: str | None = None          # classification | regression; default from the targets
    seed: int = 0                    # for the validation split


@dataclass
class Splits:
    """What a reader found: the training arrays, the validation arrays if the file has them,
    and facts about the data that travel with the trained model."""
    source: str                      # the path, for messages
    x_train: object
    y_train: object
    x_val: object = None
    y_val: object = None
    val_name: str = "val"            # 'val' or 'test', as the file names it
    scale: float = 1.0               # stored inputs x scale = model inputs (1/255 for 8-bit images)
    class_names: list | None = None  # labels are already codes into these (image folders, tables)
    feature_names: list | None = None  # a table's feature columns, in order
    keys: dict = field(default_factory=dict)  # which names held what, for messages and predict


def reader_for(path: str):
    """The reader function for `path`, chosen by its suffix (or, for a folder, its contents)."""
    lower = path.lower()
    if os.path.isdir(path):
        entries = os.listdir(path)
        if any(n.endswith(".npy") for n in entries) and not any(os.path.isdir(os.path.join(path, n))
                                                                 for n in entries):
            from mpidl.data.arrays import read_arrays
            return read_arrays
        from mpidl.data.images import read_image_folder
        return read_image_folder
    if lower.endswith((".npz", ".npy")):
        from mpidl.data.arrays import read_arrays
        return read_arrays
    if lower.endswith((".csv", ".tsv", ".txt")):
        from mpidl.data.table import read_table
        return read_table
    if lower.endswith((".h5", ".hdf5", ".hdf")):
        from mpidl.data.hdf5 import read_hdf5
        return read_hdf5
    raise DataError(f"{path}: unknown data format; give a .npz, .npy, .csv, .tsv, .h5 or .hdf5 file, "
                    "a folder of .npy files or an image folder (train/<class>/*.png)")


def looks_like_path(name: str) -> bool:
    return os.sep in name or os.path.exists(name) or name.lower().endswith(
        (".npz", ".npy", ".csv", ".tsv", ".h5", ".hdf5", ".hdf"))


def read_splits(path: str, options: FileOptions | None = None) -> Splits:
    options = options or FileOptions()
    if not os.path.exists(path):
        raise DataError(f"--dataset {path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise DataError(f"--dataset {path}: not readable")
    return reader_for(path)(path, options)


def load_file_dataset(path: str, options: FileOptions | None = None):
    """The Dataset in the file or folder `path` (any format above)."""
    options = options or FileOptions()
    return to_dataset(read_splits(path, options), options)


# -- the same for every format ---------------------------------------------------------

def row_chunks(n_rows: int, row_bytes: int, start: int = 0, stop: int | None = None):
    """Slices of at most CHUNK_BYTES covering rows start..stop."""
    stop = n_rows if stop is None else stop
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for a in range(start, stop, step):
        yield slice(a, min(a + step, stop))


def row_bytes(x) -> int:
    return int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize


def read_all(a) -> np.ndarray:
    """A small array (labels) into memory, whatever its reader."""
    return np.asarray(a[:]) if not isinstance(a, np.ndarray) else a


def encode_labels(source: str, y_train, y_val, class_names):
    """String labels become class codes (sorted names); returns (y_train, y_val, names)."""
    text_train = np.asarray(y_train[:1]).dtype.kind in "USO"
    if y_val is not None and len(y_val) and (np.asarray(y_val[:1]).dtype.kind in "USO") != text_train:
        raise DataError(f"{source}: the training targets are {'names' if text_train else 'numbers'} but the "
                        f"validation targets {'numbers' if text_train else 'names'}; give both the same kind")
    if class_names is not None or not text_train:
        return y_train, y_val, class_names
    y_train = read_all(y_train).astype(str)
    y_val = None if y_val is None else read_all(y_val).astype(str)
    names = np.unique(y_train if y_val is None else np.concatenate([y_train, y_val]))
    codes = {name: i for i, name in enumerate(names)}
    encode = np.vectorize(codes.__getitem__, otypes=[np.int64])
    return encode(y_train), None if y_val is None else encode(y_val), [str(n) for n in names]


def infer_file_task(source: str, y, task: str | None) -> tuple[str, np.ndarray]:
    """(task, labels): integer labels (or integer-valued floats asked to be classes) are
    classes; float targets values. Non-integer labels for classification are an error."""
    y = read_all(y)
    if task is None:
        task = "classification" if y.dtype.kind in "iub" else "regression"
    if task == "classification":
        if y.ndim != 1:
            raise DataError(f"{source}: class labels must be one per sample, found shape {y.shape}")
        if y.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
            if len(bad):
                raise DataError(f"{source}: label {float(y[bad[0]])!r} of sample {bad[0]} is not an integer; "
                                "classification needs integer labels (or --task regression)")
        y = y.astype(np.int64)
        if len(y) and y.min() < 0:
            raise DataError(f"{source}: label {int(y.min())} of sample {int(np.argmin(y))} is negative; "
                            "class labels are 0, 1, 2, ...")
    elif task == "regression":
        if y.dtype.kind not in "iubf":
            raise DataError(f"{source}: regression targets must be numbers, found {y.dtype}")
        bad = np.flatnonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))
        if len(bad):
            raise DataError(f"{source}: target of sample {bad[0]} is NaN or infinite")
        y = y.astype(np.float64, copy=False)
    else:
        raise DataError(f"--task {task}: choose classification or regression")
    return task, y


class Rows:
    """Rows `index` of `base` (a validation split cut from one file) without copying `base`."""

    def __init__(self, base, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim

    def __len__(self):
        return len(self.index)

    def __getitem__(self, key):
        rows = self.index[key]
        if np.ndim(rows) == 0:
            return self.base[int(rows)]
        return take_rows(self.base, rows)


def take_rows(a, rows: np.ndarray) -> np.ndarray:
    """a[rows] for a NumPy array or memory map, or for a reader (HDF5) that wants increasing
    indices: read those in order, then put them back in the order asked for."""
    if isinstance(a, np.ndarray):
        return a[rows]
    if len(rows) > 1 and np.any(np.diff(rows) <= 0):
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(a[unique])[inverse]
    return np.asarray(a[rows])


def split_off_validation(source: str, x, y, fraction: float, seed: int):
    """A seeded random `fraction` of the samples for validation, the rest for training
    (the same on every rank and in mpidl.predict for the same seed)."""
    if not 0 < fraction < 1:
        raise DataError(f"--val-fraction {fraction}: must be between 0 and 1")
    n = len(x)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise DataError(f"{source}: --val-fraction {fraction} of {n} samples leaves no "
                        f"{'validation' if n_val < 1 else 'training'} samples")
    val, train = validation_rows(n, fraction, seed)
    return Rows(x, train), y[train], Rows(x, val), y[val]


def validation_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, training rows), each in increasing order (sequential reads)."""
    order = np.random.default_rng([seed, 0x5A11]).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def to_dataset(s: Splits, options: FileOptions):
    """Splits -> Dataset: labels, task, validation split and the shape checks."""
    from mpidl.data.base import Dataset
    x_train, y_train, x_val, y_val = s.x_train, s.y_train, s.x_val, s.y_val
    for what, a in (("inputs", x_train), ("targets", y_train)):
        if np.dtype(a.dtype).kind == "O":
            raise DataError(f"{s.source}: {what} are Python objects; save numbers (pickles stay off)")
    if np.dtype(x_train.dtype).kind not in "iubf":
        raise DataError(f"{s.source}: inputs must be numbers, found dtype {x_train.dtype}")
    if x_train.ndim < 2:
        raise DataError(f"{s.source}: inputs have shape {tuple(x_train.shape)}; expected one row per "
                        "sample, (samples, features...)")
    if len(x_train) != len(y_train):
        raise DataError(f"{s.source}: {len(x_train)} training inputs but {len(y_train)} targets")
    if x_val is not None:
        if (y_val is None) or len(x_val) != len(y_val):
            raise DataError(f"{s.source}: {len(x_val)} {s.val_name} inputs but "
                            f"{0 if y_val is None else len(y_val)} targets")
        if tuple(x_val.shape[1:]) != tuple(x_train.shape[1:]):
            raise DataError(f"{s.source}: training samples have shape {tuple(x_train.shape[1:])} but "
                            f"{s.val_name} samples {tuple(x_val.shape[1:])}")
        if options.val_fraction:
            raise DataError(f"--val-fraction: {s.source} has its own {s.val_name} split")
    y_train, y_val, class_names = encode_labels(s.source, y_train, y_val, s.class_names)
    task = options.task or ("classification" if class_names else None)
    task, y_train = infer_file_task(s.source, y_train, task)
    val_name = s.val_name
    if x_val is None:
        if options.val_fraction:
            x_train, y_train, x_val, y_val = split_off_validation(s.source, x_train, y_train,
                                                                  options.val_fraction, options.seed)
        else:  # evaluated on the training set, and reported as such
            x_val, y_val, val_name = x_train, y_train, "train"
    else:
        _, y_val = infer_file_task(s.source + f" ({s.val_name})", y_val, task)
    if task == "classification":
        outputs = int(max(y_train.max(), y_val.max())) + 1
        if class_names is not None:
            outputs = max(outputs, len(class_names))
        if outputs < 2:
            raise DataError(f"{s.source}: every label is {int(y_train[0])}; classification needs two "
                            "classes or more")
    else:
        if y_train.ndim == 1:
            y_train, y_val = y_train[:, None], y_val[:, None]
        outputs = int(np.prod(y_train.shape[1:]))
    if y_val.shape[1:] != y_train.shape[1:]:
        raise DataError(f"{s.source}: training targets have shape {y_train.shape[1:]} but {s.val_name} "
                        f"targets {y_val.shape[1:]}")
    name = os.path.basename(os.path.normpath(s.source))
    ds = Dataset(name, task, x_train, y_train, x_val, y_val, num_classes=outputs, scale=s.scale,
                 val_name=val_name, class_names=class_names, feature_names=s.feature_names,
                 source=os.path.abspath(s.source))
    ds.file_options = options
    return ds
