"""Failures of one rank end or heal the whole job; the figures in the README's
"Failure behaviour" table come from these tests."""

import json
import os
import time

import pytest

from support import REPO, run_mpi

SCRIPT = os.path.join(REPO, "tests", "helpers", "scripts", "faulty_train.py")
BASE = ["--max-steps", "40", "--batch-size", "32", "--progress", "log"]


def _faulty(n, fault, rank, step, *args, out, timeout=120):
    t0 = time.perf_counter()
    proc = run_mpi(n, [SCRIPT, fault, str(rank), str(step), *BASE, "--out", str(out), *args], timeout=timeout)
    return proc, time.perf_counter() - t0


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("sync", [[], ["--zero", "1"], ["--bucket-mb", "0.01"]], ids=["plain", "zero", "buckets"])
def test_nan_on_one_rank_every_rank_skips_the_same_update(tmp_path, sync):
    # --check-every 1 --on-drift abort: had any rank applied the update, the replicas would
    # differ at the next check and the run would halt with status 3.
    proc, _ = _faulty(4, "nan", 2, 7, "--check-every", "1", "--on-drift", "abort", *sync, out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _summary(tmp_path)["skipped_steps"] == 1
    assert proc.stdout.count("non-finite loss or gradient at step 7") == 1


def test_nan_with_abort_policy_stops_all_ranks_with_one_message(tmp_path):
    proc, elapsed = _faulty(4, "nan", 1, 5, "--on-nonfinite", "abort", out=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stderr.count("non-finite loss or gradient at step 5") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("policy,code", [("repair", 0), ("abort", 3)])
def test_replica_drift_is_detected_at_the_next_check(tmp_path, policy, code):
    proc, _ = _faulty(2, "drift", 1, 6, "--check-every", "4", "--on-drift", policy, out=tmp_path)
    assert proc.returncode == code, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert text.count("drifted apart at step 8") == 1
    if policy == "repair":
        assert _summary(tmp_path)["drift_repairs"] == 1


def test_stalled_rank_trips_the_watchdog(tmp_path):
    proc, elapsed = _faulty(2, "stall", 1, 3, "--collective-timeout", "3", out=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert "[rank 0] mpidl: waited" in proc.stderr
    assert "in Allreduce(gradients) at step 3" in proc.stderr


def test_exception_mid_training_ends_every_rank_with_one_tagged_message(tmp_path):
    proc, elapsed = _faulty(4, "raise", 2, 5, out=tmp_path)
    assert proc.returncode != 0
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert proc.stderr.count("RuntimeError: injected failure at step 5") == 1
    assert "[rank 2] RuntimeError: injected failure" in proc.stderr


def test_a_rank_stopped_before_mpi_starts_ends_the_job_after_the_timeout():
    script = os.path.join(REPO, "tests", "helpers", "scripts", "stop_before_mpi.py")
    t0 = time.perf_counter()
    proc = run_mpi(2, [script, "3"], timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0 and "MPI started" not in proc.stdout
    assert "_start_mpi_or_exit_if_a_peer_rank_never_starts" in proc.stderr, proc.stderr[-2000:]
    assert elapsed < 20, elapsed


# -- the same guarantees when the model is split across ranks (model parallelism) ----------
def test_a_stalled_pipeline_stage_trips_the_watchdog_naming_the_receive(tmp_path):
    proc, elapsed = _faulty(2, "stall", 1, 3, "--pipeline-stages", "2", "--collective-timeout", "3",
                            out=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert "[rank 0] mpidl: waited" in proc.stderr
    assert "in Recv(gradients of micro-batch 1 from stage 2) in the pipeline group at step 3" in proc.stderr


def test_nan_on_one_tensor_shard_every_rank_skips_the_same_update(tmp_path):
    proc, _ = _faulty(4, "nan", 2, 7, "--tensor-parallel", "2", "--check-every", "1", "--on-drift", "abort",
                      out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _summary(tmp_path)["skipped_steps"] == 1


def test_an_exception_in_one_stage_ends_every_rank(tmp_path):
    proc, elapsed = _faulty(4, "raise", 3, 5, "--tensor-parallel", "2", "--pipeline-stages", "2", out=tmp_path)
    assert proc.returncode != 0
    assert elapsed < 20, f"took {elapsed:.1f}s"
    assert "[rank 3] RuntimeError: injected failure at step 5" in proc.stderr
