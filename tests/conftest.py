"""Shared test setup.

tests/mpi/ holds tests that run inside an MPI world; the plain pytest run does not
collect them itself but starts them under mpiexec with 1, 2 and 4 ranks
(tests/e2e/test_mpi_suites.py), so one `pytest` command runs everything.
"""

import os

collect_ignore = []


def pytest_configure(config):
    # Under mpiexec the suite is started with --with-mpi (pytest-mpi); otherwise skip tests/mpi.
    if not config.getoption("with_mpi", default=False):
        collect_ignore.append(os.path.join(os.path.dirname(__file__), "mpi"))


def pytest_sessionfinish(session, exitstatus):
    # Under tests/e2e/test_mpi_suites.py each rank leaves its own result in a file: the ranks'
    # printed summaries share one output stream and may interleave mid-line.
    folder = os.environ.get("MPIDL_SUITE_RESULTS")
    if folder:
        rank = os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
        with open(os.path.join(folder, f"rank-{rank}.txt"), "w") as f:
            f.write(f"{int(exitstatus)} {session.testscollected} {session.testsfailed}\n")
