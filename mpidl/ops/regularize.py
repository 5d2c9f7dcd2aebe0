"""Dropout and batch normalisation kernels.

Batch normalisation is split so that a synchronised layer can reduce the batch sums
across ranks between the steps: ``batchnorm_sums`` (sums and count) -> reduce -> mean ->
``centred_square_sums`` -> reduce -> variance -> ``batchnorm_forward``; in backward,
``batchnorm_grad_sums`` -> reduce -> ``batchnorm_backward``. The variance is the mean of
squares about the mean (two passes), not E[x^2] - mean^2, whose rounding error grows with
(mean/std)^2.
"""

from __future__ import annotations

import numpy as np


def dropout_forward(x, p, rng: np.random.Generator):
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p),
    so evaluation needs no rescaling."""
    if p <= 0:
        return x, None
    keep = rng.random(x.shape, dtype=x.dtype) >= p
    mask = keep.astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy if mask is None else dy * mask


def channel_shape(x) -> tuple:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _channels_last(a) -> bool:
    """An NCHW view of NHWC memory (what the convolutions return)."""
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def channel_op(ufunc, x, v, out=None):
    """ufunc(x, v[c]) for each channel c (axis 1) of x, v of shape (C,).

    On channels-last memory NumPy's plain broadcast would run its inner loop over the C
    channels alone (16 elements: 3-4x slower than a flat pass); a sample's worth of v,
    tiled, lets it run over whole samples instead.
    """
    v = np.asarray(v).astype(x.dtype, copy=False)
    if x.ndim == 4 and _channels_last(x) and (out is None or _channels_last(out)):
        N, C, H, W = x.shape
        flat = (N, H * W * C)
        r = ufunc(x.transpose(0, 2, 3, 1).reshape(flat), np.tile(v, H * W),
                  out=None if out is None else out.transpose(0, 2, 3, 1).reshape(flat))
        return r.reshape(N, H, W, C).transpose(0, 3, 1, 2)
    return ufunc(x, v.reshape(channel_shape(x)), out=out)


def channel_sums(a, b=None) -> np.ndarray:
    """Sum over all axes but 1 of a (or of a * b), in float64.

    Each sample is summed in a's dtype by BLAS matrix-vector products, then the N partial sums
    in float64: several times faster than NumPy's sum over axes (0, 2, 3), which strides
    through memory. Either layout is read in place: NCHW as (N, C, HW), channels-last as
    (N, HW, C). A float32 plane is summed in float32 (relative error ~1e-7 per plane; the
    variance is summed over centred values, so a large mean loses nothing).
    """
    if a.ndim == 2:
        return np.sum(a if b is None else a * b, axis=0, dtype=np.float64)
    N, C = a.shape[:2]
    if a.ndim == 4 and _channels_last(a) and (b is None or _channels_last(b)):
        a3 = a.transpose(0, 2, 3, 1).reshape(N, -1, C)
        terms = a3 if b is None else a3 * b.transpose(0, 2, 3, 1).reshape(a3.shape)
        per_sample = np.ones(a3.shape[1], dtype=a.dtype) @ terms
    else:
        a3 = a.reshape(N, C, -1)
        if b is None:
            per_sample = a3 @ np.ones(a3.shape[2], dtype=a.dtype)
        else:
            per_sample = np.einsum("nci,nci->nc", a3, b.reshape(a3.shape))
    return per_sample.sum(axis=0, dtype=np.float64)


def batchnorm_sums(x) -> np.ndarray:
    """[sum per channel, count] in one float64 buffer, ready for a single Allreduce."""
    C = x.shape[1]
    buf = np.empty(C + 1, dtype=np.float64)
    buf[:C] = channel_sums(x)
    buf[C] = x.size // C
    return buf


def mean_from_sums(buf: np.ndarray):
    """(mean, count) per channel from batchnorm_sums (possibly reduced)."""
    count = buf[-1]
    return buf[:-1] / count, count


def centre(x, mean) -> np.ndarray:
    """x - mean per channel, a new array in x's dtype (batchnorm_forward may scale it in place)."""
    return channel_op(np.subtract, x, mean)


def centred_square_sums(x, mean, centred=None) -> np.ndarray:
    """Sum of (x - mean)^2 per channel in float64 (the variance's numerator); pass the
    centred array when it is already there."""
    if centred is None:
        centred = centre(x, mean)
    return channel_sums(centred, centred)


def batch_stats(x):
    """(mean, biased variance, count) per channel of this batch alone."""
    mean, count = mean_from_sums(batchnorm_sums(x))
    return mean, centred_square_sums(x, mean) / count, count


def batchnorm_forward(x, gamma, beta, mean, var, eps, centred=None):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel (axis 1).

    centred: x - mean from centre(), if the caller has it; it becomes the cached xhat."""
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = centre(x, mean) if centred is None else centred
    channel_op(np.multiply, xhat, inv_std, out=xhat)
    y = channel_op(np.multiply, xhat, gamma)
    channel_op(np.add, y, beta, out=y)
    return y, (xhat, gamma, inv_std)


def batchnorm_eval(x, gamma, beta, running_mean, running_var, eps):
    scale = gamma / np.sqrt(running_var + eps)
    y = channel_op(np.multiply, x, scale)
    return channel_op(np.add, y, beta - running_mean * scale, out=y)


def batchnorm_grad_sums(dy, cache) -> np.ndarray:
    """[sum dy, sum dy*xhat] per channel, one buffer (a synchronised layer reduces it)."""
    xhat = cache[0]
    C = dy.shape[1]
    buf = np.empty(2 * C, dtype=np.float64)
    buf[:C] = channel_sums(dy)
    buf[C:] = channel_sums(dy, xhat)
    return buf


def batchnorm_backward(dy, cache, local_sums, global_sums, count):
    """Returns (dx, dgamma, dbeta).

    dgamma/dbeta come from this process's samples (local_sums); dx uses the sums over the
    whole batch the statistics came from (global_sums, equal to local_sums when nothing
    is synchronised) and its size `count`.
    """
    xhat, gamma, inv_std = cache
    C = dy.shape[1]
    dbeta = local_sums[:C].astype(dy.dtype)
    dgamma = local_sums[C:].astype(dy.dtype)
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
    dx = channel_op(np.multiply, xhat, -global_sums[C:] / count)
    dx += dy
    channel_op(np.subtract, dx, global_sums[:C] / count, out=dx)
    channel_op(np.multiply, dx, gamma * inv_std, out=dx)
    return dx, dgamma, dbeta
