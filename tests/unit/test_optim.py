"""Optimiser steps against values worked out by hand on tiny vectors; SGD, which updates the flat
buffer block by block, against PyTorch's formula on the whole buffer, across block boundaries
and for every option."""

import math

import numpy as np
import pytest

from mpidl.optim import SGD, SGD_BLOCK, Adam, Schedule, make_optimizer


def test_plain_sgd():
    p = np.array([1.0, -2.0])
    SGD(p).step(p, np.array([0.5, 1.0]), lr=0.1)
    np.testing.assert_allclose(p, [0.95, -2.1])


def test_sgd_momentum_two_steps():
    p = np.array([1.0])
    opt = SGD(p, momentum=0.9)
    opt.step(p, np.array([1.0]), lr=0.1)   # v = 1, p = 0.9
    opt.step(p, np.array([1.0]), lr=0.1)   # v = 1.9, p = 0.71
    np.testing.assert_allclose(p, [0.71])


def test_sgd_nesterov_two_steps():
    p = np.array([1.0])
    opt = SGD(p, momentum=0.9, nesterov=True)
    opt.step(p, np.array([1.0]), lr=0.1)   # v = 1,   p -= 0.1 * (1 + 0.9)      -> 0.81
    opt.step(p, np.array([1.0]), lr=0.1)   # v = 1.9, p -= 0.1 * (1 + 0.9*1.9) -> 0.539
    np.testing.assert_allclose(p, [0.539])


def test_sgd_weight_decay_respects_mask_and_leaves_grad_alone():
    p = np.array([2.0, 2.0])
    g = np.array([0.0, 0.0])
    SGD(p, decay_mask=np.array([1.0, 0.0]), weight_decay=0.5).step(p, g, lr=0.1)
    np.testing.assert_allclose(p, [1.9, 2.0])    # 2 - 0.1 * 0.5 * 2
    assert not g.any()


def test_adam_first_steps():
    # After bias correction the first Adam step is lr * sign(g) (up to eps).
    p = np.array([1.0, 1.0])
    opt = Adam(p, eps=0.0)
    opt.step(p, np.array([0.3, -4.0]), lr=0.01)
    np.testing.assert_allclose(p, [0.99, 1.01], rtol=1e-12)
    # second step, worked out: m = 0.1*g2 + 0.09*g1, v = 0.001*g2^2 + 0.000999*g1^2
    g1, g2 = 0.3, 0.1
    m = 0.1 * g2 + 0.9 * 0.1 * g1
    v = 0.001 * g2 ** 2 + 0.999 * 0.001 * g1 ** 2
    expected = 0.99 - 0.01 * (m / (1 - 0.9 ** 2)) / math.sqrt(v / (1 - 0.999 ** 2))
    opt.step(p, np.array([g2, 0.0]), lr=0.01)
    assert p[0] == pytest.approx(expected, rel=1e-12)


def test_adam_l2_versus_adamw_decoupled():
    g = np.array([0.0])
    p_l2 = np.array([2.0])
    Adam(p_l2, weight_decay=0.1, eps=0.0).step(p_l2, g, lr=0.01)
    np.testing.assert_allclose(p_l2, [1.99])         # L2 enters the moments: a sign step
    p_w = np.array([2.0])
    make_optimizer("adamw", p_w, None, weight_decay=0.1).step(p_w, g, lr=0.01)
    np.testing.assert_allclose(p_w, [2.0 - 0.01 * 0.1 * 2.0])   # decay only, no gradient


def _adam_four_and_two_steps(size, seed):
    """(gradients, weights after all four Adam steps, weights and optimiser after two)."""
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=size) for _ in range(4)]
    a = np.ones(size)
    opt_a = Adam(a)
    for g in grads:
        opt_a.step(a, g, 0.1)
    b = np.ones(size)
    opt_b = Adam(b)
    for g in grads[:2]:
        opt_b.step(b, g, 0.1)
    return grads, a, b, opt_b


def test_state_dict_round_trip_continues_identically():
    grads, a, b, opt_b = _adam_four_and_two_steps(4, 0)
    state = {k: np.array(v, copy=True) for k, v in opt_b.state_dict().items()}
    c = b.copy()
    opt_c = Adam(c)
    opt_c.load_state_dict(state)
    for g in grads[2:]:
        opt_c.step(c, g, 0.1)
    np.testing.assert_array_equal(a, c)


