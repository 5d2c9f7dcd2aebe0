"""Model parallelism keeps the promise of data parallelism: every grid of tensor x pipeline x
data ranks that fits this world trains, in float64 for 20 steps, to the single-process weights
within 1e-10 (only summation order differs): the built-in mlp and transformer, a model of
your own through the public API, both pipeline schedules; checkpoints resume on another grid;
exported weights are the whole model."""

import os

import numpy as np
import pytest

import mpidl
from mpidl import nn
from mpidl.cli import parse_config
from mpidl.data import load_dataset
from mpidl.errors import ConfigError
from mpidl.parallel.comm import SerialComm, world
from mpidl.trainer import Trainer

REL_TOL = 1e-10


def grids(size):
    """Every (T, S) whose product divides the world, the data-parallel degree being the rest."""
    return [(t, s) for t in (1, 2, 4) for s in (1, 2, 4) if size % (t * s) == 0 and t * s <= size]


def _whole(trainer):
    """The trained weights in the single-process layout, on every rank."""
    comm = trainer.comm
    model = trainer.model
    size = model.whole_size if hasattr(model, "whole_size") else trainer.store.size
    whole = model.gather_whole(trainer.store.data) if hasattr(model, "gather_whole") else trainer.store.data.copy()
    buf = whole if comm.rank == 0 else np.empty(size, dtype=trainer.store.data.dtype)
    return comm.bcast_(np.ascontiguousarray(buf), root=0)


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def _train_cli(args, comm):
    t = Trainer.from_config(parse_config(args), comm)
    t.train()
    return _whole(t), t


CASES = {
    "mlp": ["--model", "mlp", "--hidden", "32,32", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "32"],
    "transformer": ["--model", "transformer", "--optimizer", "adam", "--lr", "0.003", "--batch-size", "16"],
}


@pytest.mark.mpi
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_grid_equals_one_process(name):
    comm = world()
    args = [*CASES[name], "--max-steps", "20", "--dtype", "float64", "--seed", "5"]
    reference, _ = _train_cli(args, SerialComm())
    for T, S in grids(comm.size):
        got, trainer = _train_cli([*args, "--tensor-parallel", str(T), "--pipeline-stages", str(S)], comm)
        err = _rel(got, reference)
        assert err <= REL_TOL, f"grid T={T} S={S} D={comm.size // (T * S)}: {err:.2e} from one process"
        if T * S > 1:  # each rank held only its part: the parts of one replica add up to the whole
            model = trainer.model  # model, with the layers that are not split once per tensor rank
            held = np.array([float(trainer.store.size)])
            model.grid.model.allreduce_sum_(held)
            replicated = sum(int(np.prod(shape)) for _, shape, _, _, split in model.whole if split is None)
            assert held[0] == model.whole_size + (T - 1) * replicated
            assert trainer.store.size < reference.size
    start = mpidl.models.build_model(parse_config(args).model, (1, 8, 8), 10,
                                     parse_config(args).model_options(), dtype="float64", seed=5)
    assert np.abs(start.store.data - reference).max() > 1e-3  # training moved the weights


class Gain(nn.Module):
    """A layer of the user's own, with a parameter: replicated by tensor parallelism."""

    def __init__(self, n):
        self.g = self.param("gain", (n,), "ones", decay=False)

    def forward(self, x, train=True):
        self._x = x
        return x * self.g.data

    def backward(self, dy):
        self.g.grad += (dy * self._x).sum(axis=0)
        return dy * self.g.data


def _user_net():
    return nn.Sequential(nn.Flatten(), Gain(64), nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 24), nn.ReLU(),
                         nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 10, init="xavier"))


