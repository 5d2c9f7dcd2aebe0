"""Many jobs at once on a small machine: 8 two-rank trainings side by side (16 ranks on the 2
cores), and one 16-rank training, all finish with the results they get alone and none hangs."""

import json
import subprocess
import sys
import time

from support import REPO, child_env, mpiexec

RUN = ["-m", "mpidl.train", "--model", "mlp", "--hidden", "32", "--epochs", "3", "--batch-size", "64",
       "--progress", "none", "--dtype", "float64", "--collective-timeout", "120"]


def _start(ranks, out):
    return subprocess.Popen([mpiexec(), "-n", str(ranks), sys.executable, *RUN, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(MPIR_CVAR_ENABLE_HEAVY_YIELD=1), cwd=REPO)


def _accuracy(out):
    with open(out / "summary.json") as f:
        return json.load(f)["val_accuracy"]


def test_eight_trainings_at_once_and_sixteen_ranks_finish_alike(tmp_path):
    t0 = time.perf_counter()
    jobs = [_start(2, tmp_path / f"job{i}") for i in range(8)] + [_start(16, tmp_path / "wide")]
    try:
        results = [job.communicate(timeout=600) for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
    elapsed = time.perf_counter() - t0
    for job, (out, err) in zip(jobs, results):
        assert job.returncode == 0, err[-3000:]
    alone = subprocess.run([sys.executable, *RUN, "--out", str(tmp_path / "alone")], capture_output=True, text=True,
                           env=child_env(), cwd=REPO, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    reference = _accuracy(tmp_path / "alone")
    for i in range(8):  # same global batches: the same model within float64 rounding, so the same accuracy
        assert _accuracy(tmp_path / f"job{i}") == reference
    assert _accuracy(tmp_path / "wide") == reference
    print(f"8 two-rank jobs and one 16-rank job at once: {elapsed:.1f} s")
