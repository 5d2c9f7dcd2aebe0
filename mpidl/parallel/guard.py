"""What keeps a job from hanging or failing silently: a check that the launch made one world,
a stop signal that all ranks act on at the same step, a watchdog on collectives, and a hook
that turns an exception on one rank into an abort of all of them.

The classic SLURM mistake is ``srun python ...`` without ``--mpi=pmi2``/``pmix`` (or an MPI
built without SLURM support): srun starts N processes, each finds no PMI and becomes a
world of one, and N copies train the same model side by side without complaint.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback

from mpidl.errors import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USAGE, EXIT_WATCHDOG, UserError

__all__ = ["EXIT_PREEMPTED", "check_world_size", "prints_errors", "StopSignal", "start_watchdog",
           "install_abort_on_exception"]


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
    """Remembers that SIGUSR1, SIGTERM or a first Ctrl-C (SIGINT) arrived; `agreed` makes the
    decision collective. A second Ctrl-C raises KeyboardInterrupt: abort at once.

    A signal can reach one rank, some, or all, at different steps. One tiny Allreduce(MAX)
    per check turns that into the same answer on every rank at the same step, so all ranks
    write the checkpoint together and leave the loop together.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.finishing = False  # training is over: only the final checkpoint and outputs remain
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
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: no more waiting for a checkpoint
        if signum == signal.SIGINT and self.received is None:
            doing = "finishing the final outputs first" if self.finishing else "checkpointing at the next step"
            print(f"mpidl: interrupted: {doing} (Ctrl-C again to abort)", file=sys.stderr, flush=True)
        self.received = signum

    def agreed(self, comm) -> bool:
        return comm.any_true(self.received is not None)


def blas_threads(comm, threads: int | None = None) -> int:
    """`threads`, else SLURM_CPUS_PER_TASK, else the cores this process may use / ranks on this node."""
    if threads:
        return threads
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return max(1, usable_cores() // comm.local_size)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def agreed(comm, fn):
    """Run fn on every rank; if it raises a UserError on any rank, every rank raises one
    together (no rank left waiting in a collective). The lowest failing rank's error has
    ``report = True``: it is the one to print."""
    error = None
    try:
        result = fn()
    except UserError as exc:
        error, result = exc, None
    first = comm.first_failure(error is not None)
    if first is not None:
        if error is None:
            error = UserError(f"rank {first} failed (see its message)")
        error.report = comm.rank == first
        error.rank = first
        raise error
    return result


def start_watchdog(comm, timeout: float | None = None) -> threading.Thread | None:
    """A daemon thread that aborts the job when this rank has waited in one collective for more
    than ``comm.collective_timeout`` seconds (a peer died or hangs), naming the collective and
    the step. The timeout is read on every check: a Trainer sets it from its settings."""
    if timeout is not None:
        comm.collective_timeout = timeout
    if comm.size == 1 or getattr(comm, "_watchdog", None) is not None:
        return None

    def watch():
        while True:
            limit = getattr(comm, "collective_timeout", 0) or 0
            time.sleep(min(1.0, limit / 4) if limit > 0 else 1.0)
            current = comm.waiting_in
            if limit > 0 and current is not None and time.monotonic() - current[1] > limit:
                name, started = current
                where = f" at {comm.context}" if comm.context else ""
                sys.stderr.write(f"[rank {comm.rank}] mpidl: waited {time.monotonic() - started:.0f} s in "
                                 f"{name}{where} (--collective-timeout {limit:g}); another rank has died "
                                 f"or hangs. Aborting all {comm.size} ranks.\n")
                comm.abort(EXIT_WATCHDOG)

    thread = threading.Thread(target=watch, name="mpidl-watchdog", daemon=True)
    thread.start()
    comm._watchdog = thread
    return thread


def report_error(exc: BaseException, comm=None) -> None:
    """One line on stderr for a user error or a halt, from the rank that should say it."""
    if getattr(exc, "report", comm is None or comm.rank == 0):
        rank = getattr(exc, "rank", 0)
        tag = f" [rank {rank}]" if rank else ""
        print(f"mpidl: error{tag}: {exc}", file=sys.stderr, flush=True)


def install_abort_on_exception(comm) -> None:
    """An uncaught exception on any rank prints once, tagged with its rank, then aborts every
    rank through MPI_Abort so none waits forever in a collective. A UserError or TrainingHalted
    that every rank raised together (see :func:`agreed`) is one line and a clean exit with
    EXIT_USAGE or EXIT_HALTED instead, as on the command line."""
    if getattr(comm, "_hooked", False):
        return
    comm._hooked = True
    previous = sys.excepthook
    from mpidl.errors import EXIT_HALTED, TrainingHalted

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, SystemExit):
            previous(exc_type, exc, tb)
            return
        if issubclass(exc_type, (UserError, TrainingHalted)):
            together = comm.size == 1 or hasattr(exc, "report") or issubclass(exc_type, TrainingHalted)
            if together:
                report_error(exc, comm)
                sys.stdout.flush()
                sys.stderr.flush()
                comm.finalize()
                os._exit(EXIT_HALTED if issubclass(exc_type, TrainingHalted) else EXIT_USAGE)
            sys.stderr.write(f"[rank {comm.rank}] mpidl: error: {exc}\n"
                             f"[rank {comm.rank}] mpidl: aborting all {comm.size} ranks\n")
            comm.abort(EXIT_USAGE)
        if comm.size == 1:
            previous(exc_type, exc, tb)
            return
        if issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C reaches the ranks at different moments: one that exits normally would
            # wait in MPI_Finalize for a peer stuck in a collective, so abort them all.
            sys.stderr.write(f"[rank {comm.rank}] mpidl: interrupted; aborting all {comm.size} ranks\n")
            comm.abort(EXIT_INTERRUPTED)
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        tagged = "".join(f"[rank {comm.rank}] {line}\n" for line in text.rstrip().splitlines())
        sys.stderr.write(tagged)
        sys.stderr.write(f"[rank {comm.rank}] mpidl: aborting all {comm.size} ranks\n")
        comm.abort(EXIT_CRASH)

    sys.excepthook = hook
