"""The sequence, attention, generative and SVM models: whole-model gradients against finite
differences (float64), the layers' plumbing, and short training runs on the built-in 8x8 digits."""

import numpy as np
import pytest

from mpidl.parallel.comm import SerialComm
from mpidl.cli import parse_config
from mpidl.nn import Sequential
from mpidl.models import build_model
from mpidl.params import ParamStore
from mpidl.nn import ImageRows, LearnedPositions, MeanOverTime, Recurrent, TransformerBlock
from mpidl.models.vae import VAE
from mpidl.trainer import Trainer


@pytest.fixture(autouse=True)
def one_blas_thread():
    # Small GEMMs on a busy machine run far slower with several BLAS threads.
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        yield


def _directional_grad_check(store, loss_and_backward, loss_only, rng, h=1e-6, rel_tol=1e-6):
    store.zero_grad()
    loss_and_backward()
    d = rng.standard_normal(store.size)
    analytic = float(store.grad @ d)
    p0 = store.data.copy()
    store.data[:] = p0 + h * d
    plus = loss_only()
    store.data[:] = p0 - h * d
    minus = loss_only()
    store.data[:] = p0
    numeric = (plus - minus) / (2 * h)
    assert abs(numeric - analytic) <= rel_tol * max(1.0, abs(analytic)), (numeric, analytic)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "transformer", "svm"])
def test_model_gradients_against_finite_differences(name):
    m = build_model(name, (1, 8, 8), 10, dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(5, 1, 8, 8)), rng.integers(0, 10, 5)
    _directional_grad_check(m.store, lambda: m.loss_and_backward(x, y),
                            lambda: m.loss_fn(m.forward(x, True), y)[0], rng)


def _small_vae(seed=3):
    vae = VAE((1, 4, 4), hidden=12, latent=3, rng=np.random.default_rng(0))
    store = ParamStore(vae)
    store.allocate(np.float64, np.random.default_rng(seed))
    return store, vae


def test_vae_gradient_includes_reparameterisation_and_kl():
    store, vae = _small_vae()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(6, 1, 4, 4))

    def loss(backward):
        vae.rng = np.random.default_rng(7)  # the same noise in every evaluation
        value, dlogits, _ = vae.objective(vae.forward(x), x)
        if backward:
            vae.backward(dlogits)
        return value

    _directional_grad_check(store, lambda: loss(True), lambda: loss(False), rng)


def test_vae_weighted_step_scales_the_whole_gradient():
    """A rank with a smaller share scales its gradient; the KL part must be scaled too."""
    m = build_model("vae", (1, 8, 8), 10, dtype=np.float64, seed=2)
    x = np.random.default_rng(1).uniform(size=(4, 1, 8, 8))
    grads = []
    for weight in (1.0, 0.25):
        m.net.rng = np.random.default_rng(5)
        m.store.zero_grad()
        m.loss_and_backward(x, None, weight=weight)
        grads.append(m.store.grad.copy())
    assert np.allclose(grads[1], 0.25 * grads[0], rtol=1e-12, atol=0)


def test_vae_reports_its_terms():
    m = build_model("vae", (1, 8, 8), 10, dtype=np.float32, seed=0)
    x = np.random.default_rng(1).uniform(size=(8, 1, 8, 8)).astype(np.float32)
    loss_sum, correct, recon_sum, kl_sum = m.evaluate_sums(x, None)
    assert m.term_names == ("recon_bce", "kl")
    assert np.isclose(loss_sum, recon_sum + kl_sum, rtol=1e-6)
    assert recon_sum > 0 and kl_sum >= 0 and np.isnan(correct)


def test_recurrent_many_to_many_and_learned_positions_layers():
    net = Sequential(ImageRows(), Recurrent("gru", 8, 5, return_sequences=True),
                     LearnedPositions(8, 5), TransformerBlock(5, 1, causal=True),
                     MeanOverTime())
    store = ParamStore(net)
    store.allocate(np.float64, np.random.default_rng(0))
    rng = np.random.default_rng(2)
    x, r = rng.uniform(size=(3, 1, 8, 8)), rng.standard_normal((3, 5))
    assert net.forward(x).shape == (3, 5)
    def forward_backward():
        net.forward(x)
        net.backward(r)

    _directional_grad_check(store, forward_backward, lambda: float((net.forward(x) * r).sum()), rng)


def _fit(args):
    trainer = Trainer.from_config(parse_config([*args, "--seed", "0"]), SerialComm())
    return trainer.train()


@pytest.mark.parametrize("args, min_accuracy", [
    (["--model", "rnn", "--epochs", "4"], 0.8),
    (["--model", "lstm", "--epochs", "4", "--lr", "5e-3"], 0.8),
    (["--model", "gru", "--epochs", "4", "--lr", "5e-3"], 0.8),
    (["--model", "transformer", "--epochs", "6", "--lr", "3e-3"], 0.75),
    (["--model", "svm", "--epochs", "3"], 0.85),
])
def test_sequence_and_svm_models_learn_digits(args, min_accuracy):
    history = _fit(args)
    assert history[-1].val_accuracy >= min_accuracy, [m.val_accuracy for m in history]


def test_vae_lowers_negative_elbo_every_epoch():
    history = _fit(["--model", "vae", "--epochs", "4"])
    losses = [m.val_loss for m in history]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0]
    for m in history:
        assert np.isclose(m.val_loss, m.val_terms["recon_bce"] + m.val_terms["kl"], rtol=1e-5)
