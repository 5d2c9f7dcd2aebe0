"""mpidl.testing's verdicts: check_module passes a right backward and catches one 1% wrong."""

import numpy as np

import mpidl
from mpidl import nn


class _WrongBackward(nn.Module):
    def __init__(self):
        self.W = self.param("weight", (3, 3), "he")

    def forward(self, x, train=True):
        self._x = x
        return x @ self.W.data.T

    def backward(self, dy):
        self.W.grad += dy.T @ self._x
        return 1.01 * dy @ self.W.data  # 1% off


def test_check_module_passes_a_right_backward_and_catches_a_wrong_one():
    x = np.random.default_rng(0).normal(size=(5, 3))
    good = mpidl.testing.check_module(nn.Linear(3, 3), x)
    assert good.worst < 1e-7, good
    bad = mpidl.testing.check_module(_WrongBackward(), x)
    assert bad.errors["input"] > 1e-3 and bad.errors["weight"] < 1e-7, bad
