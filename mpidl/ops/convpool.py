"""Convolution, 2x2 max-pooling and ReLU in one pass: the block every classic CNN repeats.

The convolution's GEMM is free to produce its rows in any order, so it produces them grouped
by pooling window: rows ordered (n, di, dj, i, j) for conv output pixel (2i+di, 2j+dj). Each
sample's output is then four contiguous planes, one per window position, and the pooling is
a handful of element-wise operations on whole planes, done chunk by chunk while the GEMM's
output is still in cache. The full-resolution convolution output is never stored; what
backward needs is the winning position of each window (one byte per pooled output).

Same numbers as conv2d -> maxpool2d(2) -> relu (relu(maxpool(x)) = maxpool(relu(x))), with the
same tie rule as PyTorch: the first maximum in (row, column) order wins. Odd conv output sizes
are floored like the unfused pooling: the last row or column is never computed at all.
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.conv import (FEW_CHANNELS, InputGrad, patch_buffer, sample_spans, backward_by_chunks,
                            channels_last_patches, column_sums, conv_geometry, correlation_applies,
                            few_channel_windows, input_grad_by_correlation, with_bias)
from mpidl.ops.scratch import FRESH

# Samples are pooled a chunk at a time while the GEMM's output is in cache. Without a patch
# buffer per chunk (the few-channel path keeps all patches) bigger chunks pay less overhead.
FEW_CHANNEL_CHUNK_ROWS = 8192
# Winner code of a window whose maximum is not positive: ReLU passes no gradient to it.
CLIPPED = 4


def conv2d_pool_relu_forward(x, W, b=None, stride=1, padding=0, dilation=1, keep_cols=True, scratch=FRESH):
    """relu(maxpool2x2(conv2d(x, W, b))) for NCHW x; returns (y, cache), y an NCHW view of
    channels-last memory like conv2d's output. ``scratch`` as in conv2d_forward."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    s, p, d, (Ho, Wo) = conv_geometry("conv2d+maxpool", x.shape, W.shape, stride, padding, dilation)
    Hp, Wp = Ho // 2, Wo // 2
    if Hp < 1 or Wp < 1:
        raise ValueError(f"conv2d+maxpool: the {Ho}x{Wo} convolution output is too small for 2x2 pooling")
    K, ones, plane = C * kh * kw, 0 if b is None else 1, Hp * Wp * F
    rows_per_sample = 4 * Hp * Wp
    dtype = np.result_type(x.dtype, W.dtype)
    conv_hw = (2 * Hp, 2 * Wp)   # the part of the convolution output the pooling reads
    few = C < FEW_CHANNELS
    spans = sample_spans(N, rows_per_sample, FEW_CHANNEL_CHUNK_ROWS if few else None)
    chunk = spans[0][1] - spans[0][0]
    if few:
        # As in conv2d: the whole transposed patch matrix (c, p, q | rows), kept for backward,
        # gathered along image rows; chunk by chunk, each chunk right before its GEMM reads it
        # from cache (gathering the whole batch first, then multiplying, was 1.0-1.6 ms slower
        # for the 32x32x3 cnn at batch 100; gathering again in backward cost as much there).
        windows = few_channel_windows(x, (kh, kw), s, p, d, conv_hw, scratch)      # (N, C, Ho, Wo, kh, kw)
        by_window = windows.reshape(N, C, Hp, 2, Wp, 2, kh, kw).transpose(1, 6, 7, 0, 3, 5, 2, 4)
        cols_t = scratch.empty("cols", (K + ones, N * rows_per_sample), x.dtype)
        if ones:
            cols_t[K] = 1
        W_T = with_bias(W.reshape(F, K), b).T

        def patches(lo, hi):
            block = cols_t[:, lo * rows_per_sample:hi * rows_per_sample]
            np.copyto(block[:K].reshape(C, kh, kw, hi - lo, 2, 2, Hp, Wp), by_window[:, :, :, lo:hi])
            return block.T
        source = cols_t
    else:
        plain = channels_last_patches(x, (kh, kw), s, p, d, conv_hw, scratch)      # (N, Ho, Wo, kh, kw, C)
        by_window = plain.reshape(N, Hp, 2, Wp, 2, kh, kw, C).transpose(0, 2, 4, 1, 3, 5, 6, 7)
        W_T = with_bias(W.transpose(0, 2, 3, 1).reshape(F, K), b).T
        buf = patch_buffer(chunk * rows_per_sample, K, ones, x.dtype, scratch)

        def patches(lo, hi):
            rows = (hi - lo) * rows_per_sample
            np.copyto(buf[:rows, :K].reshape(hi - lo, 2, 2, Hp, Wp, kh, kw, C), by_window[lo:hi])
            return buf[:rows]
        source = plain  # backward gathers again, in plain (n, i, j) order
    y = np.empty((N, Hp, Wp, F), dtype=dtype)
    winner = scratch.empty("winner", (N, Hp, Wp, F), np.uint8)
    out = scratch.temp("conv", (chunk * rows_per_sample, F), dtype)
    pooling = _Pooling(chunk, plane, dtype, scratch)
    for lo, hi in spans:
        conv = np.matmul(patches(lo, hi), W_T, out=out[:(hi - lo) * rows_per_sample])
        pooling.pool_relu(conv.reshape(hi - lo, 4, plane), y[lo:hi].reshape(hi - lo, plane),
                          winner[lo:hi].reshape(hi - lo, plane))
    cache = None
    if keep_cols:
        cache = (source, winner, ones, W, x.shape, s, p, d, conv_hw)
    return y.transpose(0, 3, 1, 2), cache


