"""The fused convolution + 2x2 max-pooling + ReLU kernel (mpidl.ops.convpool): backward
against central finite differences in float64, everything against PyTorch's
relu(max_pool2d(conv2d(x))) in float32 and float64 (tolerances as in test_conv.py),
ties resolved as PyTorch does, any chunk size, and reused working arrays."""

import numpy as np
import pytest

import mpidl.ops.conv as conv
import mpidl.ops.convpool as convpool
from mpidl.ops.conv import FEW_CHANNELS, output_size
from mpidl.ops.convpool import conv2d_pool_relu_backward, conv2d_pool_relu_forward
from mpidl.ops.scratch import Scratch

from .test_conv import assert_close, channels_last, directional_check


def random_case(seed):
    """Both patch paths (few and many channels), strides, paddings, dilations, and odd
    convolution outputs (whose last row or column the pooling drops)."""
    rng = np.random.default_rng(seed)
    while True:
        k = tuple(int(v) for v in rng.integers(1, 4, size=2))
        s, p, d = (tuple(int(v) for v in rng.integers(lo, hi, size=2)) for lo, hi in ((1, 3), (0, 3), (1, 3)))
        H, W = (int(v) for v in rng.integers(4, 11, size=2))
        if output_size(H, k[0], s[0], p[0], d[0]) >= 2 and output_size(W, k[1], s[1], p[1], d[1]) >= 2:
            break
    C = int(rng.integers(1, 4)) if seed % 2 else int(rng.integers(FEW_CHANNELS, FEW_CHANNELS + 3))
    N, F = int(rng.integers(1, 4)), int(rng.integers(1, 5))
    return rng, (N, C, H, W), (F, C, *k), s, p, d


def torch_reference(torch, x, W, b, s, p, d, dy):
    tF = torch.nn.functional
    tx, tW = torch.tensor(np.ascontiguousarray(x), requires_grad=True), torch.tensor(W, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    ty = tF.relu(tF.max_pool2d(tF.conv2d(tx, tW, tb, stride=s, padding=p, dilation=d), 2))
    ty.backward(torch.tensor(dy))
    return ty, tx.grad, tW.grad, None if b is None else tb.grad


@pytest.mark.parametrize("seed", range(8))
def test_fused_gradients_match_finite_differences(seed):
    rng, xs, ws, s, p, d = random_case(seed)
    x, W, b = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[0])

    def grads(dy):
        _, cache = conv2d_pool_relu_forward(x, W, b, s, p, d)
        return conv2d_pool_relu_backward(dy, cache)

    directional_check(lambda x, W, b: conv2d_pool_relu_forward(x, W, b, s, p, d)[0], grads, [x, W, b], rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(12))
def test_fused_matches_pytorch(seed, dtype):
    torch = pytest.importorskip("torch")
    rng, xs, ws, s, p, d = random_case(200 + seed)
    x, W = rng.normal(size=xs).astype(dtype), rng.normal(size=ws).astype(dtype)
    b = rng.normal(size=ws[0]).astype(dtype) if seed % 3 else None
    if seed % 4 == 1:
        x = channels_last(x)
    y, cache = conv2d_pool_relu_forward(x, W, b, s, p, d)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx, dW, db = conv2d_pool_relu_backward(dy, cache)
    ty, tdx, tdW, tdb = torch_reference(torch, x, W, b, s, p, d, dy)
    for ours, theirs, what in ((y, ty, "y"), (dx, tdx, "dx"), (dW, tdW, "dW")):
        assert_close(ours, theirs, dtype, what)
    if b is not None:
        assert_close(db, tdb, dtype, "db")


