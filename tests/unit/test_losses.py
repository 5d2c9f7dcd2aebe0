"""Every loss's value and backward (mpidl.losses): against the formula and central finite
differences in float64."""

import numpy as np
import pytest

import gradcheck
from mpidl import losses
from mpidl.losses import gaussian_kl, multiclass_hinge


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


from gradcheck import named_directional_check as directional_check  # noqa: E402


def _loss_check(loss_fn, out, target, rng):
    _, grad = loss_fn(out, target)
    gradcheck.directional_check(lambda o: loss_fn(o, target)[0], [grad], [out], rng)


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


def test_hinge_loss():
    rng = np.random.default_rng(8)
    scores, labels = rng.standard_normal((7, 5)), rng.integers(0, 5, 7)
    loss, dscores = multiclass_hinge(scores, labels)
    # Weston-Watkins by its definition, one sample at a time.
    expected = np.mean([sum(max(0.0, 1 + s[j] - s[y]) for j in range(5) if j != y)
                        for s, y in zip(scores, labels)])
    assert np.isclose(loss, expected)
    directional_check(lambda scores: multiclass_hinge(scores, labels)[0], dict(scores=scores),
                      dict(scores=dscores), rng)


def test_gaussian_kl():
    rng = np.random.default_rng(9)
    mu, logvar = rng.standard_normal((4, 3)), 0.5 * rng.standard_normal((4, 3))
    loss, dmu, dlogvar = gaussian_kl(mu, logvar)
    assert gaussian_kl(np.zeros((2, 3)), np.zeros((2, 3)))[0] == 0  # the prior itself
    directional_check(lambda mu, logvar: gaussian_kl(mu, logvar)[0], dict(mu=mu, logvar=logvar),
                      dict(mu=dmu, logvar=dlogvar), rng)


def test_bce_stays_finite_when_a_float32_sigmoid_reaches_one():
    torch = pytest.importorskip("torch")
    prob = np.array([[1.0], [0.0], [0.5], [1.0 - 2 ** -24]], dtype=np.float32)
    target = np.array([0.0, 1.0, 1.0, 1.0])
    loss, grad = losses.binary_cross_entropy(prob, target)
    ref = torch.nn.functional.binary_cross_entropy(torch.from_numpy(prob), torch.from_numpy(target[:, None]).float())
    assert np.isfinite(loss) and np.isfinite(grad).all() and grad.dtype == np.float32
    assert loss == pytest.approx(float(ref), rel=1e-6)


def test_mse_gradient_keeps_the_predictions_dtype():
    pred = np.ones((4, 2), dtype=np.float32)
    _, grad = losses.mse(pred, np.zeros((4, 2), dtype=np.float64))
    assert grad.dtype == np.float32
