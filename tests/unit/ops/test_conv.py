"""Convolution, pooling, dropout and batch-norm kernels: backward against central finite
differences in float64 (along random directions, chainer's gradient_check style), and
forward plus every gradient against PyTorch in float32 and float64.

Tolerances: finite differences rtol 1e-6 (float64, eps 1e-6: truncation ~1e-12, rounding
~1e-10); PyTorch float64 within 1e-10 x the output scale, float32 within 2e-5 x scale
(both compute the same sums in a different order).
"""

import numpy as np
import pytest

from mpidl.ops import chunks, conv, pool, regularize as reg
from mpidl.ops.conv import (FEW_CHANNELS, InputGrad, conv2d_backward, conv2d_forward, correlation_applies,
                            output_size)

FD_EPS, FD_RTOL = 1e-6, 1e-6
TORCH_TOL = {np.float64: 1e-10, np.float32: 2e-5}


def directional_check(fn, grads_fn, inputs, rng):
    """fn(*inputs) -> y; grads_fn(dy) -> gradients w.r.t. every input. Compares
    <dy, J v> by central differences with sum_i <grad_i, v_i> for random dy and v."""
    y = fn(*inputs)
    dy = rng.normal(size=y.shape)
    grads = grads_fn(dy)
    directions = [rng.normal(size=a.shape) for a in inputs]
    plus = fn(*[a + FD_EPS * v for a, v in zip(inputs, directions)])
    minus = fn(*[a - FD_EPS * v for a, v in zip(inputs, directions)])
    numeric = float(np.sum(dy * (plus - minus)) / (2 * FD_EPS))
    analytic = float(sum(np.sum(g * v) for g, v in zip(grads, directions)))
    assert analytic == pytest.approx(numeric, rel=FD_RTOL, abs=1e-9), (analytic, numeric)


def random_conv_case(seed):
    rng = np.random.default_rng(seed)
    while True:
        k = tuple(rng.integers(1, 4, size=2))
        s, p, d = tuple(rng.integers(1, 3, size=2)), tuple(rng.integers(0, 3, size=2)), tuple(rng.integers(1, 3, size=2))
        H, W = rng.integers(4, 10, size=2)
        if output_size(H, k[0], s[0], p[0], d[0]) >= 1 and output_size(W, k[1], s[1], p[1], d[1]) >= 1:
            break
    # Both patch layouts: few input channels (gathered channels-first) and many (channels-last).
    N, F = rng.integers(1, 4), rng.integers(1, 5)
    C = rng.integers(1, 4) if seed % 3 else rng.integers(FEW_CHANNELS, FEW_CHANNELS + 3)
    return rng, (int(N), int(C), int(H), int(W)), (int(F), int(C), *map(int, k)), s, p, d


