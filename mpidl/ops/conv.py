"""2-D convolution by im2col and one GEMM.

Arrays are NCHW at the interface (x: batch, channels, height, width; W: out, in, kh, kw,
as in PyTorch). Inside, the patch matrix is laid out channels-last, (N*Ho*Wo, kh*kw*C):
gathering it reads runs of C contiguous numbers, and the GEMM result (N*Ho*Wo, F) is
already the output in NHWC memory. The output is returned as an NCHW *view* of that
memory, so no transpose is copied; element-wise layers and pooling keep the layout,
and the next convolution reads it directly. Inputs with few channels (a network's first
layer) are gathered channels-first instead, where the runs along image rows are longer.

The bias is one more patch column of ones, so it costs no pass over the output.

Backward: weight gradient (and bias gradient) = one GEMM with the cached patches; input gradient = col2im,
one GEMM and one strided add per kernel offset (kh*kw of them, never a loop over pixels).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


# Below this many input channels the patch matrix is gathered channels-first (see conv2d_forward).
FEW_CHANNELS = 8


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def output_size(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _window_slices(k_index, dilation, stride, n_out):
    """Slice of the padded input that kernel offset `k_index` sees across all outputs."""
    start = k_index * dilation
    return slice(start, start + stride * (n_out - 1) + 1, stride)


def conv2d_forward(x, W, b=None, stride=1, padding=0, dilation=1, keep_cols=True):
    """y[n, f, i, j] = b[f] + sum_{c, p, q} W[f, c, p, q] * xpad[n, c, i*s + p*d, j*s + q*d].

    Returns (y, cache). ``keep_cols=False`` (evaluation) drops the patch matrix at once.
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
    if C < FEW_CHANNELS:
        # Few channels (the first layer): patches stored transposed, (c, p, q | n, i, j), gathered
        # from an NCHW copy, so the copy runs along image rows instead of along 1-3 channels.
        xp = np.zeros((N, C, H + 2 * ph, Wd + 2 * pw), dtype=x.dtype)
        xp[:, :, ph:ph + H, pw:pw + Wd] = x
        windows = sliding_window_view(xp, window, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :Ho, :Wo]
        cols_t = np.empty((K + ones, N * Ho * Wo), dtype=x.dtype)
        np.copyto(cols_t[:K].reshape(C, kh, kw, N, Ho, Wo), windows.transpose(1, 4, 5, 0, 2, 3))
        cols = cols_t.T                                              # (N*Ho*Wo, K [+1]) as a transposed view
        W_mat = W.reshape(F, K)                                      # (c, p, q) order: no copy
    else:
        # Channels-last padded copy (a view of conv2d's own output layout needs no transpose copy),
        # all windows as a strided view subsampled for stride and dilation, then copied once
        # into the patch matrix ordered (n, i, j | p, q, c).
        x_nhwc = x.transpose(0, 2, 3, 1)
        if ph or pw:
            xp = np.zeros((N, H + 2 * ph, Wd + 2 * pw, C), dtype=x.dtype)
            xp[:, ph:ph + H, pw:pw + Wd, :] = x_nhwc
        else:
            xp = x_nhwc
        windows = sliding_window_view(xp, window, axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw][:, :Ho, :Wo]
        cols = np.empty((N * Ho * Wo, K + ones), dtype=x.dtype)
        np.copyto(cols[:, :K].reshape(N, Ho, Wo, kh, kw, C), windows.transpose(0, 1, 2, 4, 5, 3))
        W_mat = W.transpose(0, 2, 3, 1).reshape(F, K)                # small copy, same (p, q, c) order
    if ones:
        cols[:, K] = 1
        W_mat = np.concatenate([W_mat, b.reshape(F, 1).astype(W_mat.dtype, copy=False)], axis=1)
    out = cols @ W_mat.T                                           # the one GEMM: (N*Ho*Wo, F), NHWC memory
    y = out.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2)
    cache = (cols if keep_cols else None, W, x.shape, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo))
    return y, cache


def conv2d_backward(dy, cache, need_dx=True, need_db=True):
    """Returns (dx, dW, db); dx is None when not needed, db None when there is no bias."""
    cols, W, x_shape, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = cache
    if cols is None:
        raise RuntimeError("conv2d_backward: the forward pass ran without keeping its patches")
    N, C, H, Wd = x_shape
    F, _, kh, kw = W.shape
    dy_mat = dy.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, F)  # a view when dy is channels-last
    K = C * kh * kw
    if C < FEW_CHANNELS:
        # cols is a transposed view of the (K [+1], N*Ho*Wo) patches: multiply in their own layout.
        grads = (cols.T @ dy_mat).T                               # (F, K [+1])
        dW = grads[:, :K].reshape(F, C, kh, kw)
    else:
        grads = dy_mat.T @ cols
        dW = grads[:, :K].reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    if not need_db:
        db = None
    elif cols.shape[1] > K:       # the forward's column of ones: db came out of the same GEMM
        db = grads[:, K]
    else:
        # Column sums as a matrix-vector product: several times faster than sum(axis=0) on a tall matrix.
        db = np.ones(N * Ho * Wo, dtype=dy.dtype) @ dy_mat
    if not need_dx:
        return None, dW, db
    # col2im: the patch gradients of kernel offset (p, q) are dy_mat @ W[:, :, p, q], added onto a
    # shifted slice of the padded input gradient. One offset at a time, into a scratch block that
    # stays in cache, instead of materialising all N*Ho*Wo*kh*kw*C patch gradients first.
    W_offsets = np.ascontiguousarray(W.transpose(2, 3, 0, 1).reshape(kh * kw, F, C))  # (kh*kw, F, C)
    dxp = np.zeros((N, H + 2 * ph, Wd + 2 * pw, C), dtype=dy.dtype)
    block = np.empty((N * Ho * Wo, C), dtype=dy.dtype)
    for p in range(kh):
        rows = _window_slices(p, dh, sh, Ho)
        for q in range(kw):
            np.matmul(dy_mat, W_offsets[p * kw + q], out=block)
            dxp[:, rows, _window_slices(q, dw, sw, Wo), :] += block.reshape(N, Ho, Wo, C)
    dx = dxp[:, ph:ph + H, pw:pw + Wd, :].transpose(0, 3, 1, 2)
    return dx, dW, db
