"""The sequence models train data-parallel like the MLP: N ranks on the same global batch end
with the weights of one process (float64, only summation order differs). The VAE draws its
noise per rank, so it cannot match one process; its ranks must still agree exactly."""

import hashlib

import numpy as np
import pytest

from mpidl.parallel.comm import SerialComm, world
from mpidl.cli import parse_config
from mpidl.trainer import Trainer

REL_TOL = 1e-10


def _train(args, comm):
    t = Trainer.from_config(parse_config([*args, "--dtype", "float64", "--seed", "5"]), comm)
    history = t.train()
    return t.store.data.copy(), history


@pytest.mark.mpi
@pytest.mark.parametrize("model, batch", [("lstm", 32), ("gru", 30), ("rnn", 32), ("transformer", 32),
                                          ("svm", 30)])
def test_sequence_models_n_ranks_equal_one_process(model, batch):
    args = ["--model", model, "--max-steps", "4", "--batch-size", str(batch), "--eval-batch-size", "500"]
    distributed, _ = _train(args, world())
    reference, _ = _train(args, SerialComm())
    err = np.abs(distributed - reference).max() / np.abs(reference).max()
    assert err <= REL_TOL, f"{world().size} ranks differ from 1 process by {err:.2e} (relative)"


@pytest.mark.mpi
def test_vae_ranks_stay_in_step_and_report_terms():
    comm = world()
    weights, history = _train(["--model", "vae", "--max-steps", "6", "--batch-size", "32"], comm)
    comm.check_same("VAE weights after training", hashlib.sha256(weights.tobytes()).digest())
    m = history[-1]
    assert m.val_accuracy is None
    assert set(m.val_terms) == {"recon_bce", "kl"}
    assert np.isclose(m.val_loss, m.val_terms["recon_bce"] + m.val_terms["kl"], rtol=1e-9)