def channels_last(x):
    """The same values laid out NHWC in memory, as conv2d hands them on."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


# -- finite differences, float64 -------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_conv2d_gradients_match_finite_differences(seed):
    rng, xs, ws, s, p, d = random_conv_case(seed)
    x, W, b = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[0])

    def grads(dy):
        _, cache = conv2d_forward(x, W, b, s, p, d)
        return conv2d_backward(dy, cache)

    directional_check(lambda x, W, b: conv2d_forward(x, W, b, s, p, d)[0], grads, [x, W, b], rng)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel,stride,layout", [(2, None, "nchw"), (2, None, "nhwc"), (3, 2, "nchw"),
                                                   ((2, 3), (1, 2), "nhwc")])
def test_pooling_gradients_match_finite_differences(kind, kernel, stride, layout):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 8, 9))
    x = channels_last(x) if layout == "nhwc" else x
    fwd = pool.maxpool2d_forward if kind == "max" else pool.avgpool2d_forward
    bwd = pool.maxpool2d_backward if kind == "max" else pool.avgpool2d_backward
    directional_check(lambda x: fwd(x, kernel, stride)[0], lambda dy: [bwd(dy, fwd(x, kernel, stride)[1])],
                      [x], rng)


def test_global_avgpool_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 5, 6))
    directional_check(lambda x: pool.global_avgpool_forward(x)[0],
                      lambda dy: [pool.global_avgpool_backward(dy, x.shape)], [x], rng)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 6)])
def test_batchnorm_gradients_match_finite_differences(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape) * 2 + 1
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])

    def forward(x, gamma, beta):
        mean, var, _ = reg.batch_stats(x)
        return reg.batchnorm_forward(x, gamma, beta, mean, var, 1e-5)

    def grads(dy):
        y, cache = forward(x, gamma, beta)
        sums = reg.batchnorm_grad_sums(dy, cache)
        return reg.batchnorm_backward(dy, cache, sums, sums, x.size // x.shape[1])

    directional_check(lambda *a: forward(*a)[0], grads, [x, gamma, beta], rng)


def test_dropout_gradient_matches_finite_differences_with_fixed_mask():
    x = np.random.default_rng(4).normal(size=(6, 7))
    _, mask = reg.dropout_forward(x, 0.3, np.random.default_rng(9))
    directional_check(lambda x: reg.dropout_forward(x, 0.3, np.random.default_rng(9))[0],
                      lambda dy: [reg.dropout_backward(dy, mask)], [x], np.random.default_rng(5))


# -- PyTorch, float32 and float64 ------------------------------------------------------

def assert_close(ours, theirs, dtype, what):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert ours.dtype == dtype, f"{what}: {ours.dtype}"
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max()) / scale
    assert err <= TORCH_TOL[dtype], f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("narrow", [conv.NARROW_CHANNELS, 0], ids=["shifted-rows-where-they-apply", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(10))
def test_conv2d_matches_pytorch(seed, dtype, narrow, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(conv, "NARROW_CHANNELS", narrow)
    rng, xs, ws, s, p, d = random_conv_case(100 + seed)
    x, W, b = (rng.normal(size=sh).astype(dtype) for sh in (xs, ws, (ws[0],)))
    if seed % 2:
        x = channels_last(x)
    y, cache = conv2d_forward(x, W, b, s, p, d)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx, dW, db = conv2d_backward(dy, cache)
    tx, tW, tb = (torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in (x, W, b))
    ty = torch.nn.functional.conv2d(tx, tW, tb, stride=s, padding=p, dilation=d)
    ty.backward(torch.tensor(dy))
    for ours, theirs, what in ((y, ty, "y"), (dx, tx.grad, "dx"), (dW, tW.grad, "dW"), (db, tb.grad, "db")):
        assert_close(ours, theirs, dtype, what)


@pytest.mark.parametrize("narrow", [conv.NARROW_CHANNELS, 0], ids=["shifted-rows-where-they-apply", "im2col"])
@pytest.mark.parametrize("chunk_rows", [None, 50])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,padding,dilation", [(3, 1, 1), (3, 0, 1), (3, 2, 1), ((3, 2), (1, 0), 1),
                                                     (3, 2, 2), (3, (4, 1), 2), (2, 1, 1), ((1, 3), (0, 2), 1)])
def test_input_gradient_by_correlation_matches_pytorch_and_col2im(kernel, padding, dilation, dtype, chunk_rows,
                                                                   narrow, monkeypatch):
    """Stride-1 layers on the many-channel path take their input gradient as a correlation of
    dy with the flipped kernel: every padding up to the kernel's reach, dilations, non-square
    kernels, and chunks of samples that do not divide the batch (50 rows: 1 sample of 9x8);
    with these few channels on shifted rows where they apply (mpidl.ops.shifted) and on im2col."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(conv, "NARROW_CHANNELS", narrow)
    if chunk_rows is not None:
        monkeypatch.setattr(conv, "CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(11)
    F, C = 5, FEW_CHANNELS + 2
    kh, kw = conv.pair(kernel)
    x, W, b = (rng.normal(size=sh).astype(dtype) for sh in ((3, C, 9, 8), (F, C, kh, kw), (F,)))
    assert correlation_applies(W.shape, 1, padding, dilation)
    y, cache = conv2d_forward(channels_last(x), W, b, 1, padding, dilation)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx, dW, db = conv2d_backward(dy, cache)
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    torch.nn.functional.conv2d(tx, tW, tb, padding=conv.pair(padding), dilation=dilation).backward(torch.tensor(dy))
    for ours, theirs, what in ((dx, tx.grad, "dx"), (dW, tW.grad, "dW"), (db, tb.grad, "db")):
        assert_close(ours, theirs, dtype, what)
    col2im = InputGrad(W, x.shape, (1, 1), conv.pair(padding), conv.pair(dilation), y.shape[2:], 3, dtype)
    col2im.add(0, 3, np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(-1, F))
    assert_close(dx, col2im.result(), dtype, "dx against col2im")


@pytest.mark.parametrize("W_shape,stride,padding,dilation", [((4, 9, 3, 3), 2, 1, 1), ((4, 9, 1, 1), 1, 0, 1),
                                                             ((4, 9, 3, 3), 1, 3, 1), ((4, 9, 3, 3), (1, 2), 1, 1)])
def test_input_gradient_keeps_col2im_where_correlation_does_not_apply(W_shape, stride, padding, dilation):
    """Strided layers, 1x1 kernels and padding beyond the kernel's reach stay on col2im."""
    assert not correlation_applies(W_shape, stride, padding, dilation)


@pytest.mark.parametrize("channels", [3, FEW_CHANNELS + 1])
def test_conv2d_skips_input_gradient_when_not_needed(channels):
    rng = np.random.default_rng(7)
    x, W = rng.normal(size=(2, channels, 6, 6)), rng.normal(size=(4, channels, 3, 3))
    _, cache = conv2d_forward(x, W, None, 1, 1, 1)
    dy = rng.normal(size=(2, 4, 6, 6))
    dx, dW, db = conv2d_backward(dy, cache, need_dx=False, need_db=False)
    assert dx is None and db is None
    np.testing.assert_allclose(dW, conv2d_backward(dy, cache)[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), ((3, 2), (2, 1)), (2, 1)])
