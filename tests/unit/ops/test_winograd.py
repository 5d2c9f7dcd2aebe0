"""Winograd F(2x2, 3x3) convolution against the im2col convolution (mpidl.ops.conv) and PyTorch.

Every case runs forward and backward (dx, dW, db) and compares with the direct kernels and with
torch.nn.functional.conv2d + autograd. Errors are measured relative to the largest magnitude
of the reference array (max(1, |ref|.max())), as in test_conv.py.

Tolerances: float64 1e-10 (measured: ~2e-15; the transforms have entries 0, +-1, +-1/2).
float32 1e-5 against PyTorch in float64 on the same float32 inputs. Worst float32 errors seen
over test_matches_direct_and_pytorch (standard-normal data): y 3.3e-7, dx 4.1e-7, dW 7.7e-7,
db 2.7e-7; the im2col path's on the same cases: y 7.0e-7, dx 1.8e-7, dW 1.3e-6, db 1.4e-6.
F(2x2, 3x3) loses no precision that matters here (larger tiles such as F(4x4, 3x3) are known
to lose more; not used or tested here).
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpidl.ops.conv import conv2d_backward, conv2d_forward
from mpidl.ops.scratch import Scratch
from mpidl.ops.winograd import winograd_applies, winograd_conv2d_backward, winograd_conv2d_forward

TOL = {np.float64: 1e-10, np.float32: 1e-5}
SHAPES = [(2, 1, 28, 28, 32), (3, 32, 14, 14, 64), (2, 3, 32, 32, 32), (1, 4, 7, 9, 5)]


def rel_err(ours, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours.astype(np.float64) - ref).max()) / max(1.0, float(np.abs(ref).max()))


def channels_last(x):
    """The same values laid out NHWC in memory, as the convolutions hand them on."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def case(shape, dtype, seed, bias=True):
    N, C, H, W, F = shape
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    w = rng.normal(size=(F, C, 3, 3)).astype(dtype)
    b = rng.normal(size=F).astype(dtype) if bias else None
    return rng, x, w, b


def winograd(x, w, b, padding, dy_fn, need_dx=True, need_db=True, scratch=None):
    kw = {} if scratch is None else {"scratch": scratch}
    y, cache = winograd_conv2d_forward(x, w, b, padding, **kw)
    dy = dy_fn(y.shape)
    return (y, *winograd_conv2d_backward(dy, cache, need_dx, need_db, **kw)), dy


def torch_reference(x, w, b, padding, dy):
    """PyTorch in float64 from the same (possibly float32) inputs: y, dx, dW, db."""
    torch = pytest.importorskip("torch")
    tx, tw = (torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in (x, w))
    tb = None if b is None else torch.tensor(np.asarray(b, dtype=np.float64), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=padding)
    ty.backward(torch.tensor(np.asarray(dy, dtype=np.float64)))
    db = np.asarray(dy, dtype=np.float64).sum(axis=(0, 2, 3)) if tb is None else tb.grad.numpy()
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), db


# -- the brief's shapes, both paddings, with and without bias, both dtypes -------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_direct_and_pytorch(shape, padding, bias, dtype):
    rng, x, w, b = case(shape, dtype, seed=sum(shape) + padding, bias=bias)
    if shape[1] >= 8:
        x = channels_last(x)      # what a previous convolution hands on
    (y, dx, dW, db), dy = winograd(x, w, b, padding, lambda s: channels_last(rng.normal(size=s).astype(dtype)))
    for a in (y, dx, dW, db):
        assert a.dtype == dtype
    assert y.shape == (shape[0], shape[4], shape[2] + 2 * padding - 2, shape[3] + 2 * padding - 2)
    assert dx.shape == x.shape and dW.shape == w.shape and db.shape == (shape[4],)
    y0, cache0 = conv2d_forward(x, w, b, 1, padding, 1)
    direct = (y0, *conv2d_backward(dy, cache0))
    ref = torch_reference(x, w, b, padding, dy)
    for name, ours, d, r in zip(("y", "dx", "dW", "db"), (y, dx, dW, db), direct, ref):
        assert rel_err(ours, r) <= TOL[dtype], f"{name} vs torch: {rel_err(ours, r):.2e}"
        # The direct kernel carries its own rounding in float32: allow both errors.
        assert rel_err(ours, d) <= 2 * TOL[dtype], f"{name} vs direct: {rel_err(ours, d):.2e}"