def test_schedules():
    s = Schedule(1.0, "constant", total_steps=10, warmup_steps=4)
    assert [s(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    s = Schedule(1.0, "step", total_steps=10, step_size=3, gamma=0.5)
    assert [s(i) for i in (0, 2, 3, 6, 9)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    s = Schedule(1.0, "cosine", total_steps=10)   # reaches 0 after the last step, like PyTorch's
    assert s(0) == 1.0 and s(5) == pytest.approx(0.5) and s(10) == pytest.approx(0.0)
    assert all(s(i) > s(i + 1) for i in range(10))


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2),
                                                  (0.5, False, 1e-3)])
def test_blocked_sgd_equals_formula_on_whole_buffer(momentum, nesterov, wd):
    rng = np.random.default_rng(0)
    n = 2 * SGD_BLOCK + 123  # three blocks, the last one partial
    data = rng.normal(size=n)
    mask = (rng.random(n) < 0.8).astype(np.float64)
    ref, v = data.copy(), np.zeros(n)
    opt = SGD(data, mask, wd, momentum=momentum, nesterov=nesterov)
    for step in range(3):
        grad = rng.normal(size=n)
        lr = 0.1 / (step + 1)
        opt.step(data, grad, lr)
        g = grad + wd * mask * ref
        if momentum:
            v = momentum * v + g
            ref -= lr * (g + momentum * v if nesterov else v)
        else:
            ref -= lr * g
    np.testing.assert_allclose(data, ref, rtol=1e-13, atol=1e-13)
    assert opt.steps == 3


@pytest.mark.parametrize("make", [lambda d, m: SGD(d, m, 1e-2, momentum=0.9),
                                  lambda d, m: __import__("mpidl.optim").optim.Adam(d, m, 1e-2)])
def test_zero_grad_after_the_update_changes_nothing_else(make):
    """zero_grad=True gives the same weights and state and leaves every gradient at zero,
    across block boundaries (as the trainer uses it instead of a separate zeroing pass)."""
    rng = np.random.default_rng(1)
    n = 2 * SGD_BLOCK + 77
    mask = (rng.random(n) < 0.8).astype(np.float64)
    start = rng.normal(size=n)
    plain_data, zeroing_data = start.copy(), start.copy()
    plain, zeroing = make(plain_data, mask), make(zeroing_data, mask)
    for step in range(3):
        grad = rng.normal(size=n)
        plain.step(plain_data, grad.copy(), 0.05)
        consumed = grad.copy()
        zeroing.step(zeroing_data, consumed, 0.05, zero_grad=True)
        assert not consumed.any()
    np.testing.assert_array_equal(zeroing_data, plain_data)
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(zeroing.state_dict()[key], value)


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
def test_blocked_adam_equals_the_textbook_formula_on_the_whole_buffer(wd, decoupled):
    """Adam keeps its moments as decaying sums and updates block by block; the weights and the
    moments m, v it implies follow Kingma & Ba's formula on the whole buffer (L2 or AdamW)."""
    from mpidl.optim import ADAM_BLOCK
    rng = np.random.default_rng(2)
    n = 2 * ADAM_BLOCK + 55
    data = rng.normal(size=n)
    mask = (rng.random(n) < 0.8).astype(np.float64)
    ref, m, v = data.copy(), np.zeros(n), np.zeros(n)
    b1, b2, eps = 0.8, 0.99, 1e-6
    opt = Adam(data, mask, wd, betas=(b1, b2), eps=eps, decoupled=decoupled)
    for t in range(1, 5):
        grad = rng.normal(size=n) * 10.0 ** -t
        lr = 0.01 * t
        opt.step(data, grad, lr)
        g = grad if decoupled else grad + wd * mask * ref
        if decoupled:
            ref -= lr * wd * mask * ref
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(data, ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(opt.m, m, rtol=1e-13, atol=1e-13 * np.abs(m).max())
    np.testing.assert_allclose(opt.v, v, rtol=1e-13)


def test_adam_takes_the_moments_of_an_older_checkpoint_and_refuses_betas_of_one():
    grads, a, b, opt_b = _adam_four_and_two_steps(6, 3)
    old_format = {"steps": np.array(2), "m": opt_b.m_sum * 0.1, "v": opt_b.v_sum * 0.001}
    opt_c = Adam(b)
    opt_c.load_state_dict(old_format)
    for g in grads[2:]:
        opt_c.step(b, g, 0.1)
    np.testing.assert_allclose(b, a, rtol=1e-14)
    with pytest.raises(ValueError, match=r"betas \(0.9, 1.0\)"):
        Adam(np.ones(2), betas=(0.9, 1.0))