def test_pooling_matches_pytorch(kernel, stride, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(3, 4, 9, 8)).astype(dtype)
    x[0, 0, :2, :2] = 1.5  # a tie: the first maximum must win, as in PyTorch
    tF = torch.nn.functional
    for ours_f, ours_b, theirs in ((pool.maxpool2d_forward, pool.maxpool2d_backward, tF.max_pool2d),
                                   (pool.avgpool2d_forward, pool.avgpool2d_backward, tF.avg_pool2d)):
        for layout in (x, channels_last(x)):
            y, cache = ours_f(layout, kernel, stride)
            dy = rng.normal(size=y.shape).astype(dtype)
            tx = torch.tensor(x, requires_grad=True)
            ty = theirs(tx, kernel, stride)
            ty.backward(torch.tensor(dy))
            assert_close(y, ty, dtype, ours_f.__name__)
            assert_close(ours_b(dy, cache), tx.grad, dtype, ours_b.__name__)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avgpool_matches_pytorch(dtype, layout):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 5, 7, 3)).astype(dtype)
    if layout == "nhwc":
        x = channels_last(x)
    y, shape = pool.global_avgpool_forward(x)
    dy = rng.normal(size=y.shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, 1).flatten(1)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty, dtype, "y")
    dx = pool.global_avgpool_backward(dy, shape, channels_last=layout == "nhwc")
    assert_close(dx, tx.grad, dtype, "dx")
    # Handed on in the layout it came in (the layers below read it in memory order).
    assert chunks.channels_last(dx) == (layout == "nhwc") and chunks.channels_last(x) == (layout == "nhwc")


