"""Checkpoints through the command line: --resume skips a damaged checkpoint and ends bitwise on
the uninterrupted run, refuses another run's checkpoint, and the --expect-ranks guard."""

import os

import numpy as np

from mpidl.checkpoint import checkpoint_name, list_checkpoints
from support import run_train

TRAIN = ["--model", "mlp", "--hidden", "16", "--max-steps", "30", "--batch-size", "64", "--seed", "2",
         "--progress", "none"]


def _weights(out):
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        return z["params"]


def test_cli_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    """Through the command line: checkpoints every 10 steps, keep 2; damage the newest;
    --resume latest reports it, uses the older one, and ends bitwise on the uninterrupted run."""
    ck = str(tmp_path / "ck")
    full = run_train(1, [*TRAIN, "--out", str(tmp_path / "a"), "--checkpoint-dir", ck,
                         "--checkpoint-every", "10", "--keep-last", "2"], timeout=120)
    assert full.returncode == 0, full.stderr
    assert [s for s, _ in list_checkpoints(ck)] == [30, 20]  # pruned to two; 30 is the final one
    open(os.path.join(ck, checkpoint_name(30)), "r+b").truncate(1000)

    resumed = run_train(1, [*TRAIN, "--out", str(tmp_path / "b"), "--checkpoint-dir", ck,
                            "--resume", "latest"], timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "corrupt" in resumed.stderr and checkpoint_name(30) in resumed.stderr
    assert "resumed from" in resumed.stdout and checkpoint_name(20) in resumed.stdout
    assert np.array_equal(_weights(tmp_path / "b"), _weights(tmp_path / "a"))


def test_cli_refuses_a_checkpoint_of_another_run(tmp_path):
    ck = str(tmp_path / "ck")
    assert run_train(1, [*TRAIN, "--out", str(tmp_path / "a"), "--checkpoint-dir", ck]).returncode == 0
    other = run_train(1, [*TRAIN, "--lr", "0.5", "--out", str(tmp_path / "b"), "--checkpoint-dir", ck,
                          "--resume", "latest"])
    assert other.returncode == 2
    assert "different run" in other.stderr and "--lr" in other.stderr
    missing = run_train(1, [*TRAIN, "--out", str(tmp_path / "c"), "--checkpoint-dir", str(tmp_path / "none"),
                            "--resume", "latest"])
    assert missing.returncode == 2 and "no good checkpoint" in missing.stderr
    fresh = run_train(1, [*TRAIN, "--out", str(tmp_path / "d"), "--checkpoint-dir", str(tmp_path / "none"),
                          "--resume", "auto"])
    assert fresh.returncode == 0 and "starting from step 0" in fresh.stdout


def test_expect_ranks_guard(tmp_path):
    proc = run_train(1, [*TRAIN, "--out", str(tmp_path), "--expect-ranks", "2"])
    assert proc.returncode == 2
    assert "--expect-ranks 2: the MPI world has 1 rank(s)" in proc.stderr