@pytest.mark.mpi
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_a_user_model_through_the_trainer_equals_one_process(schedule):
    comm = world()
    d = load_dataset("digits")
    train, val = (d.x_train / 16.0, d.y_train), (d.x_val / 16.0, d.y_val)
    common = dict(dtype="float64", seed=4, max_steps=20, progress="none", batch_size=40, optimizer="sgd",
                  lr=0.1, momentum=0.9)
    single = mpidl.Trainer(_user_net(), train=train, val=val, comm=SerialComm(), **common)
    single.fit()
    reference = single.store.data
    for T, S in grids(comm.size):
        t = mpidl.Trainer(_user_net(), train=train, val=val, comm=comm, tensor_parallel=T, pipeline_stages=S,
                          pipeline_schedule=schedule, micro_batches=3, **common)
        history = t.fit()
        assert _rel(_whole(t), reference) <= REL_TOL, (T, S, schedule)
        # the reported metrics count every sample once, whatever the grid
        assert abs(history[-1].val_loss - single.history[-1].val_loss) < 1e-9


@pytest.mark.mpi
def test_a_checkpoint_resumes_on_another_grid():
    comm = world()
    if comm.size < 2:
        pytest.skip("needs two grids of the same world: 2 or more ranks")
    from support import shared_tmpdir
    folder = shared_tmpdir(comm)
    base = [*CASES["mlp"], "--dtype", "float64", "--seed", "6", "--checkpoint-dir", folder]
    reference, _ = _train_cli([*base[:-2], "--max-steps", "20"], SerialComm())
    first = Trainer.from_config(parse_config([*base, "--max-steps", "10", "--tensor-parallel", "2"]), comm)
    first.fit()
    second = Trainer.from_config(parse_config([*base, "--max-steps", "20", "--pipeline-stages", "2",
                                               "--resume", "latest"]), comm)
    assert second.resume() is not None
    assert second.global_step == 10
    second.train()
    assert _rel(_whole(second), reference) <= REL_TOL


@pytest.mark.mpi
def test_exported_weights_are_the_whole_model():
    comm = world()
    from support import shared_tmpdir
    out = os.path.join(shared_tmpdir(comm), "run")
    T = 2 if comm.size % 2 == 0 else 1
    args = [*CASES["mlp"], "--max-steps", "5", "--dtype", "float64", "--out", out, "--progress", "none",
            "--tensor-parallel", str(T), "--pipeline-stages", str(comm.size // T)]
    t = Trainer.from_config(parse_config(args), comm)
    t.fit()
    whole = _whole(t)
    if comm.rank == 0:
        loaded = mpidl.load(out)
        assert loaded.model.store.size == whole.size
        assert np.array_equal(loaded.model.store.data, whole)


@pytest.mark.mpi
def test_clear_errors_for_a_grid_or_layer_that_does_not_divide():
    comm = world()
    with pytest.raises(ConfigError, match="does not divide"):
        Trainer.from_config(parse_config(["--model", "mlp", "--tensor-parallel", "3", "--epochs", "1"]), comm)
    if comm.size >= 2:
        with pytest.raises(ConfigError, match="do not divide by 2"):
            Trainer.from_config(parse_config(["--model", "mlp", "--hidden", "33", "--tensor-parallel", "2",
                                              "--epochs", "1"]), comm)
        with pytest.raises(ConfigError, match="no pair of dense layers"):
            Trainer.from_config(parse_config(["--model", "logreg", "--tensor-parallel", "2", "--epochs", "1"]), comm)


@pytest.mark.mpi
def test_a_non_finite_gradient_on_one_shard_skips_the_step_on_every_rank():
    comm = world()
    if comm.size < 2:
        pytest.skip("needs two shards")
    args = [*CASES["mlp"], "--max-steps", "2", "--dtype", "float64", "--tensor-parallel", "2"]
    t = Trainer.from_config(parse_config(args), comm)
    before = t.store.data.copy()
    d = t.data
    t.dopt.zero_grad()
    t.model.loss_and_backward(d.inputs(d.x_train[:8], t.dtype), d.y_train[:8])
    if comm.rank == 1:
        t.store.grad[3] = np.nan  # only this shard sees it
    assert t.dopt.step(1e-3) is False
    assert np.array_equal(t.store.data, before)
