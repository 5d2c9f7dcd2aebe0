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


def reduce_axes(x) -> tuple:
    """Axes that batch statistics run over: all but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def channel_shape(x) -> tuple:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batchnorm_sums(x) -> np.ndarray:
    """[sum per channel, count] in one float64 buffer, ready for a single Allreduce."""
    C = x.shape[1]
    buf = np.empty(C + 1, dtype=np.float64)
    buf[:C] = x.sum(axis=reduce_axes(x), dtype=np.float64)
    buf[C] = x.size // C
    return buf


def mean_from_sums(buf: np.ndarray):
    """(mean, count) per channel from batchnorm_sums (possibly reduced)."""
    count = buf[-1]
    return buf[:-1] / count, count


def centred_square_sums(x, mean) -> np.ndarray:
    """Sum of (x - mean)^2 per channel, in float64 (the variance's numerator)."""
    centred = x.astype(np.float64) - mean.reshape(channel_shape(x))
    return np.square(centred, out=centred).sum(axis=reduce_axes(x))


def batch_stats(x):
    """(mean, biased variance, count) per channel of this batch alone."""
    mean, count = mean_from_sums(batchnorm_sums(x))
    return mean, centred_square_sums(x, mean) / count, count


def batchnorm_forward(x, gamma, beta, mean, var, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel (axis 1)."""
    shape = channel_shape(x)
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - mean.astype(x.dtype).reshape(shape)) * inv_std.reshape(shape)
    y = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return y, (xhat, gamma, inv_std)


def batchnorm_eval(x, gamma, beta, running_mean, running_var, eps):
    shape = channel_shape(x)
    scale = gamma / np.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    return x * scale.astype(x.dtype).reshape(shape) + shift.astype(x.dtype).reshape(shape)


def batchnorm_grad_sums(dy, cache) -> np.ndarray:
    """[sum dy, sum dy*xhat] per channel, one buffer (a synchronised layer reduces it)."""
    xhat = cache[0]
    axes = reduce_axes(dy)
    C = dy.shape[1]
    buf = np.empty(2 * C, dtype=np.float64)
    buf[:C] = dy.sum(axis=axes, dtype=np.float64)
    buf[C:] = (dy * xhat).sum(axis=axes, dtype=np.float64)
    return buf


def batchnorm_backward(dy, cache, local_sums, global_sums, count):
    """Returns (dx, dgamma, dbeta).

    dgamma/dbeta come from this process's samples (local_sums); dx uses the sums over the
    whole batch the statistics came from (global_sums, equal to local_sums when nothing
    is synchronised) and its size `count`.
    """
    xhat, gamma, inv_std = cache
    C = dy.shape[1]
    shape = channel_shape(dy)
    dbeta = local_sums[:C].astype(dy.dtype)
    dgamma = local_sums[C:].astype(dy.dtype)
    sum_dy = (global_sums[:C] / count).astype(dy.dtype).reshape(shape)
    sum_dy_xhat = (global_sums[C:] / count).astype(dy.dtype).reshape(shape)
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat))
    dx = dy - sum_dy
    dx -= xhat * sum_dy_xhat
    dx *= (gamma * inv_std).reshape(shape)
    return dx, dgamma, dbeta