@pytest.mark.parametrize("chunk", [None, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,layout", [((32, 6), "nchw"), ((5, 4, 6, 7), "nchw"), ((5, 4, 6, 7), "nhwc")])
def test_batchnorm_layer_matches_pytorch_in_training_and_evaluation(shape, dtype, layout, chunk, monkeypatch):
    """Both memory layouts (channels-last: a convolution's output), dy in the other layout
    than x, and chunks of samples that do not divide the batch (chunk=40 elements: 1 sample
    of (4, 6, 7), 6 rows of (32, 6))."""
    if chunk is not None:
        monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", chunk)
    torch = pytest.importorskip("torch")
    from mpidl.nn import BatchNorm1d, BatchNorm2d
    from mpidl.params import ParamStore
    rng = np.random.default_rng(10)
    C = shape[1]
    layer = (BatchNorm1d if len(shape) == 2 else BatchNorm2d)(C, momentum=0.1)
    store = ParamStore(layer)
    store.allocate(dtype)
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    layer.gamma.data[...], layer.beta.data[...] = gamma, beta
    ref = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(C, momentum=0.1).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(gamma)), ref.bias.copy_(torch.tensor(beta))
    for step in range(3):  # running statistics accumulate over several batches
        x = (rng.normal(size=shape) * 3 + step).astype(dtype)
        dy = rng.normal(size=shape).astype(dtype)
        if layout == "nhwc":
            x = channels_last(x)
        elif len(shape) == 4:
            dy = channels_last(dy)
        store.zero_grad()
        y = layer.forward(x, train=True)
        assert chunks.channels_last(y) == (layout == "nhwc")
        dx = layer.backward(dy)
        tx = torch.tensor(x, requires_grad=True)
        ref.zero_grad()
        ty = ref(tx)
        ty.backward(torch.tensor(dy))
        assert_close(y, ty, dtype, "y")
        assert_close(dx, tx.grad, dtype, "dx")
        assert_close(layer.gamma.grad, ref.weight.grad, dtype, "dgamma")
        assert_close(layer.beta.grad, ref.bias.grad, dtype, "dbeta")
    assert_close(layer.running_mean.data, ref.running_mean, dtype, "running_mean")
    assert_close(layer.running_var.data, ref.running_var, dtype, "running_var")
    ref.eval()
    x = rng.normal(size=shape).astype(dtype)
    assert_close(layer.forward(x, train=False), ref(torch.tensor(x)), dtype, "evaluation output")


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), ((2, 3), (1, 2))])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_maxpool_with_fused_relu_equals_pool_then_relu(kernel, stride, layout):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 4, 8, 10)).astype(np.float32)
    x[0, 0, :2, :2] = 1.5       # a tie among positive values: the first still wins
    x[1, 1, :4, :4] = 0.0       # windows whose maximum is exactly 0: ReLU passes no gradient
    x[2, 2] = -np.abs(x[2, 2])  # a whole channel clipped
    x = channels_last(x) if layout == "nhwc" else x
    y_ref, cache_ref = pool.maxpool2d_forward(x, kernel, stride)
    y, cache = pool.maxpool2d_forward(x, kernel, stride, relu=True)
    np.testing.assert_array_equal(y, np.maximum(y_ref, 0))
    dy = rng.normal(size=y.shape).astype(np.float32)
    expected = pool.maxpool2d_backward(dy * (y_ref > 0), cache_ref)
    np.testing.assert_array_equal(pool.maxpool2d_backward(dy, cache), expected)


@pytest.mark.parametrize("chunk_rows", [1, 50, 10 ** 9])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_chunked_patches_give_the_same_result_for_any_chunk_size(monkeypatch, chunk_rows, bias):
    """The many-channel path gathers patches a few samples at a time: one sample per chunk,
    several with a ragged last chunk, and the whole batch at once must all agree with PyTorch."""
    torch = pytest.importorskip("torch")
    import mpidl.ops.conv as conv
    monkeypatch.setattr(conv, "CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(14)
    C = FEW_CHANNELS + 2
    x, W = rng.normal(size=(7, C, 6, 5)), rng.normal(size=(4, C, 3, 3))  # 30 rows per sample
    b = rng.normal(size=4) if bias else None
    y, cache = conv.conv2d_forward(channels_last(x), W, b, 1, 1, 1)
    dy = rng.normal(size=y.shape)
    dx, dW, db = conv.conv2d_backward(dy, cache)
    tx, tW = torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if bias else None
    ty = torch.nn.functional.conv2d(tx, tW, tb, padding=1)
    ty.backward(torch.tensor(dy))
    for ours, theirs, what in ((y, ty, "y"), (dx, tx.grad, "dx"), (dW, tW.grad, "dW")):
        assert_close(ours, theirs, np.float64, what)
    if bias:
        assert_close(db, tb.grad, np.float64, "db")
