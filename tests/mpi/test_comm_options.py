"""Every communication option against the plain synchronous path (tests/mpi/test_equivalence.py
checks that path against one process). Expected values follow from rank and size only."""

import hashlib

import numpy as np
import pytest

from mpidl.parallel.comm import SerialComm, world
from mpidl.cli import parse_config
from mpidl.params import ParamStore
from mpidl.parallel.sync import BucketSync, HierarchicalSync
from mpidl.trainer import Trainer

# float64 runs where only the order of additions differs from the plain path.
EXACT_REL_TOL = 1e-10
# 16-bit gradients over 20 steps of plain SGD (lr 0.05) on the MLP: measured at 1, 2 and 4 ranks,
# at most 2.2e-5 (fp16) and 4.1e-4 (bf16) relative to the largest weight. Stronger optimisers
# (Adam, momentum, high lr) amplify the rounding into visibly different trajectories, so
# these runs are what isolates the communication error.
FP16_REL_TOL = 2e-4
BF16_REL_TOL = 3e-3

BASE = ["--model", "mlp", "--max-steps", "20", "--dtype", "float64", "--seed", "5"]
ADAM = ["--batch-size", "64", "--optimizer", "adam", "--lr", "0.01"]
# 30 does not divide by 4: uneven shares, and micro-batches of unequal size.
SGD_PLAIN = ["--batch-size", "64", "--optimizer", "sgd", "--lr", "0.05"]
SGD = ["--batch-size", "30", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--nesterov",
       "--weight-decay", "1e-3"]


def _train(args, comm):
    trainer = Trainer.from_config(parse_config(args), comm)
    trainer.train()
    return trainer


def _relative_error(args, options):
    comm = world()
    trainer = _train([*BASE, *args, *options], comm)
    reference = _train([*BASE, *args], SerialComm()).store.data
    return np.abs(trainer.store.data - reference).max() / np.abs(reference).max(), trainer


@pytest.mark.mpi
@pytest.mark.parametrize("args,options", [
    (ADAM, ["--bucket-mb", "0.001"]),
    (SGD, ["--bucket-mb", "0.001", "--overlap", "thread"]),
    (SGD, ["--accumulate", "3"]),
    (ADAM, ["--accumulate", "2", "--bucket-mb", "0.001"]),
    (ADAM, ["--zero", "1"]),
    (SGD, ["--zero", "1", "--accumulate", "2"]),
    (ADAM, ["--allreduce", "hierarchical"]),
], ids=["buckets", "buckets-thread", "accumulate", "accumulate-buckets", "zero-adam", "zero-sgd-accumulate",
        "hierarchical"])
def test_option_equals_plain_path(args, options, monkeypatch):
    # Two fake nodes of two ranks at size 4 (one node at sizes 1 and 2).
    monkeypatch.setenv("MPIDL_RANKS_PER_NODE", "2")
    err, trainer = _relative_error(args, options)
    assert err <= EXACT_REL_TOL, f"{options} on {world().size} rank(s): relative difference {err:.2e}"
    assert trainer.global_step == 20


@pytest.mark.mpi
@pytest.mark.parametrize("codec,tol", [("fp16", FP16_REL_TOL), ("bf16", BF16_REL_TOL)])
def test_16bit_gradients_stay_close_to_plain_path(codec, tol):
    err, trainer = _relative_error(SGD_PLAIN, ["--grad-compression", codec, "--bucket-mb", "0.001"])
    assert err <= tol, f"{codec}: relative difference {err:.2e}"
    assert err > 0, "16-bit rounding should change the result a little"
    assert trainer.sync.fallbacks == 0


@pytest.mark.mpi
@pytest.mark.parametrize("codec,unit_roundoff", [("fp16", 2.0 ** -11), ("bf16", 2.0 ** -8)])
def test_16bit_mean_is_within_a_few_roundings(codec, unit_roundoff):
    comm = world()
    values = np.random.default_rng([7, comm.rank]).normal(size=5000) * 1e-3
    exact = values.copy()
    comm.allreduce_mean_(exact)
    store = _one_param_store(values, np.float64)
    BucketSync(comm, store, net=None, bucket_bytes=None, codec=codec).finish()
    err = np.abs(store.grad - exact).max() / np.abs(exact).max()
    # one rounding on encoding, one per combining step (at most log2(4) = 2 here)
    assert 0 < err <= 4 * unit_roundoff, f"{codec}: {err:.2e}"


