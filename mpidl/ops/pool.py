"""Max and average pooling over NCHW arrays, and global average pooling.

Both loop over the kh*kw kernel offsets only (each step a vectorised operation on a
strided view of the whole batch), so they work for any stride, overlap or memory
layout of the input (including the channels-last views that conv2d returns).
Padding is not supported: the classic networks here do not pool with padding.
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.conv import _pair, output_size


def _offset_view(x, p, q, stride, out_hw):
    (sh, sw), (Ho, Wo) = stride, out_hw
    return x[:, :, p:p + sh * (Ho - 1) + 1:sh, q:q + sw * (Wo - 1) + 1:sw]


def _geometry(x, kernel, stride):
    kh, kw = _pair(kernel)
    sh, sw = _pair(kernel if stride is None else stride)
    Ho, Wo = output_size(x.shape[2], kh, sh, 0, 1), output_size(x.shape[3], kw, sw, 0, 1)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"pool: window {kh}x{kw} larger than the {x.shape[2]}x{x.shape[3]} input")
    return (kh, kw), (sh, sw), (Ho, Wo)


def maxpool2d_forward(x, kernel=2, stride=None):
    """Maximum over each window; the first maximum in (row, column) order wins ties, as in PyTorch."""
    (kh, kw), s, hw = _geometry(x, kernel, stride)
    y = _offset_view(x, 0, 0, s, hw).copy()
    arg = np.zeros(y.shape, dtype=np.uint8 if kh * kw < 256 else np.int32)
    for k in range(1, kh * kw):
        v = _offset_view(x, k // kw, k % kw, s, hw)
        better = v > y
        np.copyto(y, v, where=better)
        arg[better] = k
    return y, (arg, x.shape, x.dtype, (kh, kw), s, hw)


def maxpool2d_backward(dy, cache):
    arg, x_shape, dtype, (kh, kw), s, hw = cache
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for k in range(kh * kw):
        # Overlapping windows (stride < kernel) add up, hence += rather than assignment.
        _offset_view(dx, k // kw, k % kw, s, hw)[...] += np.where(arg == k, dy, 0)
    return dx


def avgpool2d_forward(x, kernel=2, stride=None):
    (kh, kw), s, hw = _geometry(x, kernel, stride)
    y = _offset_view(x, 0, 0, s, hw).copy()
    for k in range(1, kh * kw):
        y += _offset_view(x, k // kw, k % kw, s, hw)
    y *= 1.0 / (kh * kw)
    return y, (x.shape, (kh, kw), s, hw)


def avgpool2d_backward(dy, cache):
    x_shape, (kh, kw), s, hw = cache
    share = dy * (1.0 / (kh * kw))
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for k in range(kh * kw):
        _offset_view(dx, k // kw, k % kw, s, hw)[...] += share
    return dx


def global_avgpool_forward(x):
    """(N, C, H, W) -> (N, C): the mean of each channel map."""
    return x.mean(axis=(2, 3)), x.shape


def global_avgpool_backward(dy, x_shape):
    N, C, H, W = x_shape
    return np.broadcast_to((dy * (1.0 / (H * W)))[:, :, None, None], x_shape).copy()
