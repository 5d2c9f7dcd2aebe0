"""Resume is exact: stop a run mid-epoch, restore its checkpoint into a fresh Trainer, finish,
and the weights are bitwise those of the uninterrupted run, at every rank count.

Noise drawn from both per-rank generators (through the dataset's augmentation hook) makes
a wrongly restored random state show up in the weights.
"""

import os
import signal

import numpy as np
import pytest

from mpidl.checkpoint import (Checkpointer, check_compatible, newest_good, restore_checkpoint,
                              save_checkpoint)
from mpidl.parallel.guard import StopSignal
from mpidl.parallel.comm import SerialComm, world
from mpidl.cli import parse_config
from mpidl.trainer import Trainer

# 22 steps per epoch (1437 digits / 64); total 50 steps crosses two epoch boundaries.
BASE = ["--model", "mlp", "--max-steps", "50", "--batch-size", "64", "--seed", "7", "--hidden", "32",
        "--schedule", "cosine", "--warmup-steps", "5"]
OPTIMISERS = [
    ["--optimizer", "adam", "--lr", "0.01"],
    ["--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4"],
]


@pytest.fixture
def folder(tmp_path):
    """Rank 0's temporary folder on every rank: the checkpoint folder is part of the config,
    which must be identical across ranks (only rank 0 reads and writes it)."""
    path = world().allgather_bytes(str(tmp_path).encode(), width=1024)[0].rstrip(b"\0").decode()
    return type(tmp_path)(path)


def _noisy(trainer):
    """Augmentation that consumes both of this rank's random streams."""
    def augment(x, rng):
        return x + 0.05 * rng.standard_normal(x.shape, dtype=x.dtype) * trainer.model_rng.uniform()
    trainer.data.augment = augment
    return trainer


def _trainer(args, comm, folder, noisy=True):
    cfg = parse_config([*args, "--checkpoint-dir", str(folder)])
    t = Trainer.from_config(cfg, comm)
    return _noisy(t) if noisy else t


def _stop_at(step):
    def hook(trainer):
        if trainer.global_step == step:
            save_checkpoint(trainer, trainer.cfg.checkpoint_dir)
            trainer.stop_requested = True
    return hook


def _resume_and_finish(args, comm, folder, noisy=True):
    t = _trainer(args, comm, folder, noisy)
    found = None
    if comm.rank == 0:
        found = newest_good(str(folder))
        assert found is not None
        check_compatible(t, *found)
    restore_checkpoint(t, found[1] if found else None)
    t.train()
    return t


@pytest.mark.mpi
# stopped mid-epoch, on an epoch's last step, and just after a boundary
@pytest.mark.parametrize("opt,stop", [(OPTIMISERS[0], 9), (OPTIMISERS[1], 22), (OPTIMISERS[0], 30)],
                         ids=["adam-9", "sgd-22", "adam-30"])
def test_resume_is_bitwise_exact(folder, opt, stop):
    comm = world()
    args = [*BASE, *opt]
    whole = _trainer(args, comm, folder / "unused")
    whole.train()

    first = _trainer(args, comm, folder)
    first.train(on_step=_stop_at(stop))
    assert first.global_step == stop and first.stop_requested

    resumed = _resume_and_finish(args, comm, folder)
    assert resumed.global_step == whole.global_step == 50
    assert np.array_equal(resumed.store.data, whole.store.data), \
        f"{comm.size} ranks: resumed weights differ by {np.abs(resumed.store.data - whole.store.data).max():.3g}"
    for key, value in whole.optimizer.state_dict().items():
        assert np.array_equal(resumed.optimizer.state_dict()[key], value), key
    assert resumed.model_rng.bit_generator.state == whole.model_rng.bit_generator.state
    assert resumed.data_rng.bit_generator.state == whole.data_rng.bit_generator.state
    # and the run did learn something, so equality is not trivially about untouched weights
    assert np.abs(whole.store.data - _trainer(args, comm, folder).store.data).max() > 1e-3


@pytest.mark.mpi
def test_signal_on_one_rank_stops_all_at_the_same_step(folder):
    """SIGUSR1 reaching only the last rank still stops every rank after the same step, with one checkpoint."""
    comm = world()
    args = [*BASE, *OPTIMISERS[0], "--checkpoint-every", "1000"]
    cfg = parse_config([*args, "--checkpoint-dir", str(folder)])
    t = Trainer.from_config(cfg, comm)
    stop = StopSignal().install()
    try:
        ckpt = Checkpointer(cfg, stop)

        def on_step(trainer):
            if trainer.global_step == 13 and comm.rank == comm.size - 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            ckpt.on_step(trainer)

        t.train(on_step=on_step)
        ckpt.finish(t)  # the stop's checkpoint is written behind training: wait for it
    finally:
        stop.uninstall()
    steps = comm.allreduce_min_max(np.array([t.global_step]))
    assert steps[0][0] == steps[1][0] == 13
    assert ckpt.preempted and t.stop_requested
    if comm.rank == 0:
        assert [os.path.basename(p) for p in os.listdir(folder)] == ["ckpt-000000013.npz"]


