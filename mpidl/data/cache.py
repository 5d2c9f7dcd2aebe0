"""Datasets converted once to uncompressed .npy files and then read through memory maps.

Decompressing and parsing (IDX .gz, CIFAR pickles) is done once, by one rank per node,
which writes the arrays into a temporary folder and renames it into place (atomic: a
reader never sees half a cache, and two nodes racing on a shared file system both end
with one whole copy). Every rank then opens the files with ``np.load(mmap_mode='r')``:
the operating system pages in only the rows a rank indexes, and ranks on one node share
those pages.

Loaders opt in by wrapping their file reading in :func:`cached_arrays`. Caching is active
only inside ``with npy_cache(folder, comm):`` (the trainer sets it up); elsewhere the
build function simply runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from typing import Callable

import numpy as np

from mpidl.errors import DataError

_ACTIVE: tuple[str, object] | None = None  # (folder, communicator) while npy_cache is entered


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mpidl")


@contextlib.contextmanager
def npy_cache(folder: str | None, comm):
    """Within this block, cached_arrays() uses `folder` (None: caching off). Collective:
    every rank must load the same datasets inside it."""
    global _ACTIVE
    previous = _ACTIVE
    _ACTIVE = None if folder is None else (folder, comm)
    try:
        yield
    finally:
        _ACTIVE = previous


def caching_active() -> bool:
    return _ACTIVE is not None


def source_key(label: str, paths: list[str]) -> str:
    """Names the cache entry: the label plus each source file's real path, size and
    modification time, so a replaced or edited source gets a fresh entry."""
    h = hashlib.sha256(label.encode())
    for path in paths:
        st = os.stat(path)
        h.update(repr((os.path.realpath(path), st.st_size, st.st_mtime_ns)).encode())
    return f"{label}-{h.hexdigest()[:16]}"


def _write_entry(folder: str, entry: str, arrays: dict[str, np.ndarray]) -> None:
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{entry}-", dir=folder)
    try:
        for name, array in arrays.items():
            np.save(os.path.join(tmp, name + ".npy"), np.ascontiguousarray(array), allow_pickle=False)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, os.path.join(folder, entry))
        except OSError:
            if not os.path.isdir(os.path.join(folder, entry)):  # not a lost race: a real failure
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _open_entry(path: str, names) -> dict[str, np.ndarray] | None:
    try:
        return {n: np.load(os.path.join(path, n + ".npy"), mmap_mode="r", allow_pickle=False) for n in names}
    except (OSError, ValueError):
        return None


def cached_arrays(label: str, sources: list[str], names: tuple[str, ...],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays that `build()` makes from the files `sources`, memory-mapped from the cache
    when one is active. Collective under npy_cache: one rank per node builds and writes,
    the others wait, then all map the files."""
    if _ACTIVE is None:
        return build()
    folder, comm = _ACTIVE
    path = os.path.join(folder, source_key(label, sources))
    leader = comm.local_rank == 0
    built, error, write_failed = None, None, False
    if leader and _open_entry(path, names) is None:
        try:
            built = build()
            _write_entry(folder, os.path.basename(path), built)
        except DataError as exc:
            error = exc
        except OSError as exc:  # read-only or full disk: train anyway, from memory
            write_failed = True
            print(f"mpidl: cannot write the dataset cache in {folder} ({exc.strerror or exc}); "
                  f"reading {label} from its source files", file=sys.stderr, flush=True)
    # Doubles as the barrier: the others must not look for the files before they exist.
    first = comm.first_failure(error is not None)
    if first is not None:
        if error is not None:
            raise error
        raise DataError(f"{label}: rank {first} could not read the source files")
    if comm.any_true(write_failed):
        return built if built is not None else build()
    mapped = _open_entry(path, names)
    if mapped is None:
        raise DataError(f"{label}: dataset cache {path} is missing or unreadable on this node; "
                        "give a --cache-dir that every rank can read, or --cache-dir none")
    return mapped
