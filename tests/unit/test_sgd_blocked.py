"""SGD updates the flat buffer block by block; the result must be PyTorch's formula on the
whole buffer, across block boundaries and for every option."""

import numpy as np
import pytest

from mpidl.optim import SGD, SGD_BLOCK


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
