"""Equivalence through the public API: a model of your own trained in float64 on N ranks gives
the single-process weights within 1e-10, through Trainer, through DistributedOptimizer, and
through --model FILE.py:FUNCTION."""

import os

import numpy as np
import pytest

import mpidl
from mpidl import nn, optim
from mpidl.cli import parse_config
from mpidl.data import ShardedSampler, load_dataset
from mpidl.parallel.comm import SerialComm, world
from mpidl.trainer import Trainer

REL_TOL = 1e-10
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(),
                         nn.Linear(16, 10, init="xavier"))


def _arrays():
    d = load_dataset("digits")
    return (d.x_train / 16.0, d.y_train), (d.x_val / 16.0, d.y_val)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.mpi
@pytest.mark.parametrize("settings", [dict(batch_size=64), dict(batch_size=30, optimizer="sgd", lr=0.1, momentum=0.9)])
def test_trainer_with_a_user_model_equals_one_process(settings):
    train, val = _arrays()
    common = dict(dtype="float64", seed=4, max_steps=20, progress="none", **settings)
    distributed = mpidl.Trainer(_net(), train=train, val=val, comm=world(), **common)
    distributed.fit()
    single = mpidl.Trainer(_net(), train=train, val=val, comm=SerialComm(), **common)
    single.fit()
    assert _rel(distributed.store.data, single.store.data) <= REL_TOL
    assert [p.name for p in distributed.store.params][:2] == ["1.weight", "1.bias"]


def _hand_loop(comm, steps=20, batch=48):
    (x, y), _ = _arrays()
    model = mpidl.Model(_net(), loss="cross_entropy", dtype="float64", seed=7)
    dopt = mpidl.DistributedOptimizer(optim.Adam(model, lr=5e-3), model, comm)
    sampler = ShardedSampler(len(x), batch, comm.rank, comm.size, seed=7)
    done = 0
    for epoch in range(10):
        for step in sampler.epoch(epoch):
            dopt.zero_grad()
            model.loss_and_backward(x[step.indices], y[step.indices], step.weight)
            assert dopt.step()
            done += 1
            if done == steps:
                return model.store.data.copy()


@pytest.mark.mpi
def test_distributed_optimizer_loop_equals_one_process():
    assert _rel(_hand_loop(world()), _hand_loop(SerialComm())) <= REL_TOL


@pytest.mark.mpi
def test_factory_on_the_command_line_equals_one_process():
    args = ["--model", os.path.join(EXAMPLES, "my_models.py") + ":build", "--max-steps", "20", "--batch-size", "40",
            "--dtype", "float64", "--seed", "2", "--hidden", "24"]
    runs = []
    for comm in (world(), SerialComm()):
        t = Trainer.from_config(parse_config(args), comm)
        t.train()
        runs.append(t.store.data.copy())
    assert _rel(*runs) <= REL_TOL
    assert runs[0].size == 64 * 24 + 24 + 24 * 10 + 10


@pytest.mark.mpi
def test_batchnorm_running_statistics_never_cry_drift_but_a_real_drift_is_caught():
    comm = world()
    train, val = _arrays()
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    t = mpidl.Trainer(net, train=train, val=val, comm=comm, max_steps=30, check_every=5, progress="none",
                      dtype="float64")
    t.fit()
    assert t.drift_repairs == 0
    running = net[2].running_mean.data
    lo, hi = comm.allreduce_min_max(running.copy())
    np.testing.assert_array_equal(lo, hi)  # averaged over ranks at evaluation: one model everywhere
    if comm.size > 1:
        if comm.rank == comm.size - 1:
            net[1].W.data[0, 0] += 1e-3
        assert not t.check_replicas("repair") and t.drift_repairs == 1
        lo, hi = comm.allreduce_min_max(t.store.data.copy())
        np.testing.assert_array_equal(lo, hi)
