"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from mpidl.errors import DataError

_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
    return raw


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{name}: not an IDX file (magic bytes {raw[:4].hex()})")
    dtype = _TYPES[raw[2]]
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(f"{name}: IDX data {kind}: header shape {shape} needs {expected} bytes, found {actual}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str) -> np.ndarray:
    return parse_idx(_read_bytes(path), name=path)


def find_idx(directory: str, stem: str) -> str | None:
    """The file for `stem` (e.g. 'train-images-idx3-ubyte') in `directory`, raw or .gz,
    also under the dotted names some mirrors use."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
