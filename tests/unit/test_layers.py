"""Every layer's and loss's backward against central finite differences in float64."""

import numpy as np
import pytest

from mpidl import losses
from mpidl.nn import Flatten, Linear, ReLU, Sequential, Sigmoid, Softmax, Tanh
from mpidl.params import ParamStore
from mpidl.init import he_normal, xavier_uniform

from gradcheck import directional_check, layer_check


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


def _loss_check(loss_fn, out, target, rng):
    _, grad = loss_fn(out, target)
    directional_check(lambda o: loss_fn(o, target)[0], [grad], [out], rng)


def test_softmax_cross_entropy(rng):
    logits = rng.normal(size=(8, 5)) * 4
    labels = rng.integers(0, 5, 8)
    _loss_check(losses.softmax_cross_entropy, logits, labels, rng)
    loss, _ = losses.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(8), labels]).mean(), rel=1e-12)


def test_cross_entropy_stable_for_huge_logits():
    loss, grad = losses.softmax_cross_entropy(np.array([[1000.0, 0.0], [0.0, -1000.0]]), np.array([0, 1]))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(500.0)


def test_mse(rng):
    _loss_check(losses.mse, rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), rng)
    loss, _ = losses.mse(np.array([[1.0], [3.0]]), np.array([0.0, 1.0]))
    assert loss == pytest.approx((1 + 4) / 2)


def test_binary_cross_entropy(rng):
    p = rng.uniform(0.05, 0.95, size=(6, 1))
    t = rng.integers(0, 2, size=6)
    _loss_check(losses.binary_cross_entropy, p, t, rng)
    _loss_check(losses.binary_cross_entropy_with_logits, rng.normal(size=(6, 1)) * 3, t, rng)
    z = rng.normal(size=(6, 1))
    a, _ = losses.binary_cross_entropy(1 / (1 + np.exp(-z)), t)
    b, _ = losses.binary_cross_entropy_with_logits(z, t)
    assert a == pytest.approx(b, rel=1e-10)


def test_initialisers_have_the_stated_variance():
    rng = np.random.default_rng(0)
    w = he_normal(rng, (400, 300))
    assert w.std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)
    u = xavier_uniform(rng, (400, 300))
    assert np.abs(u).max() <= np.sqrt(6 / 700)
    assert u.std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
