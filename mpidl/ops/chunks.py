"""Going through memory a cache-sized chunk at a time, for the element-wise kernels.

Batch norm and ReLU do a few flops per element, so their cost is memory traffic. A kernel of
several NumPy operations runs them one chunk at a time: the chunk and its temporaries stay in
a core's L2 cache between the operations, and each array is read from memory once and
written once. (Measured on the Xeon of benchmarks/results, float32, one
thread: a multiply took 0.09 ns per element within L2 against 0.27 from memory.)
"""

from __future__ import annotations

import numpy as np

CHUNK_ELEMENTS = 1 << 16   # 256 KB of float32: a chunk, a second input and a temporary fit in L2


def channels_last(a) -> bool:
    """An NCHW view of NHWC memory (what the convolutions return)."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def flat_in_memory_order(a):
    """a's elements as a 1-D view in memory order (C order, or NHWC for channels-last), or
    None where a is neither (a slice with gaps, say)."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if channels_last(a):
        return a.transpose(0, 2, 3, 1).reshape(-1)
    return None


def spans(total: int, unit: int = 1) -> list:
    """Slices over `total` items, `unit` elements each, about CHUNK_ELEMENTS elements a slice."""
    step = max(1, CHUNK_ELEMENTS // max(1, unit))
    return [slice(i, i + step) for i in range(0, total, step)]


class SampleRows:
    """x (N, C, ...) as N rows of memory, with per-channel vectors laid out along a row.

    NCHW rows are (C, HW): a channel's value repeats HW times. Channels-last rows are (HW, C):
    the C values are tiled, so an operation runs over whole rows rather than NumPy's inner
    loop over C elements alone (3-4x slower at C = 16). (N, C) rows are the C values.
    """

    def __init__(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        self.C = x.shape[1]
        self.channels_last = channels_last(x)
        self.rows = self.of(x)
        self.P = self.rows.shape[1] // self.C   # positions per channel in a row

    def of(self, a) -> np.ndarray:
        """a (x's shape) as rows in this layout: a view where a has it, else a copy."""
        if self.channels_last:
            return a.transpose(0, 2, 3, 1).reshape(a.shape[0], -1)
        return np.ascontiguousarray(a).reshape(a.shape[0], -1)

    def like(self, rows) -> np.ndarray:
        """Rows in this layout as an array of x's shape."""
        if self.channels_last:
            N, C, H, W = self.shape
            return rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)
        return rows.reshape(self.shape)

    def along_row(self, v) -> np.ndarray:
        v = np.asarray(v).astype(self.dtype, copy=False)
        if len(self.shape) == 2:
            return v
        return np.tile(v, self.P) if self.channels_last else np.repeat(v, self.P)

    def chunks(self) -> list:
        return spans(self.rows.shape[0], self.rows.shape[1])

    def sums(self, block) -> np.ndarray:
        """Sum per channel of a chunk of rows, in float64. Each sample is summed in the dtype by
        a BLAS matrix-vector product (several times faster than NumPy's strided sum over axes
        0, 2, 3; relative error ~1e-7 per float32 plane), the samples in float64."""
        if len(self.shape) == 2:
            return block.sum(axis=0, dtype=np.float64)
        n = block.shape[0]
        if self.channels_last:
            per_sample = np.ones(self.P, dtype=self.dtype) @ block.reshape(n, self.P, self.C)
        else:
            per_sample = block.reshape(n, self.C, self.P) @ np.ones(self.P, dtype=self.dtype)
        return per_sample.sum(axis=0, dtype=np.float64)