@pytest.mark.mpi
def test_resume_with_another_rank_count(folder):
    """A checkpoint written by one process resumes on N ranks: same data order and global batch,
    so (without random augmentation) the weights match the uninterrupted run up to rounding."""
    comm = world()
    args = [*BASE, *OPTIMISERS[0], "--dtype", "float64"]
    _, err = _resumed_from_one_rank(args, comm, folder)
    assert err < 1e-10, f"{comm.size} ranks resumed from a 1-rank checkpoint differ by {err:.2e}"


def _resumed_from_one_rank(args, comm, folder):
    """(the uninterrupted one-process run, relative error of N ranks resumed at step 20 from
    that process's checkpoint)."""
    whole = _trainer(args, SerialComm(), folder / "unused", noisy=False)
    whole.train()
    if comm.rank == 0:
        single = _trainer(args, SerialComm(), folder / "one-rank", noisy=False)
        single.train(on_step=_stop_at(20))
    resumed = _resume_and_finish(args, comm, folder / "one-rank", noisy=False)
    return whole, np.abs(resumed.store.data - whole.store.data).max() / np.abs(whole.store.data).max()


@pytest.mark.mpi
@pytest.mark.parametrize("opt", OPTIMISERS, ids=["adam", "sgd"])
def test_zero_checkpoint_resumes_on_another_rank_count(folder, opt):
    """ZeRO-1 saves its sharded optimiser state gathered into the whole buffer's layout: a
    checkpoint written by one process resumes on N ranks (and the other way round), ending
    with the uninterrupted run's weights up to summation order."""
    comm = world()
    args = [*BASE, *opt, "--dtype", "float64", "--zero", "1"]
    whole, err = _resumed_from_one_rank(args, comm, folder)
    assert err < 1e-10, f"{comm.size} ZeRO ranks resumed from a 1-rank checkpoint differ by {err:.2e}"
    # and back: N ranks write, one process resumes
    many = folder / "n-ranks"
    first = _trainer(args, comm, many, noisy=False)
    first.train(on_step=_stop_at(20))
    if comm.rank == 0:
        back = _resume_and_finish(args, SerialComm(), many, noisy=False)
        err = np.abs(back.store.data - whole.store.data).max() / np.abs(whole.store.data).max()
        assert err < 1e-10, f"one process resumed from a {comm.size}-rank ZeRO checkpoint differs by {err:.2e}"
    comm.barrier()


@pytest.mark.mpi
@pytest.mark.parametrize("stop", [9, 22])
def test_resume_with_prefetch_is_bitwise_exact(folder, stop):
    """--prefetch 2: the loader thread has drawn augmentation noise for batches ahead of the
    checkpoint; the checkpoint records the data generator as of the step trained, so the
    resumed run draws the same noise."""
    comm = world()
    args = [*BASE, *OPTIMISERS[0], "--prefetch", "2"]

    def data_noise(t):  # augmentation drawing only from the data generator, as real augmentation does
        t.data.augment = lambda x, rng: x + 0.05 * rng.standard_normal(x.shape, dtype=x.dtype)
        return t

    whole = data_noise(_trainer(args, comm, folder / "unused", noisy=False))
    whole.train()
    first = data_noise(_trainer(args, comm, folder, noisy=False))
    first.train(on_step=_stop_at(stop))
    resumed = data_noise(_trainer(args, comm, folder, noisy=False))
    found = newest_good(str(folder)) if comm.rank == 0 else None
    restore_checkpoint(resumed, found[1] if found else None)
    resumed.train()
    assert np.array_equal(resumed.store.data, whole.store.data), \
        f"{comm.size} ranks, prefetch: resumed weights differ by {np.abs(resumed.store.data - whole.store.data).max():.3g}"
    assert resumed.data_rng_state() == whole.data_rng_state()


@pytest.mark.mpi
def test_resume_uses_the_normalisation_statistics_saved_in_the_checkpoint(folder):
    """--normalize statistics travel with the checkpoint: a resumed run uses the saved ones
    (even if refitting would give others) and finishes bitwise as the uninterrupted run."""
    comm = world()
    args = [*BASE, *OPTIMISERS[0], "--normalize", "standard"]
    whole = _trainer(args, comm, folder / "unused")
    whole.train()
    first = _trainer(args, comm, folder)
    first.train(on_step=_stop_at(17))
    resumed = _trainer(args, comm, folder)
    resumed.data.normalizer.shift = resumed.data.normalizer.shift + 1.0  # what a refit must not decide
    found = newest_good(str(folder)) if comm.rank == 0 else None
    restore_checkpoint(resumed, found[1] if found else None)
    np.testing.assert_array_equal(resumed.data.normalizer.shift, first.data.normalizer.shift)
    resumed.train()
    assert np.array_equal(resumed.store.data, whole.store.data)
