"""The basic layers (mpidl.nn.basic, Sequential): backward against central finite differences
in float64, gradients written or added, dropout's masks."""

import numpy as np
import pytest

from mpidl.nn import Flatten, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh
from mpidl.params import ParamStore

from gradcheck import layer_check


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _allocated(builder):
    layer = builder(None)
    store = ParamStore(layer)
    store.allocate(np.float64, np.random.default_rng(0))
    store.data[...] = np.random.default_rng(1).normal(size=store.size)  # biases non-zero too
    return store, layer


@pytest.mark.parametrize("batch_shape", [(7,), (3, 5)])
def test_linear(rng, batch_shape):
    store, layer = _allocated(lambda s: Linear(6, 4))
    layer_check(layer, rng.normal(size=(*batch_shape, 6)), rng, params=store.params)


def test_linear_matches_plain_formula(rng):
    store, layer = _allocated(lambda s: Linear(6, 4))
    x = rng.normal(size=(5, 6))
    np.testing.assert_allclose(layer.forward(x), x @ layer.W.data.T + layer.b.data, rtol=1e-12)


def test_linear_writes_into_a_zeroed_gradient_and_adds_otherwise(rng):
    """After zero_grad the first backward writes the weight gradient in place; later ones add,
    and without zero_grad nothing is assumed about what the gradient holds."""
    layer = Linear(5, 3)
    store = ParamStore(layer)
    store.allocate(np.float64, rng)
    x, dy = rng.normal(size=(4, 5)), rng.normal(size=(4, 3))
    one = dy.T @ x
    store.grad[...] = 7.0                       # stale values, not announced as zero
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.W.grad, 7.0 + one)
    store.zero_grad()
    assert layer.W.grad_is_zero
    for expected in (one, 2 * one):              # written, then added
        layer.forward(x)
        layer.backward(dy)
        np.testing.assert_allclose(layer.W.grad, expected)
        assert not layer.W.grad_is_zero
    store.grad[...] = 0
    store.mark_grads_zero()                      # as the trainer does after the optimiser zeroed them
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.W.grad, one)


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh, Softmax])
def test_activations(rng, cls):
    x = rng.normal(size=(6, 5)) * 3
    if cls is ReLU:  # keep away from the kink where the derivative does not exist
        x[np.abs(x) < 1e-3] = 0.5
    layer_check(cls(), x, rng)


def test_relu_keeps_a_boolean_mask_and_nothing_in_evaluation(rng):
    """ReLU keeps a quarter of its output's bytes for backward (a bool mask, not y), and in
    evaluation mode keeps nothing; both modes give the same output."""
    x = rng.normal(size=(8, 16)).astype(np.float32)
    layer = ReLU()
    y = layer.forward(x)
    assert layer._cache.dtype == bool and layer._cache.nbytes == y.nbytes // 4
    dy = rng.normal(size=y.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy), np.where(x > 0, dy, 0))
    np.testing.assert_array_equal(layer.forward(x, train=False), y)
    assert layer._cache is None


def test_linear_gives_dx_in_the_layout_of_its_input(rng):
    """A Linear after a ReLU after a Linear with fewer rows than outputs sees a transposed
    (Fortran-order) input; its dx takes that layout so ReLU's backward multiplies arrays of
    one order. Same values either way."""
    layer = Linear(6, 4)
    store = ParamStore(layer)
    store.allocate(np.float64, rng)
    x = rng.normal(size=(5, 6))
    dy = rng.normal(size=(5, 4))
    expected = dy @ layer.W.data
    for given in (x, np.asfortranarray(x)):
        layer.forward(given)
        dx = layer.backward(dy)
        np.testing.assert_allclose(dx, expected, rtol=1e-13)
        assert dx.flags.f_contiguous == (given.flags.f_contiguous and not given.flags.c_contiguous)


def test_sigmoid_is_stable_for_large_inputs():
    y = Sigmoid().forward(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(y, [0.0, 0.5, 1.0])


def test_sequential_with_flatten(rng):
    store, net = _allocated(lambda s: Sequential(Flatten(), Linear(12, 8), Tanh(), Linear(8, 3)))
    layer_check(net, rng.normal(size=(4, 3, 4)), rng, params=store.params)


def test_first_layer_can_skip_input_gradient(rng):
    store, layer = _allocated(lambda s: Linear(6, 4))
    layer.need_input_grad = False
    layer.forward(rng.normal(size=(3, 6)))
    assert layer.backward(np.ones((3, 4))) is None
    assert np.abs(layer.W.grad).sum() > 0


def test_dropout_layer_masks_from_rank_stream_and_is_off_in_evaluation():
    from mpidl.nn import Dropout
    x = np.ones((200, 50), dtype=np.float32)
    layer = Dropout(0.25, np.random.default_rng(0))
    y = layer.forward(x, train=True)
    assert y.dtype == np.float32
    kept = y != 0
    assert 0.72 < kept.mean() < 0.78                       # about 1 - p kept
    np.testing.assert_allclose(y[kept], 1 / 0.75)          # inverted: survivors scaled by 1/(1-p)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)
    again = Dropout(0.25, np.random.default_rng(0)).forward(x, train=True)
    np.testing.assert_array_equal(again, y)                # same seed, same mask
    other = Dropout(0.25, np.random.default_rng(1)).forward(x, train=True)
    assert (other != y).any()                              # another rank's stream differs
    assert layer.forward(x, train=False) is x
