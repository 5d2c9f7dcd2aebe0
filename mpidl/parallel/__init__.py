"""Everything between ranks: the communicator (the only mpi4py import), the gradient
strategies and DistributedOptimizer, the guards that keep a job from hanging, and model
parallelism (the Grid of ranks, tensor-parallel layers, pipeline stages, ShardedModel)."""

from __future__ import annotations

from mpidl.allocator import configure as configure_allocator
from mpidl.errors import UserError
from mpidl.parallel import comm as _comm
from mpidl.parallel.guard import (agreed, blas_threads, check_world_size, install_abort_on_exception,
                                  prints_errors, start_watchdog)
from mpidl.parallel.grid import Grid
from mpidl.parallel.sharded import ShardedModel
from mpidl.parallel.sync import DistributedOptimizer, broadcast_and_verify, make_sync

__all__ = ["world", "DistributedOptimizer", "broadcast_and_verify", "make_sync", "agreed", "Grid", "ShardedModel"]


def world(threads: int | None = None, collective_timeout: float = 300.0, expect_ranks: int | None = None,
          allocator: str = "keep"):
    """The communicator of all ranks, set up as the command line sets it up: MPI starts here,
    BLAS gets `threads` per rank (default: this node's cores / its ranks), an exception on one
    rank aborts all of them, a rank stuck `collective_timeout` s in one collective (or in
    MPI_Init, waiting for a rank that never starts) aborts the job, `expect_ranks` (or a SLURM
    launch that made N worlds of one) is checked, and memory a step frees stays mapped for the
    next (`allocator="keep"`, see mpidl.allocator; "system" leaves the C library's default)."""
    comm = _comm.world(startup_timeout=collective_timeout or None)
    install_abort_on_exception(comm)
    try:
        check_world_size(comm, expect_ranks)
    except UserError as exc:  # the same verdict on every rank, no collective needed
        exc.report = comm.rank == 0 and prints_errors()
        raise
    if not hasattr(comm, "blas_threads"):
        from threadpoolctl import threadpool_limits
        comm.blas_threads = blas_threads(comm, threads)
        threadpool_limits(comm.blas_threads)
    comm.allocator = configure_allocator(allocator)
    start_watchdog(comm, collective_timeout)
    return comm
