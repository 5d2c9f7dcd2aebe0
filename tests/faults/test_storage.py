"""Storage failures: a full disk while checkpointing, a killed rank, signals to the launcher,
file permissions. The previous good checkpoint must always survive."""

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from support import REPO, child_env, mpiexec, rank_pids, run_train

BASE = ["--max-steps", "60", "--batch-size", "32", "--progress", "log", "--check-every", "0"]


def _checkpoints(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith("ckpt-"))


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    # A tmpfs just big enough for one checkpoint: the next one runs out of space mid-write.
    # (A file-size rlimit would not do: MPI's shared-memory segments are files too.)
    first_dir = tmp_path / "first"
    first = run_train(2, [*BASE, "--max-steps", "20", "--checkpoint-dir", str(first_dir), "--out",
                          str(tmp_path / "a")])
    assert first.returncode == 0, first.stderr[-2000:]
    (good,) = _checkpoints(first_dir)
    before = (first_dir / good).read_bytes()
    ck = tmp_path / "small"
    ck.mkdir()
    size_kb = len(before) // 1024 + 64
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(ck)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {mounted.stderr}")
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (ck / good).write_bytes(before)
        proc = run_train(2, [*BASE, "--checkpoint-dir", str(ck), "--checkpoint-every", "10", "--resume", "latest",
                             "--out", str(tmp_path / "b")])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        errors = [l for l in proc.stderr.splitlines() if "error" in l]
        assert len(errors) == 1 and "cannot write checkpoint at step 30" in errors[0], proc.stderr
        assert "No space left on device" in errors[0] and "Traceback" not in proc.stderr
        assert _checkpoints(ck) == [good] and (ck / good).read_bytes() == before
        assert not [f for f in os.listdir(ck) if f.startswith(".tmp")]
        resumed = run_train(2, [*BASE, "--max-steps", "25", "--checkpoint-dir", str(tmp_path / "elsewhere"),
                                "--resume", str(ck / good), "--out", str(tmp_path / "c")])
        assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(ck)], capture_output=True)


def _start(tmp_path, ck, ranks=2):
    out = str(tmp_path / "run")
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpidl.train", "--max-steps", "100000",
           "--batch-size", "32", "--progress", "none", "--checkpoint-dir", str(ck), "--checkpoint-every", "20",
           "--out", out]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            cwd=REPO)
    return proc, out


def _wait_for_checkpoint(ck, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ck.exists() and len(_checkpoints(ck)) >= 2:
            return
        time.sleep(0.2)
    raise AssertionError("no checkpoints appeared")


def test_sigkill_of_a_rank_leaves_a_good_checkpoint_to_resume_from(tmp_path):
    ck = tmp_path / "ck"
    proc, out = _start(tmp_path, ck)
    try:
        pids = rank_pids(out, 2)
        _wait_for_checkpoint(ck)
        t0 = time.perf_counter()
        os.kill(pids[-1], signal.SIGKILL)
        proc.wait(timeout=60)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and elapsed < 30
    # The newest checkpoint is whole and the run continues from it.
    resumed = run_train(2, ["--max-steps", "100000", "--batch-size", "32", "--progress", "none",
                            "--checkpoint-dir", str(ck), "--checkpoint-every", "20", "--resume", "latest",
                            "--max-steps", str(int(_checkpoints(ck)[-1][5:-4]) + 5), "--out", str(tmp_path / "r")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and "warning" not in resumed.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_launcher_stops_ranks_without_damaging_checkpoints(tmp_path, sig):
    ck = tmp_path / "ck"
    proc, out = _start(tmp_path, ck)
    try:
        rank_pids(out, 2)
        _wait_for_checkpoint(ck)
        t0 = time.perf_counter()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and elapsed < 30, elapsed
    time.sleep(1)  # let any rank still exiting finish before looking
    assert not [p for p in rank_pids(out)], "ranks outlived the launcher"
    assert not [f for f in os.listdir(ck) if f.startswith(".tmp")]
    from mpidl.checkpoint import read_checkpoint
    for name in _checkpoints(ck):  # every checkpoint left is whole
        read_checkpoint(str(ck / name))


def test_outputs_follow_the_umask_and_are_never_world_writable(tmp_path):
    def strict():
        os.umask(0o077)

    out = tmp_path / "o"
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpidl.train", *BASE, "--checkpoint-dir",
                           str(tmp_path / "ck"), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, env=child_env(), cwd=REPO, preexec_fn=strict)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = [out / f for f in os.listdir(out)] + [tmp_path / "ck" / f for f in os.listdir(tmp_path / "ck")]
    assert len(files) >= 4
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
    with np.load(out / "weights.npz", allow_pickle=False) as z:
        assert z["params"].size > 0


def test_first_ctrl_c_checkpoints_like_sigterm(tmp_path):
    """SIGINT once to the launcher (Ctrl-C on a terminal): every rank agrees on a step, one
    checkpoint there, exit 75 with a line saying how to continue."""
    ck = tmp_path / "ck"
    proc, out = _start(tmp_path, ck)
    try:
        rank_pids(out, 2)
        _wait_for_checkpoint(ck)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, stderr[-3000:]
    assert "stopped by a signal at step" in stdout and "--resume latest" in stdout, stdout[-2000:]
    from mpidl.checkpoint import read_checkpoint
    newest = sorted(_checkpoints(ck))[-1]
    step = int(newest.split("-")[1].split(".")[0])
    assert f"stopped by a signal at step {step} " in stdout
    read_checkpoint(str(ck / newest))
