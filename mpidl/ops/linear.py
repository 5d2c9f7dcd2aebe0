"""y = x @ W.T + b, with W of shape (out, in) as in most frameworks."""

from __future__ import annotations

import numpy as np


def linear_forward(x, W, b=None):
    # One 2-D GEMM over all leading axes: matmul on a 3-D x runs one small GEMM per sample.
    x2 = x.reshape(-1, x.shape[-1])
    if len(x2) < W.shape[0]:
        # Fewer rows than outputs (a wide layer, e.g. the CNN's fc 4096->512 at batch 100):
        # OpenBLAS runs W @ x.T 10-20% faster than x @ W.T; y is then a transposed view.
        y2 = (W @ x2.T).T
    else:
        y2 = x2 @ W.T
    y = y2.reshape(*x.shape[:-1], W.shape[0])
    if b is not None:
        y += b
    return y, (x, W)


def linear_backward(dy, cache, need_dx=True, dW_out=None):
    """Returns (dx, dW, db). Leading dimensions of x are treated as batch. With ``dW_out``
    the weight gradient is written there (and returned)."""
    x, W = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dW = np.matmul(dy2.T, x2, out=dW_out)
    db = dy2.sum(axis=0)
    if not need_dx:
        return None, dW, db
    if x2.flags.f_contiguous and not x2.flags.c_contiguous:
        # x came from the transposed GEMM of linear_forward (through ReLU and the like): give dx
        # the same layout, or the element-wise backward before this layer multiplies arrays of
        # opposite orders (3x slower). The same GEMM, as fast either way.
        dx2 = (W.T @ dy2.T).T
    else:
        dx2 = dy2 @ W
    return dx2.reshape(x.shape), dW, db
