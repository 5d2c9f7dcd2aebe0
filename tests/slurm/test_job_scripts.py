"""The scripts in jobs/ submitted with sbatch to a real one-node SLURM started by the test.

Skipped only where the machine cannot run SLURM (not root, or slurm-wlm/munge missing); with
CI=true those are failures, since CI installs them.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import numpy as np
import pytest

from slurm_cluster import LocalSlurm, missing_requirements
from support import REPO

pytestmark = pytest.mark.slurm
JOBS = os.path.join(REPO, "jobs")
SMALL = ["--model", "mlp", "--hidden", "32", "--batch-size", "64"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = missing_requirements()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the SLURM tests, but {why}")
        pytest.skip(f"cannot run a local SLURM here: {why}")
    cluster = LocalSlurm(str(tmp_path_factory.mktemp("slurm"))).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jobs"))


def _job_env(workdir, **extra) -> dict:
    """How a job finds this Python: its virtualenv, or this interpreter's folder on PATH."""
    in_venv = sys.prefix != sys.base_prefix
    env = {"MPIDL_VENV": sys.prefix if in_venv else "", "MPIDL_RUNS": os.path.join(workdir, "runs"),
           "PYTHONPATH": REPO, "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    if not in_venv:
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env.update(extra)
    return env


def _log(workdir, name) -> str:
    path = os.path.join(workdir, name)
    return open(path, errors="replace").read() if os.path.exists(path) else f"(no log {name})"


def _summary(run_dir) -> dict:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def _weights(run_dir) -> np.ndarray:
    with np.load(os.path.join(run_dir, "weights.npz"), allow_pickle=False) as z:
        return z["params"]


@pytest.fixture(scope="module")
def batch(slurm, workdir):
    """Submit the independent jobs together (they fit side by side on the 8 declared CPUs)."""
    sweep_file = os.path.join(workdir, "sweep.txt")
    with open(sweep_file, "w") as f:
        f.write("# three learning rates\n--lr 0.001\n\n--lr 0.003\n--lr 0.01 --optimizer sgd --momentum 0.9\n")
    jobs = {
        "srun": slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=3"],
                             [*SMALL, "--epochs", "2"], cwd=workdir, **_job_env(workdir)),
        "mpiexec": slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=2"],
                                [*SMALL, "--epochs", "2"], cwd=workdir,
                                **_job_env(workdir, MPIDL_LAUNCHER="mpiexec")),
        # the classic mistake: srun without an MPI plugin starts one-rank worlds
        "singletons": slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=2"],
                                   [*SMALL, "--epochs", "1"], cwd=workdir,
                                   **_job_env(workdir, MPIDL_SRUN_MPI="none")),
        # your own model by its factory, and your own script in place of mpidl.train
        "factory": slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=2"],
                                ["--model", os.path.join(REPO, "examples", "my_models.py") + ":build",
                                 "--epochs", "2"], cwd=workdir, **_job_env(workdir)),
        "program": slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=2"], [], cwd=workdir,
                                **_job_env(workdir, MPIDL_PROGRAM=os.path.join(REPO, "examples", "own_loop.py"))),
        "novenv": slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=1"], [*SMALL], cwd=workdir,
                               **_job_env(workdir, MPIDL_VENV=os.path.join(workdir, "no-such-venv"))),
        "sweep": slurm.sbatch(os.path.join(JOBS, "sweep.sbatch"), ["--array=0-2", "--ntasks-per-node=1"],
                              [sweep_file, *SMALL, "--max-steps", "15"], cwd=workdir, **_job_env(workdir)),
    }
    return jobs


@pytest.mark.parametrize("launcher,ranks", [("srun", 3), ("mpiexec", 2)])
def test_train_script(slurm, workdir, batch, launcher, ranks):
    job = batch[launcher]
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-train-{job}.out")
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    run_dir = os.path.join(workdir, "runs", f"mpidl-train-{job}")
    summary = _summary(run_dir)
    assert summary["world_size"] == ranks, log  # one world of all requested tasks
    assert summary["blas_threads_per_rank"] == 1  # from SLURM_CPUS_PER_TASK
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["val_accuracy"] > 0.5, metrics


def test_your_own_model_and_your_own_script_run_as_jobs(slurm, workdir, batch):
    job = batch["factory"]
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-train-{job}.out")
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    summary = _summary(os.path.join(workdir, "runs", f"mpidl-train-{job}"))
    assert summary["world_size"] == 2 and summary["val_accuracy"] > 0.5, log
    job = batch["program"]
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-train-{job}.out")
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    (accuracy,) = [float(line.split()[-1]) for line in log.splitlines() if line.startswith("own_loop:")]
    assert accuracy > 0.9, log


