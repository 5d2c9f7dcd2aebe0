"""Stride-1 convolutions of few channels with no patch matrix: GEMMs over shifted row ranges.

Lay a zero-padded channels-last input (N, Hp, Wp, C) out as N*Hp*Wp rows of C numbers, and
compute the output on the same padded grid: output row r = n*Hp*Wp + i*Wp + j. Then the input
that kernel offset (p, q) multiplies is row r + p*Wp + q, for every r at once: one contiguous
range of rows. The convolution is kh*kw GEMMs, each of a row range straight out of the padded
input's memory with W[:, :, p, q], summed. Nothing is gathered. The rows past the image (j >= Wo,
i >= Ho) are computed and dropped: (Hp*Wp)/(Ho*Wo) - 1 more multiply-adds, 13% for 3x3 at 32x32.

The weight gradient is the same sum turned around: for each offset the shifted row range of the
input, transposed, times the output gradient laid on the padded grid with zeros at the dropped
rows. The input gradient is a convolution of the padded output gradient (mpidl.ops.conv,
input_grad_by_correlation), so it takes this path too; for a 'same' convolution that padded
dy is the weight gradient's grid read a few rows earlier, so it needs no copy of its own
(1.3-1.6 ms of a 21-23 ms backward at 16 channels, 32x32, batch 128).

Where it pays: im2col copies the patches out of the input (kh*kw runs of C numbers per output
pixel), which for 16 channels costs about half of its GEMM's time; here there is no copy, but
kh*kw GEMMs of K = C, whose partial sums NumPy can only add up in passes over the chunk. Measured
one thread on resnet20's 16->16 3x3 layers (32x32, batch 128, Zen 4): forward 15-16 -> 12 ms,
weight gradient 16 -> 9-11 ms. With 32 or 64 channels the GEMMs of K = C lose what the copy
saved (forward 9-11 against 11-12 ms), so those keep im2col.
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.scratch import FRESH

# At most this many input and output channels: where shifted rows beat im2col (measured above).
NARROW_CHANNELS = 16
CHUNK_ROWS = 2048     # output rows per chunk in forward: a chunk's sums and inputs stay in cache
GRAD_CHUNK_ROWS = 1024  # rows per chunk of the weight gradient (1024: 9 ms, 2048: 11, 4096: 12)


class PaddedRows:
    """A zero-padded channels-last copy of x (N, C, H, W), held as rows of C numbers with
    `slack` zero rows after the last sample (the last output rows read that far)."""

    def __init__(self, x, padding, slack, name, scratch=FRESH, temporary=False):
        N, C, H, Wd = x.shape
        ph, pw = padding
        self.grid = (N, H + 2 * ph, Wd + 2 * pw)
        rows = N * self.grid[1] * self.grid[2]
        # Named by what decides the zero border, so that every layer sharing it writes the same part.
        name = f"{name}_{H}x{Wd}_{ph}_{pw}_{slack}"
        get = scratch.temp_zeros_once if temporary else scratch.zeros_once
        self.rows = get(name, (rows + slack, C), x.dtype)
        self.image()[:, ph:ph + H, pw:pw + Wd, :] = x.transpose(0, 2, 3, 1)

    @classmethod
    def viewing(cls, rows, grid) -> "PaddedRows":
        """Rows already laid out on a padded grid (with their slack), taken as they are."""
        self = cls.__new__(cls)
        self.rows, self.grid = rows, grid
        return self

    def image(self) -> np.ndarray:
        """The padded input as (N, Hp, Wp, C)."""
        N, Hp, Wp = self.grid
        return self.rows[:N * Hp * Wp].reshape(N, Hp, Wp, -1)


def shifted_forward(padded: PaddedRows, W, b, out_hw, scratch=FRESH):
    """y[n, i, j, :] = b + sum_{p, q} padded[n, i + p, j + q, :] @ W[:, :, p, q].T, as
    (N, Ho, Wo, F) (NHWC memory), a few samples of output rows at a time."""
    N, Hp, Wp = padded.grid
    F, C, kh, kw = W.shape
    Ho, Wo = out_hw
    per_sample = Hp * Wp
    W_offsets = np.ascontiguousarray(W.transpose(2, 3, 1, 0)).reshape(kh * kw, C, F)
    offsets = [p * Wp + q for p in range(kh) for q in range(kw)]
    step = max(1, CHUNK_ROWS // per_sample)
    dtype = np.result_type(padded.rows.dtype, W.dtype)
    total = scratch.temp("shifted_total", (step * per_sample, F), dtype)
    part = scratch.temp("shifted_part", (step * per_sample, F), dtype)
    out = np.empty((N, Ho, Wo, F), dtype=dtype)
    source = padded.rows
    for lo in range(0, N, step):
        hi = min(N, lo + step)
        # Up to the last sample's last output row: its rows past Ho are never read.
        rows, base = (hi - lo - 1) * per_sample + Ho * Wp, lo * per_sample
        acc, tmp = total[:rows], part[:rows]
        np.matmul(source[base + offsets[0]:base + offsets[0] + rows], W_offsets[0], out=acc)
        for k in range(1, kh * kw):
            np.matmul(source[base + offsets[k]:base + offsets[k] + rows], W_offsets[k], out=tmp)
            acc += tmp
        if b is not None:
            acc += b
        out[lo:hi] = total[:(hi - lo) * per_sample].reshape(hi - lo, Hp, Wp, F)[:, :Ho, :Wo]
    return out


def shifted_weight_grad(padded: PaddedRows, dy, kernel, scratch=FRESH, lead=0):
    """(dW, dy_rows): dW (F, C, kh, kw) of shifted_forward from dy (N, F, Ho, Wo), for each
    offset the shifted rows of the padded input, transposed, times dy laid on the padded grid
    (zeros where forward's dropped rows were). dy_rows is that grid as rows, after `lead` zero
    rows and before kw - 1 more: for a 'same' convolution it is also the padded dy that the
    input gradient's correlation reads, `lead` rows earlier (see conv2d_backward)."""
    N, Hp, Wp = padded.grid
    kh, kw = kernel
    F, (Ho, Wo) = dy.shape[1], dy.shape[2:]
    dtype = np.result_type(padded.rows.dtype, dy.dtype)
    dy_rows = scratch.temp_zeros_once(f"dy_on_grid_{Hp}x{Wp}_{Ho}x{Wo}_{lead}",
                                      (lead + N * Hp * Wp + kw - 1, F), dtype)
    on_grid = dy_rows[lead:lead + N * Hp * Wp]
    on_grid.reshape(N, Hp, Wp, F)[:, :Ho, :Wo] = dy.transpose(0, 2, 3, 1)
    offsets = [p * Wp + q for p in range(kh) for q in range(kw)]
    # The last row that holds an output: every shifted read below stays inside the padded input.
    rows = N * Hp * Wp - offsets[-1]
    source = padded.rows
    grads = np.zeros((kh * kw, F, source.shape[1]), dtype=dtype)
    part = np.empty(grads.shape[1:], dtype=dtype)
    for lo in range(0, rows, GRAD_CHUNK_ROWS):
        hi = min(rows, lo + GRAD_CHUNK_ROWS)
        dy_T = on_grid[lo:hi].T
        for k, off in enumerate(offsets):
            np.matmul(dy_T, source[lo + off:hi + off], out=part)
            grads[k] += part
    return grads.reshape(kh, kw, F, -1).transpose(2, 3, 0, 1), dy_rows
