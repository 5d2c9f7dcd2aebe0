"""NumPy array files: a .npz, or a folder of .npy files, read through memory maps.

Each array of an uncompressed .npz (``numpy.savez``) is a plain .npy stored inside the zip
archive, so it is mapped in place at its offset: no rank copies it into private memory, and
a rank's page faults bring in only the rows it indexes. A compressed .npz
(``numpy.savez_compressed``) cannot be mapped; it is decompressed once into the dataset cache
(and said so), and mapped from there.

Names: ``x_train``, ``y_train`` with ``x_val``/``y_val`` or ``x_test``/``y_test``; or ``x``, ``y``
(a validation split from --val-fraction); or --x-key / --y-key.
"""

from __future__ import annotations

import os
import struct
import sys
import zipfile

import numpy as np

from mpidl.data.cache import cached_arrays, caching_active
from mpidl.data.files import FileOptions, Splits
from mpidl.errors import DataError

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length


def pick_keys(source: str, names, options: FileOptions) -> tuple[str, str | None, str | None, str | None, str]:
    """(x, y, x_val, y_val, val_name) among the arrays `names` of a file."""
    names = list(names)
    have = set(names)
    listing = ", ".join(sorted(names)[:12]) or "none"
    if options.x_key or options.y_key:
        x, y = options.x_key or "x", options.y_key or "y"
        for key in (x, y):
            if key not in have:
                raise DataError(f"{source}: no array named {key!r} (it has: {listing})")
        return x, y, None, None, "val"
    if "x_train" in have:
        if "y_train" not in have:
            raise DataError(f"{source}: has x_train but no y_train (it has: {listing})")
        for xv, yv, val_name in (("x_val", "y_val", "val"), ("x_test", "y_test", "test")):
            if xv in have:
                if yv not in have:
                    raise DataError(f"{source}: has {xv} but no {yv}")
                return "x_train", "y_train", xv, yv, val_name
        return "x_train", "y_train", None, None, "val"
    if "x" in have and "y" in have:
        return "x", "y", None, None, "val"
    raise DataError(f"{source}: expected arrays x_train and y_train (with x_val/y_val or x_test/y_test), "
                    f"or x and y, or give --x-key/--y-key; it has: {listing}")


def _map_member(path: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A memory map of one stored (uncompressed) .npy inside the archive."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise DataError(f"{path}: damaged zip archive (member {info.filename})")
        f.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
        dtype, shape, fortran, offset = _npy_header(f, f"{path} ({info.filename})")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
        raise DataError(f"{path}: array {info.filename} is truncated")
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _npy_header(f, where: str):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read(f)
    except ValueError as exc:
        raise DataError(f"{where}: not a valid .npy array ({exc})")
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (dtype object); save numbers or strings "
                        "(pickles stay off)")
    return dtype, shape, fortran, f.tell()


def _open_npz(path: str) -> dict:
    """name -> array (memory-mapped where stored, else decompressed once into the cache)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a valid .npz archive ({exc})")
    with zf:
        infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        if all(i.compress_type == zipfile.ZIP_STORED for i in infos.values()):
            return {name: _map_member(path, zf, info) for name, info in infos.items()}
    # Compressed: decompress once (one rank per node), map the cached .npy afterwards.
    names = tuple(infos)
    cached = caching_active()

    def build():  # one rank per node, when the cache has no copy yet
        print(f"mpidl: {path} is compressed (savez_compressed) and cannot be memory-mapped; " +
              ("decompressing it once into the dataset cache" if cached else "reading it into memory") +
              " (numpy.savez files are read in place)", file=sys.stderr, flush=True)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in names}
        except ValueError as exc:
            raise DataError(f"{path}: {exc} (pickles stay off: save numbers or strings)")
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: cannot read the archive ({exc})")
    return cached_arrays("npz-" + os.path.basename(path), [path], names, build)


def _open_npy_folder(path: str) -> dict:
    out = {}
    for entry in sorted(os.listdir(path)):
        if not entry.endswith(".npy"):
            continue
        file = os.path.join(path, entry)
        with open(file, "rb") as f:
            dtype, shape, fortran, offset = _npy_header(f, file)
        if os.path.getsize(file) < offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise DataError(f"{file}: truncated (shorter than its header says)")
        out[entry[:-4]] = np.load(file, mmap_mode="r", allow_pickle=False) if int(np.prod(shape)) else \
            np.zeros(shape, dtype)
    return out


def open_arrays(path: str) -> dict:
    """Every array of a .npz, a folder of .npy files or one .npy (as 'x'), memory-mapped."""
    if os.path.isdir(path):
        return _open_npy_folder(path)
    if path.lower().endswith(".npy"):
        with open(path, "rb") as f:
            _npy_header(f, path)
        return {"x": np.load(path, mmap_mode="r", allow_pickle=False)}
    return _open_npz(path)


def read_arrays(path: str, options: FileOptions) -> Splits:
    arrays = open_arrays(path)
    if path.lower().endswith(".npy") and not os.path.isdir(path):
        raise DataError(f"{path}: one .npy holds no targets; give a .npz or a folder with x and y "
                        "(or x_train, y_train, ...) as .npy files")
    x, y, xv, yv, val_name = pick_keys(path, arrays, options)
    return Splits(path, arrays[x], arrays[y], arrays.get(xv), arrays.get(yv), val_name=val_name,
                  keys=dict(x=x, y=y, x_val=xv, y_val=yv))
