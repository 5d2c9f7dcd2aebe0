"""Runs tests/mpi under mpiexec with 1, 2 and 4 ranks; each must pass on every rank."""

import re

import pytest

from support import run_mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_mpi_suite(ranks):
    proc = run_mpi(ranks, ["-m", "pytest", "--with-mpi", "-p", "no:cacheprovider", "tests/mpi"],
                   timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"tests/mpi failed under mpiexec -n {ranks}:\n{out[-6000:]}"
    # Every rank prints its own summary; all must have passed something and failed nothing.
    summaries = re.findall(r"=+ (.*(?:passed|failed|error).*) in [\d.]+s", out)
    assert len(summaries) == ranks, out[-3000:]
    for s in summaries:
        assert "passed" in s and "failed" not in s and "error" not in s, s
