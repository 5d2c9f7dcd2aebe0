"""All communication between ranks. The only module that imports mpi4py.

Arrays travel through mpi4py's buffer (uppercase) API: no pickling, no copies.
MPI starts on the first call to :func:`world`, never at import. A run started
without ``mpiexec`` is an MPI world of one; where mpi4py cannot load its MPI
library a serial stand-in with the same methods takes its place.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

_WORLD = None

# Environment variables that launchers set; if one is present we must not fall
# back to the serial stand-in, or N processes would each think they are alone.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def launcher_rank() -> int:
    """This process's rank as the launcher announced it, read before MPI starts (so that
    --help and flag errors print once). 0 when not launched by an MPI launcher."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


class Communicator:
    """Wraps an mpi4py communicator with the handful of collectives training needs."""

    def __init__(self, mpi_comm, MPI):
        self._comm = mpi_comm
        self._MPI = MPI
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self._local_size = None

    # -- topology -----------------------------------------------------------------
    @property
    def local_size(self) -> int:
        """Ranks sharing this node (for BLAS thread counts)."""
        if self._local_size is None:
            node = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
            self._local_size = node.Get_size()
            node.Free()
        return self._local_size

    @property
    def local_rank(self) -> int:
        """This rank's index among the ranks on its node (one rank per node writes shared files)."""
        if getattr(self, "_local_rank", None) is None:
            node = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
            self._local_rank = node.Get_rank()
            node.Free()
        return self._local_rank

    @property
    def library(self) -> str:
        return self._MPI.Get_library_version().splitlines()[0].strip()

    # -- collectives on arrays -----------------------------------------------------
    def allreduce_sum_(self, buf: np.ndarray) -> np.ndarray:
        """In-place sum over ranks."""
        if self.size > 1:
            self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def allreduce_mean_(self, buf: np.ndarray) -> np.ndarray:
        """In-place mean over ranks: one Allreduce of the whole buffer, then a division
        (correctly rounded, unlike a multiply by a rounded 1/size)."""
        if self.size > 1:
            self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
            buf /= self.size
        return buf

    def allreduce_min_max(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = values.copy(), values.copy()
        if self.size > 1:
            self._comm.Allreduce(self._MPI.IN_PLACE, lo, op=self._MPI.MIN)
            self._comm.Allreduce(self._MPI.IN_PLACE, hi, op=self._MPI.MAX)
        return lo, hi

    def bcast_(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        if self.size > 1:
            self._comm.Bcast(buf, root=root)
        return buf

    def allgather_bytes(self, payload: bytes, width: int = 64) -> list[bytes]:
        """Every rank's fixed-width byte string (digests, short names), without pickle."""
        send = np.zeros(width, dtype=np.uint8)
        raw = np.frombuffer(payload[:width], dtype=np.uint8)
        send[:raw.size] = raw
        recv = np.zeros((self.size, width), dtype=np.uint8)
        if self.size > 1:
            self._comm.Allgather(send, recv)
        else:
            recv[0] = send
        return [bytes(row) for row in recv]

    def barrier(self) -> None:
        if self.size > 1:
            self._comm.Barrier()

    def gather_rows(self, rows: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Each rank's 2-D float64 array (own row count, same width) collected at root as a
        list indexed by rank; None elsewhere. Gather of counts, then Gatherv: no pickle."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        if self.size == 1:
            return [rows.copy()]
        width = rows.shape[1]
        counts = np.zeros(self.size, dtype=np.int64)
        self._comm.Gather(np.array([rows.shape[0]], dtype=np.int64), counts, root=root)
        if self.rank != root:
            self._comm.Gatherv(rows, None, root=root)
            return None
        recv = np.empty((int(counts.sum()), width))
        self._comm.Gatherv(rows, [recv, (counts * width).tolist()], root=root)
        return np.split(recv, np.cumsum(counts)[:-1])

    # -- agreement and failure -----------------------------------------------------
    def check_same(self, what: str, digest: bytes) -> None:
        """Raise MismatchError on every rank if any rank's digest of `what` differs from rank 0's."""
        digests = self.allgather_bytes(digest, width=32)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise MismatchError(f"{what} differs between ranks: rank(s) {differ} disagree with rank 0")

    def first_failure(self, failed: bool) -> int | None:
        """Collective: the lowest rank that failed, or None if none did. Lets every rank
        take the same exit while only that rank prints its message."""
        flag = np.array([self.rank if failed else self.size], dtype=np.int64)
        if self.size > 1:
            self._comm.Allreduce(self._MPI.IN_PLACE, flag, op=self._MPI.MIN)
        first = int(flag[0])
        return None if first >= self.size else first

    def any_true(self, value: bool) -> bool:
        flag = np.array([1 if value else 0], dtype=np.int32)
        if self.size > 1:
            self._comm.Allreduce(self._MPI.IN_PLACE, flag, op=self._MPI.MAX)
        return bool(flag[0])

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(code)

    def wtime(self) -> float:
        return self._MPI.Wtime()


class SerialComm(Communicator):
    """A world of one for machines where mpi4py cannot load an MPI library."""

    def __init__(self):  # noqa: D401 - no MPI at all
        self.rank, self.size, self._local_size, self._local_rank = 0, 1, 1, 0

    @property
    def library(self) -> str:
        return "none (serial stand-in)"

    def allreduce_min_max(self, values):
        return values.copy(), values.copy()

    def allgather_bytes(self, payload, width=64):
        send = np.zeros(width, dtype=np.uint8)
        raw = np.frombuffer(payload[:width], dtype=np.uint8)
        send[:raw.size] = raw
        return [bytes(send)]

    def first_failure(self, failed):
        return 0 if failed else None

    def any_true(self, value):
        return bool(value)

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def wtime(self):
        import time
        return time.perf_counter()


class MismatchError(RuntimeError):
    """Ranks disagree on something that must be identical (config, layout, data)."""


def world() -> Communicator:
    """The communicator of all ranks; starts MPI on first use."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:
        if any(v in os.environ for v in _LAUNCHER_VARS):
            raise RuntimeError(
                f"launched by an MPI launcher but mpi4py cannot load MPI ({exc}); "
                "install an MPI (e.g. pip install mpich) or load your site's MPI module") from exc
        print(f"mpidl: mpi4py unavailable ({exc}); running as a single process", file=sys.stderr)
        _WORLD = SerialComm()
        return _WORLD
    _WORLD = Communicator(MPI.COMM_WORLD, MPI)
    return _WORLD


def install_abort_on_exception(comm: Communicator) -> None:
    """An uncaught exception on any rank prints once, tagged with its rank, then aborts every
    rank through MPI_Abort so none waits forever in a collective."""
    if comm.size == 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
            previous(exc_type, exc, tb)
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        tagged = "".join(f"[rank {comm.rank}] {line}\n" for line in text.rstrip().splitlines())
        sys.stderr.write(tagged)
        sys.stderr.write(f"[rank {comm.rank}] mpidl: aborting all {comm.size} ranks\n")
        comm.abort(1)

    sys.excepthook = hook
