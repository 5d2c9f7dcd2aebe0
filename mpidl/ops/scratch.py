"""Working arrays that a layer keeps from one step to the next instead of allocating afresh.

A large NumPy allocation is usually fresh memory from the operating system, and every 4 KiB
page of it costs a page fault on first touch. For the CNN that is thousands of faults per
step, several milliseconds in a virtual machine, for arrays whose size never changes. Only
arrays that do not outlive the step belong here: a layer's inputs and outputs never do.

Two kinds:
* a layer's own (``empty``, ``zeros_once``): what its forward leaves for its backward (im2col
  patches, Winograd's transformed input); one set per layer.
* temporaries (``temp``, ``temp_zeros_once``): used within one call and dead when it returns
  (a chunk's GEMM operands, a padded copy for the transforms). These come from one pool per
  thread, shared by every layer, keyed by name, shape and dtype: the layers of a network take
  turns with the same arrays, so they cost one copy per distinct shape instead of one per
  layer (resnet20 at batch 64: 104 MB of working arrays kept per layer before). Each name
  keeps its SHAPES_PER_NAME most recently used shapes, so batches of ever new sizes cannot
  make the pool grow without bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

# A network's layers ask for a temporary in a few shapes (one per stage, for the training batch
# and the last, shorter batch of an epoch or an evaluation): resnet20 needs at most 6.
SHAPES_PER_NAME = 8
_POOLS = threading.local()


def _shared_pool() -> dict:
    pool = getattr(_POOLS, "arrays", None)
    if pool is None:
        pool = _POOLS.arrays = {}
    return pool


def _pooled(name, shape, dtype, make) -> np.ndarray:
    """The thread's temporary of this name, shape and dtype; the least recently used shape of
    the name is dropped past SHAPES_PER_NAME."""
    shapes = _shared_pool().setdefault(name, OrderedDict())
    key = (tuple(shape), np.dtype(dtype))
    a = shapes.get(key)
    if a is None:
        a = shapes[key] = make(shape, dtype=dtype)
        if len(shapes) > SHAPES_PER_NAME:
            shapes.popitem(last=False)
    else:
        shapes.move_to_end(key)
    return a


def _get(store: dict, key, shape, dtype, make):
    a = store.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        a = store[key] = make(shape, dtype=dtype)
    return a


class Scratch:
    """Named arrays, handed out again on the next call with the same name, shape and dtype."""

    def __init__(self, keep: bool = True):
        self.keep = keep
        self._arrays: dict[str, np.ndarray] = {}

    def empty(self, name, shape, dtype) -> np.ndarray:
        """An array of this layer's own, which may outlive the call (a cache for backward)."""
        if not self.keep:
            return np.empty(shape, dtype=dtype)
        return _get(self._arrays, name, shape, dtype, np.empty)

    def zeros_once(self, name, shape, dtype) -> np.ndarray:
        """Zeros when new; when reused it holds what the last caller left, for callers that
        rewrite the same part each time (a padded copy keeps its zero border)."""
        if not self.keep:
            return np.zeros(shape, dtype=dtype)
        return _get(self._arrays, name, shape, dtype, np.zeros)

    def temp(self, name, shape, dtype) -> np.ndarray:
        """A temporary, dead when the call returns: from the thread's pool shared by all layers."""
        if not self.keep:
            return np.empty(shape, dtype=dtype)
        return _pooled(name, shape, dtype, np.empty)

    def temp_zeros_once(self, name, shape, dtype) -> np.ndarray:
        """zeros_once for a temporary. Every layer sharing it must rewrite the same part for a
        given name and shape: put the geometry that decides the part in the name."""
        if not self.keep:
            return np.zeros(shape, dtype=dtype)
        return _pooled(name, shape, dtype, np.zeros)


# Kernels called without a Scratch allocate every array afresh.
FRESH = Scratch(keep=False)