def test_a_missing_venv_is_one_line_naming_the_setting(slurm, workdir, batch):
    job = batch["novenv"]
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-train-{job}.out")
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "2:0", log
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "no virtualenv at" in errors[0] and "MPIDL_VENV=" in errors[0], log


def test_guard_catches_one_rank_worlds(slurm, workdir, batch):
    job = batch["singletons"]
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-train-{job}.out")
    # Every task exits 2; srun --kill-on-bad-exit may terminate a sibling first after the
    # first exit (then srun reports 143). Either way the job fails with the one message.
    assert record["JobState"] == "FAILED" and record["ExitCode"] in ("2:0", "143:0"), log
    assert "Exited with exit code 2" in log
    assert "each one is an MPI world of 1" in log
    assert log.count("mpidl: error") == 1, log  # said once, not once per task
    assert not os.path.exists(os.path.join(workdir, "runs", f"mpidl-train-{job}", "summary.json"))


def test_sweep_array_and_collect(slurm, workdir, batch):
    job = batch["sweep"]
    records = slurm.wait(job, timeout=150)
    logs = "\n".join(_log(workdir, f"mpidl-sweep-{job}_{i}.out") for i in range(3))
    assert len(records) == 3, logs
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in records), logs
    root = os.path.join(workdir, "runs", f"mpidl-sweep-{job}")
    lrs = sorted(_summary(os.path.join(root, f"task-{i:03d}"))["config"]["lr"] for i in range(3))
    assert lrs == [0.001, 0.003, 0.01]

    from mpidl.collect import main as collect
    table_csv = os.path.join(workdir, "sweep.csv")
    assert collect([root, "--csv", table_csv]) == 0
    with open(table_csv) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["task-000", "task-001", "task-002"]
    assert {"lr", "optimizer", "val_accuracy"} <= set(rows[0])  # the varying settings and the results
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)


def test_scaling_script(slurm, workdir, batch):
    # The default data set (Fashion-MNIST): large enough for the weak runs' batches.
    job = slurm.sbatch(os.path.join(JOBS, "scaling.sbatch"), ["--ntasks-per-node=2"],
                       ["--model", "mlp", "--hidden", "32"], cwd=workdir,
                       **_job_env(workdir, SCALING_STEPS="10", SCALING_BATCH="256", SCALING_RANK_BATCH="64"))
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-scaling-{job}.out")
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    assert record["NumNodes"] == "1", record  # one node unless asked
    with open(os.path.join(workdir, "runs", f"mpidl-scaling-{job}", "scaling.csv")) as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"strong-n001", "weak-n001"}, log
    assert rows["strong-n001"]["batch_size"] == "256" and rows["weak-n001"]["batch_size"] == "128"
    assert all(r["world_size"] == "2" and float(r["samples_per_sec"]) > 0 for r in rows.values())
    assert all(r["steps"] == "10" for r in rows.values()), rows
    assert _run_config(workdir, job, "weak-n001")["dataset"] == "fashion-mnist"


def test_scaling_script_trains_the_steps_it_says_and_keeps_what_finished(slurm, workdir, batch):
    # digits (1437 samples) at a global batch of 1024: one step per epoch, so the recipe's 40
    # epochs would stop at 40 of the 50 steps; the weak runs' batch (2 x 1000) exceeds the data
    # set and fails: the strong run's row is still collected.
    job = slurm.sbatch(os.path.join(JOBS, "scaling.sbatch"), ["--ntasks-per-node=2"],
                       ["--model", "mlp", "--hidden", "16", "--dataset", "digits"], cwd=workdir,
                       **_job_env(workdir, SCALING_STEPS="50", SCALING_BATCH="1024", SCALING_RANK_BATCH="1000"))
    (record,) = slurm.wait(job, timeout=150)
    log = _log(workdir, f"mpidl-scaling-{job}.out")
    assert record["ExitCode"] == "1:0", (record, log)
    assert "run weak-n1 failed" in log, log
    with open(os.path.join(workdir, "runs", f"mpidl-scaling-{job}", "scaling.csv")) as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"strong-n001"}, log
    assert rows["strong-n001"]["steps"] == "50"
    assert _run_config(workdir, job, "strong-n001")["dataset"] == "digits"


