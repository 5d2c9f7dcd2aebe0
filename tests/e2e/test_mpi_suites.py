"""Runs tests/mpi under mpiexec with 1, 2 and 4 ranks; each must pass on every rank."""

import os

import pytest

from support import child_env, run_mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_mpi_suite(ranks, tmp_path):
    env = {**child_env(), "MPIDL_SUITE_RESULTS": str(tmp_path)}  # each rank writes rank-N.txt (conftest.py)
    proc = run_mpi(ranks, ["-m", "pytest", "--with-mpi", "-p", "no:cacheprovider", "tests/mpi"],
                   timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"tests/mpi failed under mpiexec -n {ranks}:\n{out[-6000:]}"
    # Every rank ran the whole suite: something collected, nothing failed.
    results = sorted(os.listdir(tmp_path))
    assert results == [f"rank-{r}.txt" for r in range(ranks)], (results, out[-3000:])
    for name in results:
        status, collected, failed = map(int, (tmp_path / name).read_text().split())
        assert status == 0 and collected > 0 and failed == 0, (name, status, collected, failed, out[-3000:])
