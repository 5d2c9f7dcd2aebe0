"""Max and average pooling over NCHW arrays, and global average pooling.

Both loop over the kh*kw kernel offsets only (each step a vectorised operation on a
strided view of the whole batch), so they work for any stride, overlap or memory
layout of the input (including the channels-last views that conv2d returns).
Padding is not supported: the classic networks here do not pool with padding.
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.conv import pair, output_size


def _offset_view(x, p, q, stride, out_hw):
    (sh, sw), (Ho, Wo) = stride, out_hw
    return x[:, :, p:p + sh * (Ho - 1) + 1:sh, q:q + sw * (Wo - 1) + 1:sw]


def _geometry(x, kernel, stride):
    kh, kw = pair(kernel)
    sh, sw = pair(kernel if stride is None else stride)
    Ho, Wo = output_size(x.shape[2], kh, sh, 0, 1), output_size(x.shape[3], kw, sw, 0, 1)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"pool: window {kh}x{kw} larger than the {x.shape[2]}x{x.shape[3]} input")
    return (kh, kw), (sh, sw), (Ho, Wo)


def _tiles(x, kernel, stride):
    """For the common case of non-overlapping windows that tile the input exactly: x as a
    channels-last view (N, Ho, kh, Wo, kw, C) -- no copy when x is channels-last in memory,
    as conv2d's output is -- else None."""
    (kh, kw), (sh, sw), (Ho, Wo) = _geometry(x, kernel, stride)
    N, C, H, W = x.shape
    if (kh, kw) != (sh, sw) or Ho * kh != H or Wo * kw != W:
        return None
    return x.transpose(0, 2, 3, 1).reshape(N, Ho, kh, Wo, kw, C)


def maxpool2d_forward(x, kernel=2, stride=None, relu=False):
    """Maximum over each window; the first maximum in (row, column) order wins ties, as in PyTorch.
    The cache holds the winning offset of each window (one byte per output).

    ``relu=True`` gives relu(maxpool(x)) (= maxpool(relu(x))) in the same pass: windows whose
    maximum is not positive get no winner, so the backward pass needs no mask of its own."""
    (kh, kw), s, hw = _geometry(x, kernel, stride)
    tiles = _tiles(x, kernel, stride)
    if tiles is not None:
        # Work channels-last and hand back an NCHW view, keeping conv2d's memory layout.
        offset = lambda a, p, q: a[:, :, p, :, q, :]  # noqa: E731
        src = tiles
    else:
        offset = lambda a, p, q: _offset_view(a, p, q, s, hw)  # noqa: E731
        src = x
    y = offset(src, 0, 0).copy()
    if kh * kw > 255:
        raise ValueError(f"pool: window {kh}x{kw} too large")
    arg = np.zeros(y.shape, dtype=np.uint8)
    better = np.empty(y.shape, dtype=bool)
    flag = better.view(np.uint8)
    for k in range(1, kh * kw):
        v = offset(src, k // kw, k % kw)
        np.greater(v, y, out=better)      # strictly greater: an earlier offset keeps ties
        np.maximum(y, v, out=y)
        # Offsets grow with k, so max(arg, k*better) records the latest strict improvement
        # (masked copies are several times slower than these plain ufuncs).
        flag *= k
        np.maximum(arg, flag, out=arg)
    if relu:
        np.maximum(y, 0, out=y)
        np.equal(y, 0, out=better)  # no gradient where ReLU clips, as PyTorch's relu'(0) = 0
        flag *= kh * kw             # an offset no window has: the backward masks never match it
        np.maximum(arg, flag, out=arg)
    if tiles is not None:
        y = y.transpose(0, 3, 1, 2)
    return y, (arg, x.shape, (kh, kw), s, hw, tiles is not None)


def maxpool2d_backward(dy, cache):
    arg, x_shape, (kh, kw), s, hw, tiled = cache
    if tiled:
        N, C, H, W = x_shape
        (Ho, Wo) = hw
        dy_t = dy.transpose(0, 2, 3, 1)
        dx = np.empty((N, Ho, kh, Wo, kw, C), dtype=dy.dtype)  # every element written below
        for k in range(kh * kw):
            np.multiply(dy_t, arg == k, out=dx[:, :, k // kw, :, k % kw, :])
        return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2)
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


def global_avgpool_backward(dy, x_shape, channels_last=False):
    """channels_last: hand the gradient on as an NCHW view of NHWC memory, the layout of a
    convolution's output: the layers below then run over it in memory order (a ReLU's mask
    product on mismatched layouts took 4x as long)."""
    N, C, H, W = x_shape
    mean_grad = dy * (1.0 / (H * W))
    if channels_last:
        return np.broadcast_to(mean_grad[:, None, None, :], (N, H, W, C)).copy().transpose(0, 3, 1, 2)
    return np.broadcast_to(mean_grad[:, :, None, None], x_shape).copy()
