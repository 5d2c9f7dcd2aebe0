"""Working arrays that a layer keeps from one step to the next instead of allocating afresh.

A large NumPy allocation is usually fresh memory from the operating system, and every 4 KiB
page of it costs a page fault on first touch. For the CNN that is thousands of faults per
step, several milliseconds in a virtual machine, for arrays whose size never changes. Only
arrays that do not outlive the step belong here: a layer's inputs and outputs never do.
"""

from __future__ import annotations

import numpy as np


class Scratch:
    """Named arrays, handed out again on the next call with the same name, shape and dtype."""

    def __init__(self, keep: bool = True):
        self.keep = keep
        self._arrays: dict[str, np.ndarray] = {}

    def empty(self, name, shape, dtype) -> np.ndarray:
        if not self.keep:
            return np.empty(shape, dtype=dtype)
        a = self._arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
            a = self._arrays[name] = np.empty(shape, dtype=dtype)
        return a

    def zeros_once(self, name, shape, dtype) -> np.ndarray:
        """Zeros when new; when reused it holds what the last caller left, for callers that
        rewrite the same part each time (a padded copy keeps its zero border)."""
        a = self._arrays.get(name) if self.keep else None
        if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
            a = np.zeros(shape, dtype=dtype)
            if self.keep:
                self._arrays[name] = a
        return a


# Kernels called without a Scratch allocate every array afresh.
FRESH = Scratch(keep=False)
