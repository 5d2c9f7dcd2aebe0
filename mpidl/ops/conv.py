"""2-D convolution by im2col and one GEMM.

Arrays are NCHW at the interface (x: batch, channels, height, width; W: out, in, kh, kw,
as in PyTorch). Inside, the patch matrix is laid out channels-last, (N*Ho*Wo, kh*kw*C):
gathering it reads runs of C contiguous numbers, and the GEMM result (N*Ho*Wo, F) is
already the output in NHWC memory. The output is returned as an NCHW *view* of that
memory, so no transpose is copied; element-wise layers and pooling keep the layout,
and the next convolution reads it directly. Inputs with few channels (a network's first
layer) are gathered channels-first instead, where the runs along image rows are longer.

The bias is one more patch column of ones, so it costs no pass over the output. With many
channels the patches are gathered and multiplied a few samples at a time (CHUNK_ROWS), so
each GEMM reads them from cache; backward gathers them again from the padded input.

Backward: weight gradient (and bias gradient) = GEMMs with the patches; input gradient = col2im,
one GEMM and one strided add per kernel offset (kh*kw of them, never a loop over pixels).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


# Below this many input channels the patch matrix is gathered channels-first (see conv2d_forward).
FEW_CHANNELS = 8
# Patch rows gathered and multiplied at a time on the many-channel path: about 2 MB of patches,
# so each GEMM reads them from cache rather than memory (faster than one GEMM over the batch).
CHUNK_ROWS = 2048


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def output_size(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _window_slices(k_index, dilation, stride, n_out):
    """Slice of the padded input that kernel offset `k_index` sees across all outputs."""
    start = k_index * dilation
    return slice(start, start + stride * (n_out - 1) + 1, stride)


def _sample_spans(N, rows_per_sample):
    """[lo, hi) sample ranges of about CHUNK_ROWS patch rows each."""
    step = max(1, CHUNK_ROWS // rows_per_sample)
    return [(lo, min(N, lo + step)) for lo in range(0, N, step)]


def _patch_buffer(rows, K, ones, dtype):
    """Scratch for one chunk of patches; with ``ones`` a last column of ones carries the bias."""
    buf = np.empty((rows, K + ones), dtype=dtype)
    if ones:
        buf[:, K] = 1
    return buf


def conv2d_forward(x, W, b=None, stride=1, padding=0, dilation=1, keep_cols=True):
    """y[n, f, i, j] = b[f] + sum_{c, p, q} W[f, c, p, q] * xpad[n, c, i*s + p*d, j*s + q*d].

    Returns (y, cache). ``keep_cols=False`` (evaluation) keeps nothing for a backward pass.
    """
    N, C, H, Wd = x.shape
    F, Cw, kh, kw = W.shape
    if C != Cw:
        raise ValueError(f"conv2d: input has {C} channels, weight expects {Cw}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    Ho, Wo = output_size(H, kh, sh, ph, dh), output_size(Wd, kw, sw, pw, dw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} does not fit the padded {H}x{Wd} input")

    window = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    K = C * kh * kw
    # The bias rides in the GEMM as one more patch column of ones (and one more weight column):
    # that saves a pass over the output here and gives db from the weight-gradient GEMM.
    ones = 0 if b is None else 1
    W_bias = (lambda W_mat: np.concatenate([W_mat, b.reshape(F, 1).astype(W_mat.dtype, copy=False)], axis=1)
              if ones else W_mat)
    if C < FEW_CHANNELS:
        # Few channels (the first layer): patches stored transposed, (c, p, q | n, i, j), gathered
        # from an NCHW copy, so the copy runs along image rows instead of along 1-3 channels.
        # The whole patch matrix is kept for backward (it is small: K = C*kh*kw).
        xp = np.zeros((N, C, H + 2 * ph, Wd + 2 * pw), dtype=x.dtype)
        xp[:, :, ph:ph + H, pw:pw + Wd] = x
        windows = sliding_window_view(xp, window, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :Ho, :Wo]
        cols_t = np.empty((K + ones, N * Ho * Wo), dtype=x.dtype)
        np.copyto(cols_t[:K].reshape(C, kh, kw, N, Ho, Wo), windows.transpose(1, 4, 5, 0, 2, 3))
        if ones:
            cols_t[K] = 1
        out = cols_t.T @ W_bias(W.reshape(F, K)).T                 # (c, p, q) order: W needs no copy
        source = cols_t.T                                           # (N*Ho*Wo, K [+1]) as a transposed view
    else:
        # Channels-last padded copy (a view of conv2d's own output layout needs no transpose copy),
        # all windows as a strided view subsampled for stride and dilation. Patches ordered
        # (n, i, j | p, q, c) are copied out of it a chunk of samples at a time, each chunk
        # straight into its GEMM; backward gathers them again from the padded input.
        x_nhwc = x.transpose(0, 2, 3, 1)
        if ph or pw:
            xp = np.zeros((N, H + 2 * ph, Wd + 2 * pw, C), dtype=x.dtype)
            xp[:, ph:ph + H, pw:pw + Wd, :] = x_nhwc
        else:
            xp = x_nhwc
        windows = sliding_window_view(xp, window, axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw][:, :Ho, :Wo]
        patches = windows.transpose(0, 1, 2, 4, 5, 3)                # (N, Ho, Wo, kh, kw, C) view
        W_T = W_bias(W.transpose(0, 2, 3, 1).reshape(F, K)).T        # small copy, same (p, q, c) order
        spans = _sample_spans(N, Ho * Wo)
        buf = _patch_buffer((spans[0][1] - spans[0][0]) * Ho * Wo, K, ones, x.dtype)
        out = np.empty((N * Ho * Wo, F), dtype=np.result_type(x.dtype, W.dtype))
        for lo, hi in spans:
            rows = (hi - lo) * Ho * Wo
            np.copyto(buf[:rows, :K].reshape(hi - lo, Ho, Wo, kh, kw, C), patches[lo:hi])
            np.matmul(buf[:rows], W_T, out=out[lo * Ho * Wo:hi * Ho * Wo])
        source = patches
    y = out.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2)             # NHWC memory, NCHW view
    cache = (source if keep_cols else None, ones, W, x.shape, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo))
    return y, cache


def conv2d_backward(dy, cache, need_dx=True, need_db=True):
    """Returns (dx, dW, db); dx is None when not needed, db None when there is no bias."""
    source, ones, W, x_shape, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = cache
    if source is None:
        raise RuntimeError("conv2d_backward: the forward pass ran without keeping its patches")
    N, C, H, Wd = x_shape
    F, _, kh, kw = W.shape
    dy_mat = dy.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, F)  # a view when dy is channels-last
    K = C * kh * kw
    if C < FEW_CHANNELS:
        # source is a transposed view of the (K [+1], N*Ho*Wo) patches: multiply in their own layout.
        grads = (source.T @ dy_mat).T                               # (F, K [+1])
        dW = grads[:, :K].reshape(F, C, kh, kw)
        if need_dx:
            dxp = _col2im(dy_mat, W, N, C, H, Wd, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo), [(0, N)])
    else:
        # Chunk by chunk, as in forward: gather the patches again (from the small padded input),
        # accumulate the weight gradient, and scatter this chunk's input gradient.
        spans = _sample_spans(N, Ho * Wo)
        buf = _patch_buffer((spans[0][1] - spans[0][0]) * Ho * Wo, K, ones, source.dtype)
        grads = np.zeros((F, K + ones), dtype=np.result_type(dy.dtype, source.dtype))
        part = np.empty_like(grads)
        for lo, hi in spans:
            rows = (hi - lo) * Ho * Wo
            np.copyto(buf[:rows, :K].reshape(hi - lo, Ho, Wo, kh, kw, C), source[lo:hi])
            np.matmul(dy_mat[lo * Ho * Wo:hi * Ho * Wo].T, buf[:rows], out=part)
            grads += part
        dW = grads[:, :K].reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
        if need_dx:
            dxp = _col2im(dy_mat, W, N, C, H, Wd, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo), spans)
    if not need_db:
        db = None
    elif ones:                    # the forward's column of ones: db came out of the same GEMM
        db = grads[:, K]
    else:
        # Column sums as a matrix-vector product: several times faster than sum(axis=0) on a tall matrix.
        db = np.ones(N * Ho * Wo, dtype=dy.dtype) @ dy_mat
    if not need_dx:
        return None, dW, db
    dx = dxp[:, ph:ph + H, pw:pw + Wd, :].transpose(0, 3, 1, 2)
    return dx, dW, db


def _col2im(dy_mat, W, N, C, H, Wd, stride, padding, dilation, out_hw, spans):
    """Input gradient, padded, channels-last: the patch gradients of kernel offset (p, q) are
    dy_mat @ W[:, :, p, q], added onto a shifted slice of the padded input gradient. One offset
    at a time into a scratch block, one chunk of samples at a time, so the block and the slice
    of the gradient it is added to stay in cache."""
    (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = stride, padding, dilation, out_hw
    F, _, kh, kw = W.shape
    W_offsets = np.ascontiguousarray(W.transpose(2, 3, 0, 1).reshape(kh * kw, F, C))  # (kh*kw, F, C)
    dxp = np.zeros((N, H + 2 * ph, Wd + 2 * pw, C), dtype=np.result_type(dy_mat.dtype, W.dtype))
    block = np.empty(((spans[0][1] - spans[0][0]) * Ho * Wo, C), dtype=dxp.dtype)
    for lo, hi in spans:
        rows = (hi - lo) * Ho * Wo
        dy_part, part, block_part = dy_mat[lo * Ho * Wo:hi * Ho * Wo], dxp[lo:hi], block[:rows]
        for p in range(kh):
            row_slice = _window_slices(p, dh, sh, Ho)
            for q in range(kw):
                np.matmul(dy_part, W_offsets[p * kw + q], out=block_part)
                part[:, row_slice, _window_slices(q, dw, sw, Wo), :] += block_part.reshape(hi - lo, Ho, Wo, C)
    return dxp