@pytest.mark.mpi
def test_zero_keeps_a_shard_of_optimizer_state():
    comm = world()
    trainer = _train([*BASE, *ADAM, "--max-steps", "1", "--zero", "1"], comm)
    shard = -(-trainer.store.size // comm.size)
    assert trainer.optimizer_state_bytes == 2 * shard * 8  # Adam's m and v, float64
    # and every rank ends with the same full parameter vector
    comm.check_same("parameters after ZeRO step", hashlib.sha256(trainer.store.data.tobytes()).digest())


@pytest.mark.mpi
def test_buckets_start_during_backward_in_the_same_order_everywhere():
    comm = world()
    trainer = _train([*BASE, *ADAM, "--max-steps", "2", "--bucket-mb", "0.001"], comm)
    sync = trainer.sync
    buckets = sync.buckets
    assert len(buckets) == 3  # fc3, fc2, fc1 of the 64-64 MLP: each over 1 KiB in float64
    # contiguous, from the end of the flat buffer to its start
    assert buckets[0][1] == trainer.store.size and buckets[-1][0] == 0
    assert all(a[0] == b[1] for a, b in zip(buckets, buckets[1:]))
    assert sync.last_order == [0, 1, 2]
    assert sync.last_started_early == 3  # every bucket left during backward, none waited for its end
    comm.check_same("bucket order", hashlib.sha256(repr((buckets, sync.last_order)).encode()).digest())


def _one_param_store(values, dtype=np.float32):
    store = ParamStore()
    store.add("w", (len(values),), lambda rng, shape: np.zeros(shape))
    store.allocate(dtype)
    store.grad[...] = values
    return store


@pytest.mark.mpi
def test_fp16_sum_cannot_overflow_and_falls_back_when_a_value_does():
    comm = world()
    # 60000 on every rank: a plain fp16 sum overflows (max 65504) from 2 ranks on.
    store = _one_param_store(np.full(100, 60000.0))
    sync = BucketSync(comm, store, net=None, bucket_bytes=None, codec="fp16")
    sync.finish()
    np.testing.assert_array_equal(store.grad, 60000.0)
    assert sync.fallbacks == 0
    # A gradient past fp16's range even after the 1/size pre-scale: redone in float32.
    values = np.arange(100.0)
    values[7] = 1e6 * (comm.rank + 1) * comm.size
    store = _one_param_store(values)
    sync = BucketSync(comm, store, net=None, bucket_bytes=None, codec="fp16")
    sync.finish()
    assert sync.fallbacks == 1
    expected = np.arange(100.0, dtype=np.float32)
    expected[7] = 1e6 * (comm.size + 1) / 2 * comm.size
    np.testing.assert_allclose(store.grad, expected, rtol=1e-6)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks_per_node", [None, 1, 2, 3])
def test_hierarchical_sum_matches_flat(ranks_per_node):
    comm = world()
    buf = np.arange(1000, dtype=np.float64) * (comm.rank + 1)
    comm.hierarchical_allreduce_sum_(buf, ranks_per_node)
    np.testing.assert_array_equal(buf, np.arange(1000) * comm.size * (comm.size + 1) / 2)
    if comm.size > 1 and ranks_per_node:
        node, leaders = comm.node_groups(ranks_per_node)
        assert node.Get_size() == min(ranks_per_node, comm.size - comm.rank // ranks_per_node * ranks_per_node)
        assert (leaders is not None) == (comm.rank % ranks_per_node == 0)
        if leaders is not None:
            assert leaders.Get_size() == -(-comm.size // ranks_per_node)
    store = _one_param_store(np.full(10, float(comm.rank)), np.float64)
    HierarchicalSync(comm, store, ranks_per_node).finish()
    np.testing.assert_array_equal(store.grad, (comm.size - 1) / 2)


@pytest.mark.mpi
def test_allreduce_auto_times_the_first_backward_then_every_rank_takes_the_same_reduction():
    comm = world()
    # 2.4 MB of float64 gradients: more than one bucket of 1 MiB
    err, trainer = _relative_error([*ADAM, "--hidden", "512,512"], ["--allreduce", "auto"])
    sync = trainer.sync
    if comm.size == 1:
        assert "one rank" in sync.chosen and not sync.predicted
    else:
        assert not sync.deciding, "the choice is made after step 1"
        # whole-buffer and bucketed candidates, with and without a 16-bit codec
        assert {"flat", "bf16", "fp16", "buckets 1 MiB", "bf16, buckets 1 MiB"} <= set(sync.predicted)
        assert "(timed in step 1)" in sync.chosen and " -> " in sync.chosen
        choice = sync.chosen.rsplit(" -> ", 1)[1]
        comm.check_same("auto's choice", hashlib.sha256(choice.encode()).digest())
        # shared memory is fast: a 16-bit codec costs more than the bytes it saves
        assert not choice.startswith(("bf16", "fp16")), sync.chosen
        assert err <= EXACT_REL_TOL, f"auto ({choice}) on {comm.size} ranks: relative difference {err:.2e}"
    assert trainer.global_step == 20
