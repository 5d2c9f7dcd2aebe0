"""mpidl.Model skips only the first layer's input gradient, wherever that layer sits."""

import numpy as np

from mpidl import Model, nn


def _grads_after_one_step(net):
    model = Model(net, "cross_entropy", dtype="float64", seed=0)
    x = np.random.default_rng(0).normal(size=(4, 6))
    model.store.zero_grad()
    model.loss_and_backward(x, np.array([0, 1, 2, 0]))
    return {p.name: float(np.abs(p.grad).max()) for p in model.store.params if not p.buffer}


def test_nested_sequentials_get_every_gradient():
    # A stem block first: its Linear is the first parameterised layer, not the head.
    net = nn.Sequential({"stem": nn.Sequential(nn.Linear(6, 8), nn.Tanh()),
                         "body": nn.Sequential(nn.Linear(8, 8), nn.Tanh()), "head": nn.Linear(8, 3)})
    grads = _grads_after_one_step(net)
    assert all(g > 0 for g in grads.values()), grads
    assert net.layers[0].layers[0].need_input_grad is False and net.layers[2].need_input_grad is True


def test_a_residual_first_keeps_its_input_gradient():
    net = nn.Sequential(nn.Residual(nn.Sequential(nn.Linear(6, 6), nn.Tanh())), nn.Linear(6, 3))
    grads = _grads_after_one_step(net)
    assert all(g > 0 for g in grads.values()), grads
    assert net.layers[1].need_input_grad is True