class _Pooling:
    """Pools one chunk of samples at a time, with working planes that stay in cache."""

    def __init__(self, samples, plane, dtype, scratch):
        self.best_top = scratch.temp("pool_best", (samples, plane), dtype)
        self.flags = scratch.temp("pool_flags", (3, samples, plane), bool)

    def pool_relu(self, conv, y, winner):
        """conv: (n, 4, plane), window positions (0,0), (0,1), (1,0), (1,1). Writes the pooled,
        ReLU'd output into y and each window's winning position (0-3, or CLIPPED) into winner."""
        n = conv.shape[0]
        top_left, top_right, bottom_left, bottom_right = conv[:, 0], conv[:, 1], conv[:, 2], conv[:, 3]
        best_top = self.best_top[:n]
        right_top, right_bottom, bottom = self.flags[0, :n], self.flags[1, :n], self.flags[2, :n]
        # Strict comparisons: the left column and the top row keep ties (PyTorch's first maximum).
        np.greater(top_right, top_left, out=right_top)
        np.maximum(top_left, top_right, out=best_top)
        np.greater(bottom_right, bottom_left, out=right_bottom)
        np.maximum(bottom_left, bottom_right, out=y)
        np.greater(y, best_top, out=bottom)
        np.maximum(best_top, y, out=y)
        # right = bottom ? right_bottom : right_top, by bit operations (a masked copy of booleans
        # is tens of times slower); then winner = 2*bottom + right.
        np.bitwise_xor(right_top, right_bottom, out=right_bottom)
        np.bitwise_and(right_bottom, bottom, out=right_bottom)
        np.bitwise_xor(right_top, right_bottom, out=right_top)
        np.add(right_top.view(np.uint8), bottom.view(np.uint8), out=winner)
        np.add(winner, bottom.view(np.uint8), out=winner)
        np.maximum(y, 0, out=y)
        clipped = bottom
        np.less_equal(y, 0, out=clipped)  # PyTorch's relu'(0) = 0
        np.multiply(clipped.view(np.uint8), CLIPPED, out=clipped.view(np.uint8))  # 0 or CLIPPED
        np.bitwise_or(winner, clipped.view(np.uint8), out=winner)  # 0-3 stay, clipped ones never match


def _unpool(dy_nhwc, winner, planes, hit):
    """planes[k] (n, Hp, Wp, F) views, k = 2*di + dj: the gradient that reaches window position k."""
    for k, plane in enumerate(planes):
        np.equal(winner, k, out=hit)
        np.multiply(dy_nhwc, hit, out=plane)


