"""Shared by the benchmark scripts: launching mpiexec children and the machine's facts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def mpiexec() -> str:
    """The mpiexec beside this Python (the PyPI MPICH wheel puts it there), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec found: pip install mpich (or load your MPI module)")
    return found


# "auto": MPICH yields the core while a rank waits (MPIR_CVAR_ENABLE_HEAVY_YIELD) when ranks
# outnumber cores or other programs already filled the cores when the benchmark started; a
# busy-polling rank then steals time from the rank it waits for (measured here: 2-3x slower
# steps on a loaded 2-core machine). "on"/"off" force it.
MPI_YIELD = "auto"
MACHINE_BUSY = False  # set by run_all.py from the load average before it starts anything


def yields(ranks: int) -> bool:
    if MPI_YIELD != "auto":
        return MPI_YIELD == "on"
    return ranks > cores() or MACHINE_BUSY


def child_env(ranks: int, **extra) -> dict:
    """One BLAS thread per rank, and MPICH's yielding wait where it helps (see MPI_YIELD)."""
    env = dict(os.environ)
    if "PYTEST_CURRENT_TEST" not in env:
        # A benchmark's own command may run numpy's native OpenBLAS kernel: both variables go
        # together (the machine sets them for older OpenBLAS builds); tests leave them as set.
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1" if yields(ranks) else "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_ranks(ranks: int, args: list[str], timeout: float = 600, env: dict | None = None) -> str:
    """`python ARGS` on `ranks` ranks; raises with the output's tail if it fails."""
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, *args]
    for attempt in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=env or child_env(ranks))
        # Killed from outside (SIGTERM/SIGKILL on a shared machine): one more try; a real error is not retried.
        if proc.returncode not in (15, 137, 143, -15, -9) or "Terminated" not in proc.stdout + proc.stderr:
            break
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (gloo's rendezvous for the PyTorch peer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def blas_kernel() -> str:
    """Which BLAS this process runs and with which kernel (threadpoolctl), and the two
    OpenBLAS variables that choose it: benchmarks report it beside their figures."""
    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl then finds)
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    env = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
    if not blas:
        return f"no BLAS found by threadpoolctl ({env})"
    b = blas[0]
    return f"{b.get('internal_api')} {b.get('version')}, {b.get('architecture')} kernel ({env})"