@pytest.mark.parametrize("channels", [1, FEW_CHANNELS])
def test_ties_and_clipped_windows_follow_pytorch(channels):
    """Flat regions (as on MNIST's black background) give exact ties in the pooling windows;
    the first maximum in (row, column) order takes the gradient, and windows whose maximum is
    not positive pass none (relu'(0) = 0)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, channels, 10, 10))
    x[:, :, :6, :6] = 0.0            # every window there sees the same value: the bias
    x[0, :, 6:, 6:] = 1.0
    W = rng.normal(size=(4, channels, 3, 3))
    for b in (np.array([0.5, -0.5, 0.0, 1.0]), None):
        y, cache = conv2d_pool_relu_forward(x, W, b, 1, 1)
        dy = rng.normal(size=y.shape)
        dx, dW, db = conv2d_pool_relu_backward(dy, cache)
        ty, tdx, tdW, tdb = torch_reference(torch, x, W, b, 1, 1, 1, dy)
        for ours, theirs, what in ((y, ty, "y"), (dx, tdx, "dx"), (dW, tdW, "dW")):
            assert_close(ours, theirs, np.float64, what)
        if b is not None:
            assert_close(db, tdb, np.float64, "db")


@pytest.mark.parametrize("chunk_rows", [1, 50, 10 ** 9])
@pytest.mark.parametrize("channels", [2, FEW_CHANNELS + 1])
def test_fused_gives_the_same_result_for_any_chunk_size(monkeypatch, chunk_rows, channels):
    rng = np.random.default_rng(9)
    x, W, b = rng.normal(size=(7, channels, 8, 6)), rng.normal(size=(3, channels, 3, 3)), rng.normal(size=3)
    y0, cache0 = conv2d_pool_relu_forward(x, W, b, 1, 1)
    dy = rng.normal(size=y0.shape)
    expected = (y0, *conv2d_pool_relu_backward(dy, cache0))
    monkeypatch.setattr(conv, "CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(convpool, "FEW_CHANNEL_CHUNK_ROWS", chunk_rows)
    y, cache = conv2d_pool_relu_forward(x, W, b, 1, 1)
    got = (y, *conv2d_pool_relu_backward(dy, cache))
    for ours, reference in zip(got, expected):
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [3, FEW_CHANNELS + 1])
def test_reused_working_arrays_leave_no_trace_between_calls(channels):
    """A Scratch hands the same arrays to the next call: the second input, with another
    padding border inside it, must give what fresh arrays give."""
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(4, channels, 3, 3)), rng.normal(size=4)
    scratch = Scratch()
    for _ in range(3):
        x = rng.normal(size=(5, channels, 8, 8)) + 2.0
        y, cache = conv2d_pool_relu_forward(x, W, b, 1, 1, scratch=scratch)
        dy = rng.normal(size=y.shape)
        got = (y.copy(), *conv2d_pool_relu_backward(dy, cache, scratch=scratch))
        y_fresh, cache_fresh = conv2d_pool_relu_forward(x, W, b, 1, 1)
        expected = (y_fresh, *conv2d_pool_relu_backward(dy, cache_fresh))
        for ours, reference in zip(got, expected):
            np.testing.assert_array_equal(ours, reference)


def test_input_gradient_and_bias_gradient_can_be_skipped():
    rng = np.random.default_rng(4)
    x, W = rng.normal(size=(2, 3, 6, 6)), rng.normal(size=(4, 3, 3, 3))
    y, cache = conv2d_pool_relu_forward(x, W, None, 1, 1)
    dy = rng.normal(size=y.shape)
    dx, dW, db = conv2d_pool_relu_backward(dy, cache, need_dx=False, need_db=False)
    assert dx is None and db is None
    np.testing.assert_allclose(dW, conv2d_pool_relu_backward(dy, cache)[1])


def test_clear_errors_for_outputs_too_small_to_pool_and_for_evaluation_caches():
    x, W = np.zeros((1, 1, 3, 3)), np.zeros((2, 1, 3, 3))
    with pytest.raises(ValueError, match="too small for 2x2 pooling"):
        conv2d_pool_relu_forward(x, W)
    with pytest.raises(ValueError, match="input has 1 channels, weight expects 2"):
        conv2d_pool_relu_forward(np.zeros((1, 1, 8, 8)), np.zeros((2, 2, 3, 3)))
    y, cache = conv2d_pool_relu_forward(np.zeros((1, 1, 8, 8)), W, keep_cols=False)
    with pytest.raises(RuntimeError, match="without keeping its patches"):
        conv2d_pool_relu_backward(np.zeros(y.shape), cache)


def test_scratch_reuses_an_array_only_for_the_same_name_shape_and_dtype():
    scratch = Scratch()
    a = scratch.empty("a", (2, 3), np.float32)
    assert scratch.empty("a", (2, 3), np.float32) is a
    assert scratch.empty("a", (3, 2), np.float32) is not a
    assert scratch.empty("b", (3, 2), np.float32) is not scratch.empty("a", (3, 2), np.float32)
    z = scratch.zeros_once("z", (4,), np.float64)
    assert not z.any()
    z[:] = 1
    assert scratch.zeros_once("z", (4,), np.float64) is z            # kept as the caller left it
    fresh = Scratch(keep=False)
    assert fresh.empty("a", (2,), np.float32) is not fresh.empty("a", (2,), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,padding,dilation,size,by_correlation", [
    (3, 1, 1, (8, 10), True), (3, 2, 1, (6, 6), True), (3, 2, 2, (8, 6), True), ((3, 2), (1, 0), 1, (8, 9), True),
    (3, 1, 1, (7, 8), False),                 # an odd output row the pooling drops: col2im
])
def test_fused_input_gradient_by_correlation_matches_pytorch(kernel, padding, dilation, size, by_correlation,
                                                             dtype, monkeypatch):
    """Many channels, stride 1: the input gradient is a correlation of the unpooled gradient
    with the flipped kernel, where the pooling reads the whole convolution output."""
    torch = pytest.importorskip("torch")
    calls = []
    monkeypatch.setattr(convpool, "input_grad_by_correlation",
                        lambda *a, **k: calls.append(1) or conv.input_grad_by_correlation(*a, **k))
    monkeypatch.setattr(conv, "CHUNK_ROWS", 50)          # several chunks of samples
    rng = np.random.default_rng(5)
    kh, kw = conv.pair(kernel)
    x = channels_last(rng.normal(size=(3, FEW_CHANNELS + 2, *size)).astype(dtype))
    W, b = rng.normal(size=(6, FEW_CHANNELS + 2, kh, kw)).astype(dtype), rng.normal(size=6).astype(dtype)
    y, cache = conv2d_pool_relu_forward(x, W, b, 1, padding, dilation)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx, dW, db = conv2d_pool_relu_backward(dy, cache)
    assert bool(calls) == by_correlation
    ty, tdx, tdW, tdb = torch_reference(torch, x, W, b, 1, conv.pair(padding), dilation, dy)
    for ours, theirs, what in ((y, ty, "y"), (dx, tdx, "dx"), (dW, tdW, "dW"), (db, tdb, "db")):
        assert_close(ours, theirs, dtype, what)