def _run_config(workdir, job, run):
    with open(os.path.join(workdir, "runs", f"mpidl-scaling-{job}", run, "summary.json")) as f:
        return json.load(f)["config"]


def test_preemptible_requeues_and_resumes_exactly(slurm, workdir, batch):
    flags = [*SMALL, "--epochs", "40", "--checkpoint-every", "1e"]
    job = slurm.sbatch(os.path.join(JOBS, "preemptible.sbatch"), ["--ntasks-per-node=2"], flags,
                       cwd=workdir, **_job_env(workdir))
    run_dir = os.path.join(workdir, "runs", "mpidl-preemptible")  # named by the job, not its id
    log_name = f"mpidl-preemptible-{job}.out"

    # Signal once a checkpoint exists and training is under way (two epochs logged).
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + 90
    while not (os.path.exists(metrics) and open(metrics).read().count("\n") >= 2):
        assert time.monotonic() < deadline, _log(workdir, log_name)
        time.sleep(0.1)
    slurm.run(["scancel", "--signal=USR1", "--batch", str(job)])

    # The script requeues the job; SLURM holds a requeued job ~2 min unless its start time is reset.
    deadline = time.monotonic() + 60
    while slurm.job(job).get("Restarts", "0") == "0" or slurm.job(job)["JobState"] != "PENDING":
        assert time.monotonic() < deadline, (slurm.job(job), _log(workdir, log_name))
        time.sleep(0.2)
    slurm.run(["scontrol", "update", f"jobid={job}", "StartTime=now"])
    # The first start's end can still be reported for a moment: wait for the second start's last line.
    deadline = time.monotonic() + 150
    while "training finished" not in _log(workdir, log_name).split("start 2 on")[-1]:
        assert time.monotonic() < deadline, (slurm.job(job), _log(workdir, log_name))
        time.sleep(0.3)
    (record,) = slurm.wait(job, timeout=30)
    log = _log(workdir, log_name)
    assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", log
    assert record["Restarts"] == "1", log
    assert "requeueing" in log and "resumed from" in log, log
    stopped_at = int(log.split("stopped by a signal at step ")[1].split()[0])
    assert 0 < stopped_at < 40 * 22, log  # really interrupted mid-run

    # The uninterrupted twin runs afterwards: two 2-rank srun --mpi=pmi2 steps starting at the same
    # moment have hung in MPI_Init on this one-node test cluster (not investigated further yet).
    reference = slurm.sbatch(os.path.join(JOBS, "train.sbatch"), ["--ntasks-per-node=2"], SMALL + ["--epochs", "40"],
                             cwd=workdir, **_job_env(workdir))
    (ref,) = slurm.wait(reference, timeout=150)
    assert ref["ExitCode"] == "0:0", _log(workdir, f"mpidl-train-{reference}.out")
    ref_dir = os.path.join(workdir, "runs", f"mpidl-train-{reference}")
    assert _summary(run_dir)["world_size"] == 2
    assert np.array_equal(_weights(run_dir), _weights(ref_dir)), "resumed run differs from the uninterrupted one"
    with open(metrics) as f:
        assert [json.loads(line)["epoch"] for line in f] == list(range(1, 41))  # each epoch logged once


def test_a_preemptible_run_submitted_again_resumes_from_its_folder(slurm, workdir, batch):
    """After scancel or a hard time limit the job is not requeued; submitting it again under the
    same job name continues the run from its checkpoint, with one metrics history."""
    name = ["--job-name=resubmitted", "--ntasks-per-node=1"]
    flags = [*SMALL, "--checkpoint-every", "10"]
    first = slurm.sbatch(os.path.join(JOBS, "preemptible.sbatch"), name, [*flags, "--max-steps", "30"],
                         cwd=workdir, **_job_env(workdir))
    (record,) = slurm.wait(first, timeout=150)
    assert record["ExitCode"] == "0:0", _log(workdir, f"resubmitted-{first}.out")
    again = slurm.sbatch(os.path.join(JOBS, "preemptible.sbatch"), name, [*flags, "--max-steps", "60"],
                         cwd=workdir, **_job_env(workdir))
    (record,) = slurm.wait(again, timeout=150)
    log = _log(workdir, f"resubmitted-{again}.out")
    assert record["ExitCode"] == "0:0", log
    assert "resumed from" in log and "step 30" in log, log
    run_dir = os.path.join(workdir, "runs", "resubmitted")
    assert _summary(run_dir)["steps"] == 60
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == sorted(set(steps)) and steps[-1] == 60, steps  # one history, no step twice

