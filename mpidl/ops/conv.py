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
one GEMM and one strided add per kernel offset (kh*kw of them, never a loop over pixels), or
for stride 1 a correlation of the padded output gradient (input_grad_by_correlation).

Stride-1 layers of 8-16 channels in and at most 16 out copy no patches at all: they take
GEMMs over shifted row ranges of the padded input (mpidl.ops.shifted, chosen by shifted_applies).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpidl.ops.scratch import FRESH
from mpidl.ops.shifted import NARROW_CHANNELS, PaddedRows, shifted_forward, shifted_weight_grad


# Below this many input channels the patch matrix is gathered channels-first (see conv2d_forward).
FEW_CHANNELS = 8
# Patch rows gathered and multiplied at a time on the many-channel path: about 2 MB of patches,
# so each GEMM reads them from cache rather than memory (faster than one GEMM over the batch).
CHUNK_ROWS = 2048


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def output_size(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _window_slices(k_index, dilation, stride, n_out):
    """Slice of the padded input that kernel offset `k_index` sees across all outputs."""
    start = k_index * dilation
    return slice(start, start + stride * (n_out - 1) + 1, stride)


def sample_spans(N, rows_per_sample, chunk_rows=None):
    """[lo, hi) sample ranges of about chunk_rows (default CHUNK_ROWS) patch rows each."""
    step = max(1, (CHUNK_ROWS if chunk_rows is None else chunk_rows) // rows_per_sample)
    return [(lo, min(N, lo + step)) for lo in range(0, N, step)]


def patch_buffer(rows, K, ones, dtype, scratch=FRESH):
    """Scratch for one chunk of patches; with ``ones`` a last column of ones carries the bias."""
    buf = scratch.temp("patches", (rows, K + ones), dtype)
    if ones:
        buf[:, K] = 1
    return buf


def conv_geometry(what, x_shape, W_shape, stride, padding, dilation):
    """((sh, sw), (ph, pw), (dh, dw), (Ho, Wo)), after checking that the shapes fit."""
    N, C, H, Wd = x_shape
    F, Cw, kh, kw = W_shape
    if C != Cw:
        raise ValueError(f"{what}: input has {C} channels, weight expects {Cw}")
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    Ho, Wo = output_size(H, kh, sh, ph, dh), output_size(Wd, kw, sw, pw, dw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{what}: kernel {kh}x{kw} does not fit the padded {H}x{Wd} input")
    return (sh, sw), (ph, pw), (dh, dw), (Ho, Wo)


def with_bias(W_mat, b):
    """(F, K) weights, plus the bias as column K when there is one. The bias rides in the GEMM
    as one more patch column of ones: that saves a pass over the output in forward and gives
    db from the weight-gradient GEMM in backward."""
    if b is None:
        return W_mat
    return np.concatenate([W_mat, b.reshape(-1, 1).astype(W_mat.dtype, copy=False)], axis=1)


def few_channel_windows(x, kernel, stride, padding, dilation, out_hw, scratch=FRESH):
    """All windows of the zero-padded NCHW input as a strided view (N, C, Ho, Wo, kh, kw)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = kernel, stride, padding, dilation, out_hw
    N, C, H, Wd = x.shape
    # A temporary (the patches are copied out of it), named by what decides the zero border.
    xp = scratch.temp_zeros_once(f"padded_nchw_{H}x{Wd}_{ph}{pw}", (N, C, H + 2 * ph, Wd + 2 * pw), x.dtype)
    xp[:, :, ph:ph + H, pw:pw + Wd] = x  # the same part each time: the border stays zero
    window = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    return sliding_window_view(xp, window, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :Ho, :Wo]


def channels_last_patches(x, kernel, stride, padding, dilation, out_hw, scratch=FRESH, temporary=False):
    """All patches as a strided view (N, Ho, Wo, kh, kw, C) of a channels-last padded copy
    (no copy at all when there is no padding and x is channels-last in memory). The padded
    copy is the layer's own (forward's patches outlive the call), or with ``temporary`` one
    from the shared pool (for patches used only within the call)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = kernel, stride, padding, dilation, out_hw
    N, C, H, Wd = x.shape
    x_nhwc = x.transpose(0, 2, 3, 1)
    if ph or pw:
        shape = (N, H + 2 * ph, Wd + 2 * pw, C)
        xp = (scratch.temp_zeros_once(f"padded_nhwc_{H}x{Wd}_{ph}{pw}", shape, x.dtype) if temporary
              else scratch.zeros_once("padded", shape, x.dtype))
        xp[:, ph:ph + H, pw:pw + Wd, :] = x_nhwc
    else:
        xp = x_nhwc
    window = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = sliding_window_view(xp, window, axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw][:, :Ho, :Wo]
    return windows.transpose(0, 1, 2, 4, 5, 3)


def conv2d_forward(x, W, b=None, stride=1, padding=0, dilation=1, keep_cols=True, scratch=FRESH):
    """y[n, f, i, j] = b[f] + sum_{c, p, q} W[f, c, p, q] * xpad[n, c, i*s + p*d, j*s + q*d].

    Returns (y, cache). ``keep_cols=False`` (evaluation) keeps nothing for a backward pass.
    ``scratch``: where the working arrays come from (mpidl.ops.scratch); the cache refers to
    them, so it is good until the next call with the same Scratch.
    """
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = conv_geometry("conv2d", x.shape, W.shape, stride, padding, dilation)
    K = C * kh * kw
    ones = 0 if b is None else 1  # the bias rides in the GEMM (see with_bias)
    if shifted_applies(C, F, (kh, kw), (sh, sw), (ph, pw), (dh, dw)):
        # Few channels, stride 1: no patches at all (mpidl.ops.shifted); backward reads the same
        # rows, so they are the layer's own, and a temporary where nothing is kept (evaluation).
        padded = PaddedRows(x, (ph, pw), kw - 1, "padded_rows", scratch, temporary=not keep_cols)
        y = shifted_forward(padded, W, b, (Ho, Wo), scratch).transpose(0, 3, 1, 2)
        return y, (padded if keep_cols else None, ones, W, x.shape, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo))
    if C < FEW_CHANNELS:
        # Few channels (the first layer): patches stored transposed, (c, p, q | n, i, j), gathered
        # from an NCHW copy, so the copy runs along image rows instead of along 1-3 channels.
        # The whole patch matrix is kept for backward (it is small: K = C*kh*kw).
        windows = few_channel_windows(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo), scratch)
        cols_t = scratch.empty("cols", (K + ones, N * Ho * Wo), x.dtype)
        np.copyto(cols_t[:K].reshape(C, kh, kw, N, Ho, Wo), windows.transpose(1, 4, 5, 0, 2, 3))
        if ones:
            cols_t[K] = 1
        out = cols_t.T @ with_bias(W.reshape(F, K), b).T            # (c, p, q) order: W needs no copy
        source = cols_t.T                                           # (N*Ho*Wo, K [+1]) as a transposed view
    else:
        # Channels-last padded copy (a view of conv2d's own output layout needs no transpose copy),
        # all windows as a strided view subsampled for stride and dilation. Patches ordered
        # (n, i, j | p, q, c) are copied out of it a chunk of samples at a time, each chunk
        # straight into its GEMM; backward gathers them again from the padded input.
        patches = channels_last_patches(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo), scratch)
        out = patches_times_weights(patches, W, b, scratch)
        source = patches
    y = out.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2)             # NHWC memory, NCHW view
    cache = (source if keep_cols else None, ones, W, x.shape, (sh, sw), (ph, pw), (dh, dw), (Ho, Wo))
    return y, cache