@pytest.mark.parametrize("channels", [3, 16])
def test_skips_input_and_bias_gradients_when_not_needed(channels):
    rng, x, w, b = case((2, channels, 6, 7, 4), np.float64, seed=5)
    dy = rng.normal(size=(2, 4, 6, 7))
    _, cache = winograd_conv2d_forward(x, w, b, 1)
    dx, dW, db = winograd_conv2d_backward(dy, cache, need_dx=False, need_db=False)
    assert dx is None and db is None
    np.testing.assert_allclose(dW, winograd_conv2d_backward(dy, cache)[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dW, torch_reference(x, w, b, 1, dy)[2], rtol=1e-10, atol=1e-10)


def test_db_without_bias_is_the_sum_of_dy():
    rng, x, w, _ = case((2, 9, 5, 5, 3), np.float64, seed=6, bias=False)
    y, cache = winograd_conv2d_forward(x, w, None, 0)
    dy = rng.normal(size=y.shape)
    np.testing.assert_allclose(winograd_conv2d_backward(dy, cache)[2], dy.sum(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_any_dy_layout_and_dtype(layout):
    """dy in NCHW memory, or float32 dy on a float64 forward: copied, same numbers."""
    rng, x, w, b = case((2, 10, 8, 6, 5), np.float64, seed=7)
    y, cache = winograd_conv2d_forward(x, w, b, 1)
    dy = rng.normal(size=y.shape)
    dy = channels_last(dy) if layout == "nhwc" else np.ascontiguousarray(dy)
    ref = torch_reference(x, w, b, 1, dy)
    for ours, r in zip(winograd_conv2d_backward(dy, cache), ref[1:]):
        assert rel_err(ours, r) <= 1e-10
    dx32 = winograd_conv2d_backward(dy.astype(np.float32), cache)[0]
    assert dx32.dtype == np.float64 and rel_err(dx32, ref[1]) <= 1e-6


def test_reused_scratch_keeps_borders_zero():
    """The padded copy and the overlap-add images live in a Scratch across calls: a second call
    with other values (and the first one's cache being overwritten) gives the right numbers."""
    scratch = Scratch()
    for seed in (8, 9, 10):
        for shape in ((3, 12, 9, 7, 6), (2, 2, 5, 8, 3)):
            rng, x, w, b = case(shape, np.float64, seed)
            x = x * 10 + 5              # leftover values would be large
            (y, dx, dW, db), dy = winograd(x, w, b, 1, lambda s: rng.normal(size=s), scratch=scratch)
            for ours, r in zip((y, dx, dW, db), torch_reference(x, w, b, 1, dy)):
                assert rel_err(ours, r) <= 1e-10


def test_reused_scratch_across_geometries_with_the_same_buffer_shapes():
    """(H=7, padding 1) and (H=9, padding 0) pad to the same shape, output heights 13 and 14
    share a tile grid: the zero rows each needs must not hold the other's values."""
    for C in (3, 9):
        scratch = Scratch()
        for (H, padding) in ((7, 1), (9, 0), (7, 1), (13, 1), (14, 1), (13, 1)):
            rng, x, w, b = case((2, C, H, H, 4), np.float64, seed=H + C)
            x = x + 3
            dy_fn = lambda s: np.ascontiguousarray(rng.normal(size=s) + 3)    # NCHW: copied
            (y, dx, dW, db), dy = winograd(x, w, b, padding, dy_fn, scratch=scratch)
            for ours, r in zip((y, dx, dW, db), torch_reference(x, w, b, padding, dy)):
                assert rel_err(ours, r) <= 1e-10


@pytest.mark.parametrize("channels", [2, 9])
def test_small_chunks_and_transform_blocks_give_the_same_numbers(channels, monkeypatch):
    """Many chunks of samples with a shorter last one, and transform GEMMs split into column blocks."""
    from mpidl.ops import winograd as module
    monkeypatch.setattr(module, "CHUNK_TILES", 24)            # 2 samples of 12 tiles: chunks 2, 2, 1
    monkeypatch.setattr(module, "TRANSFORM_COLUMNS", 50)
    rng, x, w, b = case((5, channels, 6, 7, 4), np.float64, seed=13)
    (y, dx, dW, db), dy = winograd(x, w, b, 1, lambda s: rng.normal(size=s))
    for ours, r in zip((y, dx, dW, db), torch_reference(x, w, b, 1, dy)):
        assert rel_err(ours, r) <= 1e-10


def test_directional_derivative_matches_finite_differences():
    rng, x, w, b = case((2, 9, 5, 6, 3), np.float64, seed=11)
    y, cache = winograd_conv2d_forward(x, w, b, 1)
    dy = rng.normal(size=y.shape)
    grads = winograd_conv2d_backward(dy, cache)
    dirs = [rng.normal(size=a.shape) for a in (x, w, b)]
    eps = 1e-6
    f = lambda s: winograd_conv2d_forward(x + s * dirs[0], w + s * dirs[1], b + s * dirs[2], 1)[0]
    numeric = float(np.sum(dy * (f(eps) - f(-eps))) / (2 * eps))
    analytic = float(sum(np.sum(g * d) for g, d in zip(grads, dirs)))
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_eval_mode_keeps_no_cache():
    _, x, w, b = case((1, 2, 4, 4, 2), np.float64, seed=12)
    y, cache = winograd_conv2d_forward(x, w, b, 1, keep_cache=False)
    assert cache is None
    with pytest.raises(RuntimeError):
        winograd_conv2d_backward(np.ones_like(y), cache)


# -- applicability ------------------------------------------------------------------------------

def test_winograd_applies():
    assert winograd_applies((8, 4, 3, 3), 1, 1, 1)
    assert winograd_applies((8, 4, 3, 3), (1, 1), (0, 1), (1, 1))
    assert not winograd_applies((8, 4, 3, 3), 2, 1, 1)
    assert not winograd_applies((8, 4, 3, 3), 1, 2, 1)
    assert not winograd_applies((8, 4, 3, 3), 1, 1, 2)
    assert not winograd_applies((8, 4, 5, 5), 1, 1, 1)
    assert not winograd_applies((8, 4, 1, 3), 1, 1, 1)


def test_rejects_what_does_not_apply():
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(ValueError):
        winograd_conv2d_forward(x, np.zeros((3, 2, 5, 5)), None, 1)
    with pytest.raises(ValueError):
        winograd_conv2d_forward(x, np.zeros((3, 2, 3, 3)), None, 2)
    with pytest.raises(ValueError):
        winograd_conv2d_forward(x, np.zeros((3, 4, 3, 3)), None, 1)       # channel mismatch
    with pytest.raises(ValueError):
        winograd_conv2d_forward(np.zeros((1, 2, 2, 2)), np.zeros((3, 2, 3, 3)), None, 0)  # no output


# -- random small shapes -----------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 12), F=st.integers(1, 6), H=st.integers(1, 11),
       W=st.integers(1, 11), ph=st.integers(0, 1), pw=st.integers(0, 1), bias=st.booleans(),
       nhwc=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_direct(N, C, F, H, W, ph, pw, bias, nhwc, seed):
    H, W = max(H, 3 - 2 * ph), max(W, 3 - 2 * pw)   # at least one output pixel
    rng, x, w, b = case((N, C, H, W, F), np.float64, seed, bias)
    if nhwc:
        x = channels_last(x)
    (y, dx, dW, db), dy = winograd(x, w, b, (ph, pw), lambda s: rng.normal(size=s))
    y0, cache0 = conv2d_forward(x, w, b, 1, (ph, pw), 1)
    for ours, d in zip((y, dx, dW, db), (y0, *conv2d_backward(dy, cache0))):
        assert ours.shape == d.shape
        assert rel_err(ours, d) <= 1e-10


@pytest.mark.parametrize("channels", [2, 9])
def test_keeping_the_input_instead_of_its_transform_gives_the_same_numbers(channels, monkeypatch):
    """keep_cache='input' transforms x again in backward, chunk by chunk (here 2, 2, 1 samples),
    and must give exactly what keeping V does; the cache then holds no copy of x."""
    from mpidl.ops import winograd as module
    monkeypatch.setattr(module, "CHUNK_TILES", 24)
    rng, x, w, b = case((5, channels, 6, 7, 4), np.float64, seed=17)
    x = channels_last(x)
    runs = []
    for keep in (True, "input"):
        scratch = Scratch()
        y, cache = winograd_conv2d_forward(x, w, b, 1, scratch=scratch, keep_cache=keep)
        dy = np.cos(np.arange(y.size)).reshape(y.shape)
        runs.append((y, *winograd_conv2d_backward(dy, cache, scratch=scratch)))
        if keep == "input":
            assert cache[0] is x
    for ours, ref in zip(*runs):
        np.testing.assert_array_equal(ours, ref)
    with pytest.raises(ValueError, match="keep_cache"):
        winograd_conv2d_forward(x, w, b, 1, keep_cache="yes")


def torch_pool_relu_reference(x, w, b, padding, dy):
    """relu(max_pool2d(conv2d(x))) and its gradients in PyTorch float64."""
    torch = pytest.importorskip("torch")
    tx, tw = (torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in (x, w))
    tb = torch.tensor(np.asarray(b, dtype=np.float64), requires_grad=True)
    ty = torch.relu(torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(tx, tw, tb, padding=padding), 2))
    ty.backward(torch.tensor(np.asarray(dy, dtype=np.float64)))
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, padding", [((3, 32, 14, 14, 64), 1), ((2, 9, 8, 6, 5), 1), ((2, 16, 10, 8, 4), 0)])
@pytest.mark.parametrize("keep", [True, "input"])
def test_fused_pool_relu_matches_the_im2col_layer_and_pytorch(shape, padding, dtype, keep, monkeypatch):
    """Each 2x2 output tile is a pooling window: the Winograd conv-pool-ReLU gives what
    mpidl.ops.convpool and PyTorch's conv2d -> max_pool2d -> relu give (small chunks: 2 samples)."""
    from mpidl.ops import winograd as module
    from mpidl.ops.convpool import conv2d_pool_relu_backward, conv2d_pool_relu_forward
    monkeypatch.setattr(module, "CHUNK_TILES", 2 * ((shape[2] + 2 * padding - 2) // 2) ** 2)
    rng, x, w, b = case(shape, dtype, seed=21)
    x = channels_last(x)
    y, cache = module.winograd_conv2d_pool_relu_forward(x, w, b, padding, scratch=Scratch(), keep_cache=keep)
    dy = rng.normal(size=y.shape).astype(dtype)
    ours = (y, *winograd_conv2d_backward(dy, cache))
    y2, cache2 = conv2d_pool_relu_forward(x, w, b, 1, padding, 1)
    direct = (y2, *conv2d_pool_relu_backward(dy, cache2))
    for a, d, r in zip(ours, direct, torch_pool_relu_reference(x, w, b, padding, dy)):
        assert a.dtype == dtype and a.shape == r.shape
        assert rel_err(a, r) <= TOL[dtype]
        assert rel_err(a, d) <= TOL[dtype]


def test_fused_pool_relu_applies_only_to_even_outputs_with_channels():
    from mpidl.ops.winograd import winograd_conv2d_pool_relu_forward, winograd_pool_applies
    assert winograd_pool_applies((2, 16, 14, 14), (8, 16, 3, 3), 1)
    assert not winograd_pool_applies((2, 16, 7, 14), (8, 16, 3, 3), 1)      # odd output height
    assert not winograd_pool_applies((2, 3, 14, 14), (8, 3, 3, 3), 1)       # few channels
    assert not winograd_pool_applies((2, 16, 14, 14), (8, 16, 5, 5), 2)
    with pytest.raises(ValueError, match="even output size"):
        winograd_conv2d_pool_relu_forward(np.zeros((1, 16, 7, 7)), np.zeros((4, 16, 3, 3)))
