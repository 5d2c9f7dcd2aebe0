"""Files that hold weights: written atomically, read with pickling disabled."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from mpidl.params import ParamStore


def atomic_write(path: str, write) -> None:
    """Write through `write(fileobj)` to a temporary file in the same folder, fsync, rename.
    A crash at any moment leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the user's usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_weights(path: str, store: ParamStore, **extra) -> None:
    """The flat parameter vector under 'params', the layout beside it, and each
    parameter as a named array: readable with numpy.load alone."""
    layout = store.layout()
    arrays = {
        "params": store.data,
        "names": np.array(layout["names"]),
        "offsets": np.array(layout["offsets"], dtype=np.int64),
        "shapes": np.array(_pad_shapes(layout["shapes"]), dtype=np.int64),
        "ndims": np.array([len(s) for s in layout["shapes"]], dtype=np.int64),
    }
    for p in store.params:
        arrays["param/" + p.name] = p.data
    for k, v in extra.items():
        arrays[k] = np.asarray(v)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _pad_shapes(shapes):
    width = max((len(s) for s in shapes), default=0)
    return [list(s) + [0] * (width - len(s)) for s in shapes]


def load_weights(path: str) -> dict[str, np.ndarray]:
    """Named arrays from a weights file written by save_weights (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        flat = z["params"]
        out = {}
        for name, off, shape, nd in zip(z["names"], z["offsets"], z["shapes"], z["ndims"]):
            shape = tuple(int(s) for s in shape[:nd])
            size = int(np.prod(shape, dtype=np.int64))
            out[str(name)] = flat[off:off + size].reshape(shape)
        return out