def patches_times_weights(patches, W, b, scratch=FRESH):
    """The GEMM of channels-last patches (N, Ho, Wo, kh, kw, C) with W (F, C, kh, kw) [+ bias]
    as (N*Ho*Wo, F), the patches copied out of their strided view a chunk of samples at a time,
    each chunk straight into its GEMM while it is in cache."""
    N, Ho, Wo, kh, kw, C = patches.shape
    F, K, ones = W.shape[0], C * kh * kw, 0 if b is None else 1
    W_T = with_bias(W.transpose(0, 2, 3, 1).reshape(F, K), b).T    # small copy, same (p, q, c) order
    spans = sample_spans(N, Ho * Wo)
    buf = patch_buffer((spans[0][1] - spans[0][0]) * Ho * Wo, K, ones, patches.dtype, scratch)
    out = np.empty((N * Ho * Wo, F), dtype=np.result_type(patches.dtype, W.dtype))
    for lo, hi in spans:
        rows = (hi - lo) * Ho * Wo
        np.copyto(buf[:rows, :K].reshape(hi - lo, Ho, Wo, kh, kw, C), patches[lo:hi])
        np.matmul(buf[:rows], W_T, out=out[lo * Ho * Wo:hi * Ho * Wo])
    return out


def shifted_applies(C, F, kernel, stride, padding, dilation) -> bool:
    """Whether a layer takes mpidl.ops.shifted's GEMMs over shifted rows instead of im2col: stride
    1, no dilation, a kernel of more than one offset, no more padding than its reach (so its
    input gradient is a correlation that takes the same path), and from FEW_CHANNELS to
    NARROW_CHANNELS channels in and at most NARROW_CHANNELS out."""
    (kh, kw), (ph, pw) = kernel, pair(padding)
    return (pair(stride) == (1, 1) and pair(dilation) == (1, 1) and kh * kw > 1 and 0 <= ph < kh
            and 0 <= pw < kw and FEW_CHANNELS <= C <= NARROW_CHANNELS and F <= NARROW_CHANNELS)


