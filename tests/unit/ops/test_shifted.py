"""Narrow stride-1 convolutions by GEMMs over shifted row ranges (mpidl.ops.shifted): forward and
both gradients against PyTorch (float32 within 2e-5, float64 within 1e-10 of the output's scale)
and against im2col, with chunks that do not divide the batch and arrays reused from a Scratch."""

import numpy as np
import pytest

from mpidl.ops import conv, shifted
from mpidl.ops.conv import FEW_CHANNELS, conv2d_backward, conv2d_forward, shifted_applies
from mpidl.ops.scratch import Scratch
from mpidl.ops.shifted import PaddedRows

TOL = {np.float64: 1e-10, np.float32: 2e-5}


def relative_error(ours, theirs):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    return float(np.abs(ours - theirs).max()) / max(1.0, float(np.abs(theirs).max()))


def channels_last(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


CASES = [  # (N, C, F, H, W, kernel, padding)
    (3, 16, 16, 9, 8, (3, 3), (1, 1)),
    (2, 8, 16, 7, 7, (3, 3), (0, 0)),
    (4, 12, 5, 6, 9, (2, 3), (1, 2)),
    (2, 16, 8, 8, 8, (5, 5), (2, 2)),
    (3, 9, 16, 5, 6, (3, 1), (2, 0)),
    (11, 16, 16, 4, 4, (3, 3), (1, 1)),   # several samples per chunk, the last chunk short
]


@pytest.mark.parametrize("chunks", ["default", "small"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_shifted_rows_match_pytorch_and_im2col(case, dtype, chunks, monkeypatch):
    torch = pytest.importorskip("torch")
    if chunks == "small":   # forward: one or a few samples a chunk; weight gradient: 37-row chunks
        monkeypatch.setattr(shifted, "CHUNK_ROWS", 150)
        monkeypatch.setattr(shifted, "GRAD_CHUNK_ROWS", 37)
    N, C, F, H, Wd, kernel, padding = case
    rng = np.random.default_rng(sum(case[:5]))
    x, W, b = (rng.normal(size=s).astype(dtype) for s in ((N, C, H, Wd), (F, C, *kernel), (F,)))
    assert shifted_applies(C, F, kernel, 1, padding, 1)
    y, cache = conv2d_forward(channels_last(x), W, b, 1, padding, 1)
    assert isinstance(cache[0], PaddedRows)   # the path under test ran
    dy = rng.normal(size=y.shape).astype(dtype)
    dx, dW, db = conv2d_backward(dy, cache)

    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    ty = torch.nn.functional.conv2d(tx, tW, tb, padding=padding)
    ty.backward(torch.tensor(dy))
    for ours, theirs, what in ((y, ty, "y"), (dx, tx.grad, "dx"), (dW, tW.grad, "dW"), (db, tb.grad, "db")):
        assert ours.dtype == dtype and ours.shape == tuple(theirs.shape), what
        assert relative_error(ours, theirs) <= TOL[dtype], what

    monkeypatch.setattr(conv, "NARROW_CHANNELS", 0)   # the same layer on im2col
    y2, cache2 = conv2d_forward(channels_last(x), W, b, 1, padding, 1)
    assert not isinstance(cache2[0], PaddedRows)
    for ours, theirs, what in zip((y, dx, dW, db), (y2, *conv2d_backward(dy, cache2)), ("y", "dx", "dW", "db")):
        assert relative_error(ours, theirs) <= TOL[dtype], f"{what} against im2col"


def test_reused_scratch_keeps_the_zero_border():
    """The padded copies come from a Scratch: a second batch must not see the first's values
    where the border should be zero."""
    rng = np.random.default_rng(3)
    W = rng.normal(size=(16, 16, 3, 3))
    scratch = Scratch()
    for _ in range(3):
        x = channels_last(rng.normal(size=(2, 16, 6, 5)))
        y, cache = conv2d_forward(x, W, None, 1, 1, 1, scratch=scratch)
        dy = rng.normal(size=y.shape)
        got = (y.copy(), *conv2d_backward(dy, cache, need_db=False, scratch=scratch)[:2])
        fresh_y, fresh_cache = conv2d_forward(x, W, None, 1, 1, 1)
        want = (fresh_y, *conv2d_backward(dy, fresh_cache, need_db=False)[:2])
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # evaluation in between, on a batch of another size: a temporary padded copy
        x_eval = channels_last(rng.normal(size=(3, 16, 6, 5)))
        y_eval, eval_cache = conv2d_forward(x_eval, W, None, 1, 1, 1, keep_cols=False, scratch=scratch)
        assert eval_cache[0] is None
        np.testing.assert_allclose(y_eval, conv2d_forward(x_eval, W, None, 1, 1, 1)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C,F,kernel,stride,padding,dilation", [
    (32, 32, (3, 3), 1, 1, 1),              # wide: im2col's GEMM wins
    (16, 32, (3, 3), 1, 1, 1),
    (FEW_CHANNELS - 1, 16, (3, 3), 1, 1, 1),  # few channels: the channels-first gather
    (16, 16, (3, 3), 2, 1, 1),              # strided
    (16, 16, (3, 3), 1, 2, 2),              # dilated
    (16, 16, (1, 1), 1, 0, 1),              # 1x1: one GEMM already
    (16, 16, (3, 3), 1, 3, 1),              # padding beyond the kernel's reach
])
def test_other_layers_keep_im2col(C, F, kernel, stride, padding, dilation):
    assert not shifted_applies(C, F, kernel, stride, padding, dilation)


def test_shifted_gradients_match_finite_differences():
    """float64, central differences along random directions: <dy, J v> against the gradients."""
    rng = np.random.default_rng(5)
    x, W, b = rng.normal(size=(2, 9, 5, 6)), rng.normal(size=(7, 9, 3, 2)), rng.normal(size=7)
    forward = lambda x, W, b: conv2d_forward(x, W, b, 1, (1, 1), 1)  # noqa: E731
    y, cache = forward(x, W, b)
    assert isinstance(cache[0], PaddedRows)
    dy = rng.normal(size=y.shape)
    grads = conv2d_backward(dy, cache)
    directions = [rng.normal(size=a.shape) for a in (x, W, b)]
    eps = 1e-6
    plus = forward(*[a + eps * v for a, v in zip((x, W, b), directions)])[0]
    minus = forward(*[a - eps * v for a, v in zip((x, W, b), directions)])[0]
    numeric = float(np.sum(dy * (plus - minus)) / (2 * eps))
    analytic = float(sum(np.sum(g * v) for g, v in zip(grads, directions)))
    assert analytic == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("kernel,padding", [((3, 3), (1, 1)), ((5, 3), (2, 1)), ((3, 3), (0, 1))])
def test_same_convolutions_read_the_padded_dy_off_the_weight_gradients_grid(kernel, padding):
    """For a 'same' convolution the input gradient reads dy where the weight gradient laid it,
    with no padded copy of its own: bit for bit what the correlation with its own copy gives.
    Other paddings take that copy."""
    from mpidl.ops.conv import input_grad_by_correlation
    rng = np.random.default_rng(2)
    x, W = channels_last(rng.normal(size=(3, 12, 7, 6))), rng.normal(size=(10, 12, *kernel))
    y, cache = conv2d_forward(x, W, None, 1, padding, 1)
    dy = channels_last(rng.normal(size=y.shape))
    dx, dW, _ = conv2d_backward(dy, cache, need_db=False)
    np.testing.assert_array_equal(dx, input_grad_by_correlation(dy, W, padding, 1))
    np.testing.assert_array_equal(dW, shifted.shifted_weight_grad(cache[0], dy, kernel)[0])
