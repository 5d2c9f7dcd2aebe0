"""y = x @ W.T + b, with W of shape (out, in) as in most frameworks."""

from __future__ import annotations


def linear_forward(x, W, b=None):
    # One 2-D GEMM over all leading axes: matmul on a 3-D x runs one small GEMM per sample.
    y = (x.reshape(-1, x.shape[-1]) @ W.T).reshape(*x.shape[:-1], W.shape[0])
    if b is not None:
        y += b
    return y, (x, W)


def linear_backward(dy, cache, need_dx=True):
    """Returns (dx, dW, db). Leading dimensions of x are treated as batch."""
    x, W = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dW = dy2.T @ x2
    db = dy2.sum(axis=0)
    dx = (dy2 @ W).reshape(x.shape) if need_dx else None
    return dx, dW, db