def correlation_applies(W_shape, stride, padding, dilation) -> bool:
    """Whether input_grad_by_correlation can give this layer's input gradient: stride 1, no more
    padding than the kernel's reach, and a kernel of more than one offset (a 1x1 col2im is
    already a single GEMM with nothing to scatter)."""
    kh, kw = W_shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    return (sh, sw) == (1, 1) and kh * kw > 1 and 0 <= ph <= dh * (kh - 1) and 0 <= pw <= dw * (kw - 1)


def input_grad_by_correlation(dy, W, padding, dilation, scratch=FRESH, padded_dy=None):
    """The input gradient of a stride-1 convolution as a convolution itself: dy, padded by the
    kernel's reach less the forward padding, correlated with W flipped and with its in and out
    channels swapped. The same multiply-adds as col2im, in one GEMM of K = kh*kw*F per chunk
    instead of kh*kw GEMMs of K = F, each followed by a strided add over the input gradient
    (1.9x faster on resnet20's 16-channel layers). Returns it as an NCHW view of NHWC memory,
    like conv2d_forward's output."""
    F, C, kh, kw = W.shape
    (ph, pw), (dh, dw) = pair(padding), pair(dilation)
    pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
    N, _, Ho, Wo = dy.shape
    H, Wd = Ho + 2 * pad[0] - dh * (kh - 1), Wo + 2 * pad[1] - dw * (kw - 1)
    flipped = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)              # (C, F, kh, kw)
    if shifted_applies(F, C, (kh, kw), 1, pad, (dh, dw)):
        # padded_dy: dy already laid out padded as shifted rows (a 'same' layer's, conv2d_backward)
        padded = padded_dy
        if padded is None:
            padded = PaddedRows(dy, pad, kw - 1, "padded_dy_rows", scratch, temporary=True)
        return shifted_forward(padded, flipped, None, (H, Wd), scratch).transpose(0, 3, 1, 2)
    patches = channels_last_patches(dy, (kh, kw), (1, 1), pad, (dh, dw), (H, Wd), scratch, temporary=True)
    return patches_times_weights(patches, flipped, None, scratch).reshape(N, H, Wd, C).transpose(0, 3, 1, 2)


def conv2d_backward(dy, cache, need_dx=True, need_db=True, scratch=FRESH):
    """Returns (dx, dW, db); dx is None when not needed, db None when there is no bias."""
    source, ones, W, x_shape, stride, padding, dilation, (Ho, Wo) = cache
    if source is None:
        raise RuntimeError("conv2d_backward: the forward pass ran without keeping its patches")
    N, C, H, Wd = x_shape
    F, _, kh, kw = W.shape
    if isinstance(source, PaddedRows):   # shifted rows (forward chose them; see shifted_applies)
        # A 'same' convolution pads dy for its input gradient by as much as forward padded x, so
        # dy laid on forward's grid for dW, read (a*Wp + b) rows earlier, is that padded dy.
        (ph, pw), Wp = padding, source.grid[2]
        a, b = kh - 1 - ph, kw - 1 - pw
        same = need_dx and 2 * a == kh - 1 and 2 * b == kw - 1
        dW, dy_rows = shifted_weight_grad(source, dy, (kh, kw), scratch, lead=a * Wp + b if same else 0)
        db = column_sums(dy.transpose(0, 2, 3, 1).reshape(-1, F)) if need_db else None
        padded_dy = PaddedRows.viewing(dy_rows, source.grid) if same else None
        dx = input_grad_by_correlation(dy, W, padding, dilation, scratch, padded_dy) if need_dx else None
        return dx, dW, db
    dy_mat = dy.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, F)  # a view when dy is channels-last
    K = C * kh * kw
    if C >= FEW_CHANNELS:
        by_correlation = need_dx and correlation_applies(W.shape, stride, padding, dilation)
        dx, dW, db = backward_by_chunks(lambda lo, hi: dy_mat[lo * Ho * Wo:hi * Ho * Wo], cache,
                                        need_dx and not by_correlation, need_db,
                                        np.result_type(dy.dtype, W.dtype), scratch)
        if by_correlation:
            dx = input_grad_by_correlation(dy, W, padding, dilation, scratch)
        return dx, dW, db
    # source is a transposed view of the (K [+1], N*Ho*Wo) patches: multiply in their own layout.
    grads = (source.T @ dy_mat).T                                   # (F, K [+1])
    dW = grads[:, :K].reshape(F, C, kh, kw)
    # With a bias, the forward's column of ones gave db from the weight-gradient GEMM.
    db = (grads[:, K] if ones else column_sums(dy_mat)) if need_db else None
    if not need_dx:
        return None, dW, db
    dx = InputGrad(W, x_shape, stride, padding, dilation, (Ho, Wo), N, grads.dtype)
    dx.add(0, N, dy_mat)
    return dx.result(), dW, db


