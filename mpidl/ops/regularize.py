"""Dropout and batch normalisation kernels.

Batch normalisation is split so that a synchronised layer can reduce the batch sums
across ranks between the steps: ``batchnorm_sums`` (sums and count) -> reduce -> mean ->
``centred_square_sums`` -> reduce -> variance -> ``batchnorm_forward``; in backward,
``batchnorm_grad_sums`` -> reduce -> ``batchnorm_backward``. The variance is the mean of
squares about the mean (two passes), not E[x^2] - mean^2, whose rounding error grows with
(mean/std)^2.

Each sample is one row of memory (mpidl.ops.chunks.SampleRows) and every pass goes through the
rows a chunk of samples at a time, so it reads its inputs from memory once and writes its
output once, however many NumPy operations it takes.
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.chunks import SampleRows


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


def _rows(x) -> SampleRows:
    """x as SampleRows; a layer passes the same SampleRows to each step of one forward, so an
    input in neither layout is copied into rows once, not once a step."""
    return x if isinstance(x, SampleRows) else SampleRows(x)


def batchnorm_sums(x) -> np.ndarray:
    """[sum per channel, count] in one float64 buffer, ready for a single Allreduce."""
    rows = _rows(x)
    buf = np.empty(rows.C + 1, dtype=np.float64)
    buf[:-1] = rows.sums(rows.rows)   # no temporary: one matmul over the whole batch
    buf[-1] = rows.rows.size // rows.C
    return buf


def mean_from_sums(buf: np.ndarray):
    """(mean, count) per channel from batchnorm_sums (possibly reduced)."""
    count = buf[-1]
    return buf[:-1] / count, count


def centred_square_sums(x, mean) -> np.ndarray:
    """Sum of (x - mean)^2 per channel in float64 (the variance's numerator). A second pass over
    x, not one pass with E[x^2] - mean^2 or with per-chunk means combined (Chan et al.): the
    former loses digits for a large mean, and the latter measured 1.3x slower here (more
    operations per chunk, where reading x once more from memory costs less)."""
    rows = _rows(x)
    minus_mean = rows.along_row(-mean)
    total = np.zeros(rows.C, dtype=np.float64)
    for s in rows.chunks():
        centred = np.add(rows.rows[s], minus_mean)
        total += rows.sums(np.multiply(centred, centred, out=centred))
    return total


def batch_stats(x):
    """(mean, biased variance, count) per channel of this batch alone."""
    mean, count = mean_from_sums(batchnorm_sums(x))
    return mean, centred_square_sums(x, mean) / count, count


def _shift_scale_add(rows, shift, scale, add) -> np.ndarray:
    """(x + shift) * scale + add per channel: x - mean first, so a large mean costs no digits."""
    shift, scale, add = rows.along_row(shift), rows.along_row(scale), rows.along_row(add)
    out = np.empty_like(rows.rows)
    for s in rows.chunks():
        y = np.add(rows.rows[s], shift, out=out[s])
        y *= scale
        y += add
    return rows.like(out)


def batchnorm_forward(x, gamma, beta, mean, var, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel (axis 1).

    The cache is x itself (as SampleRows) and the statistics: backward recomputes x - mean a
    chunk at a time, cheaper than writing a normalised copy and reading it back."""
    inv_std = 1.0 / np.sqrt(var + eps)
    rows = _rows(x)
    return _shift_scale_add(rows, -mean, gamma * inv_std, beta), (rows, mean, gamma, inv_std)


def batchnorm_eval(x, gamma, beta, running_mean, running_var, eps):
    scale = gamma / np.sqrt(running_var + eps)
    return _shift_scale_add(_rows(x), -running_mean, scale, beta)


def batchnorm_grad_sums(dy, cache) -> np.ndarray:
    """[sum dy, sum dy*xhat] per channel, one buffer (a synchronised layer reduces it)."""
    rows, mean, _, inv_std = cache
    dy_rows, minus_mean = rows.of(dy), rows.along_row(-mean)
    C = rows.C
    buf = np.zeros(2 * C, dtype=np.float64)
    for s in rows.chunks():
        buf[:C] += rows.sums(dy_rows[s])
        centred = np.add(rows.rows[s], minus_mean)
        buf[C:] += rows.sums(np.multiply(centred, dy_rows[s], out=centred))
    buf[C:] *= inv_std
    return buf


def batchnorm_backward(dy, cache, local_sums, global_sums, count):
    """Returns (dx, dgamma, dbeta).

    dgamma/dbeta come from this process's samples (local_sums); dx uses the sums over the
    whole batch the statistics came from (global_sums, equal to local_sums when nothing
    is synchronised) and its size `count`.
    """
    rows, mean, gamma, inv_std = cache
    C = rows.C
    dbeta = local_sums[:C].astype(rows.dtype)
    dgamma = local_sums[C:].astype(rows.dtype)
    # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = (x - mean) * inv_std
    dy_rows = rows.of(dy)
    minus_mean = rows.along_row(-mean)
    xhat_term = rows.along_row(-inv_std * global_sums[C:] / count)
    minus_mean_dy = rows.along_row(-global_sums[:C] / count)
    scale = rows.along_row(gamma * inv_std)
    dx = np.empty_like(rows.rows)
    for s in rows.chunks():
        d = np.add(rows.rows[s], minus_mean, out=dx[s])
        d *= xhat_term
        d += dy_rows[s]
        d += minus_mean_dy
        d *= scale
    return rows.like(dx), dgamma, dbeta