def conv2d_pool_relu_backward(dy, cache, need_dx=True, need_db=True, scratch=FRESH):
    """Returns (dx, dW, db) like conv2d_backward. The gradient of the convolution output is
    made one chunk of samples at a time, right where it is used, and never stored whole."""
    if cache is None:
        raise RuntimeError("conv2d_pool_relu_backward: the forward pass ran without keeping its patches")
    source, winner, ones, W, x_shape, s, p, d, (Ho, Wo) = cache
    N, C, H, Wd = x_shape
    F, _, kh, kw = W.shape
    Hp, Wp = Ho // 2, Wo // 2
    dy_nhwc = dy.transpose(0, 2, 3, 1)
    if dy_nhwc.strides[-1] != dy_nhwc.itemsize:  # NCHW in memory (after Flatten): one transposing copy
        dy_nhwc = np.ascontiguousarray(dy_nhwc)
    dtype = np.result_type(dy.dtype, W.dtype)
    rows_per_sample = 4 * Hp * Wp
    if C >= FEW_CHANNELS:
        # Plain (n, i, j) row order, as conv2d's own backward gathers the patches. The input
        # gradient by correlation needs the gradient of the whole convolution output, so there the
        # chunks are unpooled into one temporary of the output's size instead of a chunk's; only
        # where the pooling reads the whole output (none of its rows or columns dropped).
        chunk = sample_spans(N, rows_per_sample)[0][1]
        by_correlation = (need_dx and correlation_applies(W.shape, s, p, d) and
                          conv_geometry("conv2d+maxpool", x_shape, W.shape, s, p, d)[3] == (Ho, Wo))
        if by_correlation:
            whole = scratch.temp("dconv_whole", (N, Hp, 2, Wp, 2, F), dtype)
        else:
            dconv = scratch.temp("dconv", (chunk, Hp, 2, Wp, 2, F), dtype)
        hit = scratch.temp("hit", (chunk, Hp, Wp, F), bool)

        def dy_rows(lo, hi):
            n, part = hi - lo, whole[lo:hi] if by_correlation else dconv[:hi - lo]
            _unpool(dy_nhwc[lo:hi], winner[lo:hi], [part[:, :, k // 2, :, k % 2] for k in range(4)], hit[:n])
            return part.reshape(n * rows_per_sample, F)
        conv_cache = (source, ones, W, x_shape, s, p, d, (Ho, Wo))
        dx, dW, db = backward_by_chunks(dy_rows, conv_cache, need_dx and not by_correlation, need_db, dtype,
                                        scratch)
        if by_correlation:
            dx = input_grad_by_correlation(whole.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2), W, p, d, scratch)
        return dx, dW, db
    # Few channels: the kept patch matrix is in window order, so the gradient chunks are too.
    spans = sample_spans(N, rows_per_sample, FEW_CHANNEL_CHUNK_ROWS)
    chunk = spans[0][1]
    dconv = scratch.temp("dconv", (chunk, 2, 2, Hp, Wp, F), dtype)
    hit = scratch.temp("hit", (chunk, Hp, Wp, F), bool)
    K = C * kh * kw
    grads = np.zeros((K + ones, F), dtype=dtype)
    part = np.empty_like(grads)
    db = np.zeros(F, dtype=dtype)
    dx = InputGrad(W, x_shape, s, p, d, (Ho, Wo), chunk, dtype) if need_dx else None
    for lo, hi in spans:
        n = hi - lo
        _unpool(dy_nhwc[lo:hi], winner[lo:hi], [dconv[:n, k // 2, k % 2] for k in range(4)], hit[:n])
        dconv_rows = dconv[:n].reshape(n * rows_per_sample, F)
        np.matmul(source[:, lo * rows_per_sample:hi * rows_per_sample], dconv_rows, out=part)
        grads += part
        if need_db and not ones:
            db += column_sums(dconv_rows)
        if dx is not None:
            dx.add(lo, hi, np.ascontiguousarray(dconv[:n].transpose(0, 3, 1, 4, 2, 5)).reshape(-1, F))
    dW = grads[:K].T.reshape(F, C, kh, kw)
    if need_db and ones:
        db = grads[K].copy()
    return (None if dx is None else dx.result()), dW, (db if need_db else None)
