"""What running under a batch system needs: a check that the launch made one world, and
a stop signal that all ranks act on at the same step.

The classic SLURM mistake is ``srun python ...`` without ``--mpi=pmi2``/``pmix`` (or an MPI
built without SLURM support): srun starts N processes, each finds no PMI and becomes a
world of one, and N copies train the same model side by side without complaint.
"""

from __future__ import annotations

import os
import signal

from mpidl.errors import UserError

# Exit status of a run that stopped early on request (SIGUSR1/SIGTERM) after writing a
# checkpoint: EX_TEMPFAIL from sysexits.h, "try again later". Job scripts requeue on it.
EXIT_PREEMPTED = 75


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None


def check_world_size(comm, expected: int | None) -> None:
    """Raise UserError if the MPI world is not the size the launcher or --expect-ranks asked for."""
    step_tasks = _int_env("SLURM_STEP_NUM_TASKS")
    if comm.size == 1 and step_tasks is not None and step_tasks > 1 and _launched_by_srun():
        raise UserError(
            f"srun started {step_tasks} tasks but each one is an MPI world of 1: they would train "
            "the same model separately. Launch with srun --mpi=pmi2 (or --mpi=pmix, whichever your "
            "MPI supports; `srun --mpi=list` shows them) or with mpiexec inside the allocation")
    if expected is not None and comm.size != expected:
        raise UserError(
            f"--expect-ranks {expected}: the MPI world has {comm.size} rank(s). Check the launch line "
            "(srun --mpi=pmi2|pmix, or mpiexec -n N) and that mpi4py uses the MPI that launched it")


def _launched_by_srun() -> bool:
    # srun sets SLURM_STEP_ID for its tasks; a batch script's own shell has SLURM_STEP_ID unset
    # or "batch"-typed ids, and mpiexec's ranks inherit PMI_* variables instead.
    return "SLURM_STEP_ID" in os.environ and "PMI_RANK" not in os.environ and "PMIX_RANK" not in os.environ


def prints_errors() -> bool:
    """In a world of one started by srun, only task 0 prints (the others would repeat it)."""
    task = _int_env("SLURM_PROCID")
    return task is None or task == 0


class StopSignal:
    """Remembers that SIGUSR1 or SIGTERM arrived; `agreed` makes the decision collective.

    A signal can reach one rank, some, or all, at different steps. One tiny Allreduce(MAX)
    per check turns that into the same answer on every rank at the same step, so all ranks
    write the checkpoint together and leave the loop together.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def install(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        self.received = signum

    def agreed(self, comm) -> bool:
        return comm.any_true(self.received is not None)