def column_sums(m):
    """Column sums as a matrix-vector product: several times faster than sum(axis=0) on a tall matrix."""
    return np.ones(len(m), dtype=m.dtype) @ m


def backward_by_chunks(dy_rows, cache, need_dx, need_db, dtype, scratch=FRESH):
    """conv2d_backward on the channels-last path, given dy_rows(lo, hi): the output gradient of
    samples lo..hi as (rows, F) in (n, i, j) order. Chunk by chunk, as in forward: gather the
    patches again (from the small padded input), accumulate the weight gradient, and scatter
    this chunk's input gradient."""
    source, ones, W, x_shape, stride, padding, dilation, (Ho, Wo) = cache
    N, C, H, Wd = x_shape
    F, _, kh, kw = W.shape
    K = C * kh * kw
    spans = sample_spans(N, Ho * Wo)
    buf = patch_buffer((spans[0][1] - spans[0][0]) * Ho * Wo, K, ones, source.dtype, scratch)
    grads = np.zeros((F, K + ones), dtype=dtype)
    part = np.empty_like(grads)
    db = np.zeros(F, dtype=dtype) if need_db and not ones else None
    dx = InputGrad(W, x_shape, stride, padding, dilation, (Ho, Wo), spans[0][1] - spans[0][0], dtype) \
        if need_dx else None
    for lo, hi in spans:
        rows = (hi - lo) * Ho * Wo
        dy_part = dy_rows(lo, hi)
        np.copyto(buf[:rows, :K].reshape(hi - lo, Ho, Wo, kh, kw, C), source[lo:hi])
        np.matmul(dy_part.T, buf[:rows], out=part)
        grads += part
        if db is not None:
            db += column_sums(dy_part)
        if dx is not None:
            dx.add(lo, hi, dy_part)
    dW = grads[:, :K].reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    if need_db and ones:
        db = grads[:, K]
    return (None if dx is None else dx.result()), dW, db


class InputGrad:
    """col2im: the input gradient, accumulated chunk by chunk into a padded channels-last array.
    The patch gradients of kernel offset (p, q) are dy_part @ W[:, :, p, q], added onto a shifted
    slice of the padded gradient: one offset at a time into a small block, so the block and the
    slice it is added to stay in cache."""

    def __init__(self, W, x_shape, stride, padding, dilation, out_hw, chunk_samples, dtype):
        N, C, H, Wd = x_shape
        F, _, kh, kw = W.shape
        self.geometry = (kh, kw, C) + tuple(stride) + tuple(dilation) + tuple(out_hw)
        self.padding, self.size = padding, (H, Wd)
        self.W_offsets = np.ascontiguousarray(W.transpose(2, 3, 0, 1).reshape(kh * kw, F, C))
        self.dxp = np.zeros((N, H + 2 * padding[0], Wd + 2 * padding[1], C), dtype=dtype)
        self.block = np.empty((chunk_samples * out_hw[0] * out_hw[1], C), dtype=dtype)

    def add(self, lo, hi, dy_part):
        """dy_part: (rows, F) output gradient of samples lo..hi, rows in (n, i, j) order."""
        kh, kw, C, sh, sw, dh, dw, Ho, Wo = self.geometry
        block, target = self.block[:len(dy_part)], self.dxp[lo:hi]
        for p in range(kh):
            row_slice = _window_slices(p, dh, sh, Ho)
            for q in range(kw):
                np.matmul(dy_part, self.W_offsets[p * kw + q], out=block)
                target[:, row_slice, _window_slices(q, dw, sw, Wo), :] += block.reshape(hi - lo, Ho, Wo, C)

    def result(self):
        """The NCHW view of the input-sized part of the padded gradient."""
        (ph, pw), (H, Wd) = self.padding, self.size
        return self.dxp[:, ph:ph + H, pw:pw + Wd, :].transpose(0, 3, 1, 2)
