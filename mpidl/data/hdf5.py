"""HDF5 files (``.h5`` / ``.hdf5``): the same names as a .npz, or ``--x-key`` / ``--y-key``.

    x_train, y_train  and  x_val, y_val  (or x_test, y_test)   training and validation splits
    x, y                                                     one set; --val-fraction splits it
    --x-key images/train --y-key labels/train                any datasets, also inside groups

No rank copies a dataset into its own memory, whatever its size. A contiguous, unfiltered
dataset of a plain numeric type is a byte range of the file: it is memory-mapped
(``np.memmap`` at the dataset's offset), so ranks on one node share its pages. A chunked or
compressed dataset is wrapped in :class:`H5Rows`, which reads only the rows asked for
through h5py. Targets stored as strings are read into memory (a label per sample) and become
classes in :func:`mpidl.data.files.encode_labels`.

h5py is an optional extra: ``pip install 'mpidl[hdf5]'``.
"""

from __future__ import annotations

import numpy as np

from mpidl.data.files import FileOptions, Splits
from mpidl.errors import DataError

# Datasets named in a "not found" message, at most.
LISTED = 10


class H5Rows:
    """Rows of a chunked or compressed HDF5 dataset, read on demand.

    ``len()``, ``shape``, ``dtype``, ``ndim`` and ``[...]`` by int, slice, boolean mask or
    integer index array (any order; increasing is fastest). Holds the open h5py.File, so
    the file stays open as long as the rows are in use.
    """

    def __init__(self, file, dataset, key: str):
        self.file, self.dataset, self.key = file, dataset, key
        self.path = str(file.filename)
        self.shape = tuple(dataset.shape)
        self.dtype = np.dtype(dataset.dtype)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"H5Rows({self.path!r}, {self.key!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # rows first, then the rest on what was read
            if not key:
                return self[:]
            rows = self[key[0]]
            rest = key[1:]
            return rows[(slice(None), *rest)] if np.ndim(rows) == self.ndim else rows[rest]
        if key is Ellipsis:
            key = slice(None)
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step < 0:  # h5py reads forwards only
                return self[np.arange(start, stop, step)]
            if start >= stop:
                return np.empty((0, *self.shape[1:]), self.dtype)
            return self._read(slice(start, stop, step))
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for {n} rows")
            return self._read(i % n)
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} for {n} rows")
            rows = np.flatnonzero(rows)
        if rows.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, slices or a boolean mask, not {rows.dtype}")
        if rows.ndim != 1:
            flat = self[rows.reshape(-1)]
            return flat.reshape(*rows.shape, *self.shape[1:])
        rows = rows.astype(np.int64, copy=False)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            bad = rows[(rows < -n) | (rows >= n)][0]
            raise IndexError(f"index {bad} is out of bounds for {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        if len(rows) > 1 and np.any(np.diff(rows) <= 0):
            unique, inverse = np.unique(rows, return_inverse=True)
            return self._increasing(unique)[inverse.reshape(-1)]
        return self._increasing(rows)

    def _read(self, rows) -> np.ndarray:
        """self.dataset[rows]; a damaged chunk (found only when read) is a DataError."""
        try:
            return np.asarray(self.dataset[rows])
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError, ValueError, ... for bad chunks
            raise DataError(f"{self.path}: cannot read rows {rows} of '{self.key}' "
                            f"({type(exc).__name__}: {exc})") from exc

    def _increasing(self, rows: np.ndarray) -> np.ndarray:
        """Strictly increasing `rows`: a range read as one slice when they are dense, else
        one read per run of consecutive rows (h5py's own list selection is slow for long lists)."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if not len(rows):
            return out
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 2 * len(rows):
            out[...] = self._read(slice(lo, hi))[rows - lo]
            return out
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(rows)]])
        for a, b in zip(starts, stops):
            first = int(rows[a])
            out[a:b] = self._read(slice(first, first + int(b - a)))
        return out


def _import_h5py(path: str):
    try:
        import h5py
    except ImportError as exc:
        raise DataError(f"{path}: reading HDF5 needs h5py: pip install 'mpidl[hdf5]'") from exc
    return h5py


def dataset_names(h5py, f, limit: int = LISTED) -> list[str]:
    """Paths of the datasets in `f`, in file order, at most `limit` (then '...')."""
    names: list[str] = []

    class Enough(Exception):
        pass

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            if len(names) == limit:
                names.append("...")
                raise Enough
            names.append(name)

    try:
        f.visititems(visit)
    except Enough:
        pass
    except Exception:  # noqa: BLE001 - a damaged group: list what was found
        pass
    return names


def _missing(h5py, f, path: str, key: str, flag: str | None = None) -> DataError:
    names = dataset_names(h5py, f)
    found = ", ".join(names) if names else "none"
    if flag:
        return DataError(f"{path}: no dataset '{key}' (--{flag} {key}); the file has datasets: {found}")
    return DataError(f"{path}: no dataset '{key}'; the file has datasets: {found} (name them x_train, "
                     "y_train and x_val, y_val or x_test, y_test, or x, y; or choose them with "
                     "--x-key / --y-key)")


def _get(h5py, f, path: str, key: str, flag: str | None = None):
    try:
        obj = f.get(key)
    except Exception as exc:  # noqa: BLE001 - damaged links or headers
        raise DataError(f"{path}: cannot read '{key}' ({type(exc).__name__}: {exc})") from exc
    if obj is None:
        raise _missing(h5py, f, path, key, flag)
    if not isinstance(obj, h5py.Dataset):
        names = ", ".join(dataset_names(h5py, f)) or "none"
        raise DataError(f"{path}: '{key}' is a group, not a dataset; the file has datasets: {names}")
    return obj


def _is_string(h5py, dtype) -> bool:
    return dtype.kind in "SU" or h5py.check_string_dtype(dtype) is not None


def _numeric(dtype) -> bool:
    return dtype.kind in "iubf" and dtype.fields is None and dtype.subdtype is None


def _mappable(h5py, ds) -> bool:
    """A contiguous, unfiltered byte range of the file, in a plain numeric type."""
    try:
        plist = ds.id.get_create_plist()
        return (plist.get_layout() == h5py.h5d.CONTIGUOUS and plist.get_nfilters() == 0
                and plist.get_external_count() == 0 and not ds.is_virtual
                and ds.id.get_offset() is not None)
    except Exception:  # noqa: BLE001 - unusual storage: read through h5py instead
        return False


def _open_rows(h5py, f, path: str, ds, key: str, targets: bool):
    """A memory map, an H5Rows (needs the file open) or, for string targets, a str array."""
    dtype = ds.dtype
    what = "targets" if targets else "inputs"
    if ds.shape is None or len(ds.shape) == 0:
        raise DataError(f"{path}: '{key}' ({what}) is a single value, not one row per sample")
    if targets and _is_string(h5py, dtype):
        try:
            values = ds.asstr()[...] if h5py.check_string_dtype(dtype) is not None else ds[...]
            return np.asarray(values, dtype=str) if values.dtype.kind in "OU" \
                else np.char.decode(values, "utf-8")
        except Exception as exc:  # noqa: BLE001 - undecodable bytes, damaged data
            raise DataError(f"{path}: cannot read the labels in '{key}' "
                            f"({type(exc).__name__}: {exc})") from exc
    if not _numeric(dtype):
        kind = "compound (named fields)" if dtype.fields is not None else \
            "strings" if _is_string(h5py, dtype) else \
            "variable-length or object" if dtype.kind == "O" else str(dtype)
        raise DataError(f"{path}: '{key}' ({what}) holds {kind} values; {what} must be plain numbers "
                        "(integers or floats)")
    if _mappable(h5py, ds):
        shape = tuple(ds.shape)
        if 0 in shape:
            return np.empty(shape, dtype)
        try:
            return np.memmap(path, dtype=dtype, mode="r", offset=ds.id.get_offset(), shape=shape)
        except (OSError, ValueError) as exc:  # truncated file: the range runs past its end
            raise DataError(f"{path}: cannot map '{key}' ({exc}); is the file truncated?") from exc
    return H5Rows(f, ds, key)


def read_hdf5(path: str, options: FileOptions) -> Splits:
    h5py = _import_h5py(path)
    try:
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            if "lock" not in str(exc).lower():
                raise
            # A file system without flock (some Lustre / NFS mounts): read-only, so open unlocked.
            f = h5py.File(path, "r", locking=False)
    except Exception as exc:  # noqa: BLE001 - OSError for most, others for damaged headers
        raise DataError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from exc
    try:
        splits = _read(h5py, f, path, options)
    except DataError:
        f.close()
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways inside HDF5
        f.close()
        raise DataError(f"{path}: damaged HDF5 file ({type(exc).__name__}: {exc})") from exc
    arrays = (splits.x_train, splits.y_train, splits.x_val, splits.y_val)
    if not any(isinstance(a, H5Rows) for a in arrays):
        f.close()  # memory maps and arrays need no open file
    return splits


def _read(h5py, f, path: str, options: FileOptions) -> Splits:
    def has(key):
        try:
            return isinstance(f.get(key), h5py.Dataset)
        except Exception:  # noqa: BLE001
            return False

    val_name = "val"
    if options.x_key or options.y_key:
        x_key = options.x_key or ("x_train" if has("x_train") else "x")
        y_key = options.y_key or ("y_train" if has("y_train") else "y")
        keys = {"x_train": x_key, "y_train": y_key}
    elif has("x_train") or not has("x"):
        keys = {"x_train": "x_train", "y_train": "y_train"}
        for name in ("val", "test"):
            if has(f"x_{name}") or has(f"y_{name}"):
                keys.update(x_val=f"x_{name}", y_val=f"y_{name}")
                val_name = name
                break
    else:
        keys = {"x_train": "x", "y_train": "y"}
    flags = {"x_train": "x-key" if options.x_key else None, "y_train": "y-key" if options.y_key else None}
    datasets = {name: _get(h5py, f, path, key, flags.get(name)) for name, key in keys.items()}
    rows = {name: _open_rows(h5py, f, path, ds, keys[name], targets=name.startswith("y"))
            for name, ds in datasets.items()}
    if "y_val" in rows:
        kinds = ["strings" if np.dtype(rows[n].dtype).kind in "SU" else "numbers"
                 for n in ("y_train", "y_val")]
        if kinds[0] != kinds[1]:
            raise DataError(f"{path}: the training targets '{keys['y_train']}' are {kinds[0]} but the "
                            f"{val_name} targets '{keys['y_val']}' are {kinds[1]}; store both alike")
    return Splits(source=path, x_train=rows["x_train"], y_train=rows["y_train"],
                  x_val=rows.get("x_val"), y_val=rows.get("y_val"), val_name=val_name,
                  keys=dict(x=keys["x_train"], y=keys["y_train"], x_val=keys.get("x_val"),
                            y_val=keys.get("y_val")))
