"""Helpers for tests that launch mpidl or pytest under mpiexec as a child process."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

# The mpiexec beside this Python (the PyPI MPICH wheel puts it there), else the one on PATH:
# one definition, shared with the benchmarks.
from common import mpiexec  # noqa: E402


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_mpi(n: int, args: list[str], timeout: float = 300, env: dict | None = None, cwd: str | None = None):
    """Run `python ARGS` on n ranks; returns the CompletedProcess (text, both streams captured)."""
    cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or child_env(),
                          cwd=cwd or REPO)


def rank_pids(marker: str, count: int = 0, timeout: float = 60) -> list[int]:
    """PIDs of the Python processes (ranks, not launchers) whose command line mentions
    `marker` (e.g. a run's --out folder). With count > 0, waits until that many exist."""
    import time
    from mpidl.chaos import rank_pids as current
    deadline = time.time() + timeout
    while True:
        pids = current(marker)
        if len(pids) >= count or time.time() > deadline:
            if count and len(pids) < count:
                raise AssertionError(f"only {len(pids)} of {count} ranks started")
            return pids
        time.sleep(0.3)


def run_train(n: int, args: list[str], timeout: float = 300, **kw):
    return run_mpi(n, ["-m", "mpidl.train", *args], timeout=timeout, **kw)


def shared_tmpdir(comm) -> str:
    """A folder made by rank 0, its path sent to every rank (the ranks share this machine's disk)."""
    import tempfile

    import numpy as np
    buf = np.zeros(512, dtype=np.uint8)
    if comm.rank == 0:
        path = tempfile.mkdtemp(prefix="mpidl-test-").encode()
        buf[:len(path)] = np.frombuffer(path, dtype=np.uint8)
    comm.bcast_(buf)
    return bytes(buf).rstrip(b"\0").decode()
