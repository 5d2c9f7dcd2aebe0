"""End to end: the command a user runs, under mpiexec, with its outputs and its errors."""

import json
import os
import time

import numpy as np
import pytest

from support import REPO, run_mpi, run_train

FASHION = "/usr/share/datasets/fashion-mnist"


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def test_default_run_on_four_ranks(tmp_path):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    proc = run_train(4, ["--out", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 120
    s = _summary(out)
    assert s["world_size"] == 4 and s["config"]["model"] == "mlp" and s["config"]["dataset"] == "digits"
    assert s["allocator"] == "keep"   # the default: freed memory kept mapped (mpidl.allocator)
    assert s["val_accuracy"] >= 0.95
    assert "done:" in proc.stdout and proc.stdout.count("done:") == 1   # rank 0 only
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == s["epochs"] == 40
    assert set(lines[0]) >= {"epoch", "step", "train_loss", "val_loss", "val_accuracy", "samples_per_sec",
                             "wall_time"}
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    # weights: flat vector plus layout, readable with NumPy alone
    with np.load(out / "weights.npz", allow_pickle=False) as z:
        flat = z["params"]
        names = list(z["names"])
        assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
        w = z["param/fc1.weight"]
        assert w.shape == (64, 64)
        np.testing.assert_array_equal(flat[:w.size].reshape(w.shape), w)


def test_xor_reaches_100_percent(tmp_path):
    proc = run_train(2, ["--model", "xor", "--allocator", "system", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = _summary(tmp_path)
    assert s["val_accuracy"] == 1.0 and s["allocator"] == "system"


def test_linreg_fits_the_regression_set(tmp_path):
    proc = run_train(2, ["--model", "linreg", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = _summary(tmp_path)
    assert s["val_accuracy"] is None
    assert s["val_loss"] < 0.05   # noise variance is 0.01


@pytest.mark.slow
def test_mlp_on_fashion_mnist_5_epochs(tmp_path):
    if not os.path.isdir(FASHION):
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION} missing: .ci/run must apt-get install dataset-fashion-mnist")
        pytest.skip(f"{FASHION} not installed (apt-get install dataset-fashion-mnist)")
    proc = run_train(2, ["--dataset", "fashion-mnist", "--epochs", "5", "--out", str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = _summary(tmp_path)
    assert s["val_split"] == "test"
    assert s["val_accuracy"] >= 0.85


@pytest.mark.parametrize("args,message", [
    (["--lr", "-3"], "--lr -3.0: must be positive"),
    (["--model", "nope"], "--model 'nope': not a built-in model"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent"], "--data-dir /nonexistent: no such directory"),
    (["--batch-size", "3"], "at least one sample per rank (4 ranks)"),
    (["--batch-size", "100000"], "larger than the 1437 training samples"),
    (["--model", "xor", "--dataset", "digits"], "cannot train on --dataset digits"),
])
def test_bad_input_one_line_once_exit_2(tmp_path, args, message):
    proc = run_train(4, [*args, "--out", str(tmp_path / "o")], timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [l for l in proc.stderr.splitlines() if "error" in l]
    assert len(errors) == 1, proc.stderr
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir_is_a_clean_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_train(2, ["--out", str(blocker / "sub")], timeout=60)
    assert proc.returncode == 2
    assert "--out" in proc.stderr and "cannot write there" in proc.stderr and "Traceback" not in proc.stderr


def test_help_prints_once():
    proc = run_train(2, ["--help"], timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.count("usage:") == 1 and "--batch-size" in proc.stdout and "GLOBAL batch" in proc.stdout


def test_exception_on_one_rank_aborts_all_quickly():
    t0 = time.perf_counter()
    proc = run_mpi(4, [os.path.join(REPO, "tests", "helpers", "scripts", "raise_on_last_rank.py")], timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert elapsed < 30, f"took {elapsed:.1f}s"
    assert proc.stderr.count("ValueError: deliberate failure") == 1
    assert "[rank 3] ValueError: deliberate failure" in proc.stderr


def test_console_script_and_single_process(tmp_path):
    import shutil
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), "mpidl")
    exe = exe if os.path.exists(exe) else shutil.which("mpidl")
    proc = subprocess.run([exe, "--max-steps", "30", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _summary(tmp_path)["world_size"] == 1


def test_ranks_started_with_different_seeds_get_one_line_and_exit_2(tmp_path):
    from support import child_env, mpiexec
    import subprocess
    import sys
    base = [sys.executable, "-m", "mpidl.train", "--max-steps", "2", "--out", str(tmp_path / "o")]
    proc = subprocess.run([mpiexec(), "-n", "1", *base, "--seed", "1", ":", "-n", "1", *base, "--seed", "2"],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "configuration differs between ranks" in errors[0], proc.stderr
