"""All communication between ranks. The only module that imports mpi4py.

Arrays travel through mpi4py's buffer (uppercase) API: no pickling, no copies.
MPI starts on the first call to :func:`world`, never at import. A run started
without ``mpiexec`` is an MPI world of one; where mpi4py cannot load its MPI
library a serial stand-in with the same methods takes its place.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from mpidl.errors import MismatchError

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


def ranks_per_node_from_env() -> int | None:
    """MPIDL_RANKS_PER_NODE: group consecutive ranks into 'nodes' of this size (tests, benchmarks)."""
    env = os.environ.get("MPIDL_RANKS_PER_NODE", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


class Communicator:
    """Wraps an mpi4py communicator with the handful of collectives training needs."""

    def __init__(self, mpi_comm, MPI):
        self._comm = mpi_comm
        self._MPI = MPI
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self.waiting_in = None   # (collective, monotonic start) while inside one; read by the watchdog
        self.context = ""        # where training is, e.g. "step 120", for the watchdog's message

    @contextmanager
    def _watch(self, name):
        self.waiting_in = (name, time.monotonic())
        try:
            yield
        finally:
            self.waiting_in = None

    # -- topology -----------------------------------------------------------------
    def _node(self) -> tuple[int, int]:
        """(ranks on this node, this rank's index among them), from one Split_type, kept."""
        if getattr(self, "_node_info", None) is None:
            node = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
            self._node_info = (node.Get_size(), node.Get_rank())
            node.Free()
        return self._node_info

    @property
    def local_size(self) -> int:
        """Ranks sharing this node (for BLAS thread counts)."""
        return self._node()[0]

    @property
    def local_rank(self) -> int:
        """This rank's index among the ranks on its node (one rank per node writes shared files)."""
        return self._node()[1]

    @property
    def library(self) -> str:
        return self._MPI.Get_library_version().splitlines()[0].strip()

    # -- collectives on arrays -----------------------------------------------------
    def allreduce_sum_(self, buf: np.ndarray, what: str = "Allreduce(sum)") -> np.ndarray:
        """In-place sum over ranks; `what` names it in the watchdog's message. On the hot
        path, so the watchdog bookkeeping is inlined (a context manager costs ~1.5 us)."""
        if self.size > 1:
            self.waiting_in = (what, time.monotonic())
            try:
                self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
            finally:
                self.waiting_in = None
        return buf

    def allreduce_mean_(self, buf: np.ndarray) -> np.ndarray:
        """In-place mean over ranks: one Allreduce of the whole buffer, then a division by the
        rank count. (The plain gradient path folds the 1/size into the loss gradient instead:
        see mpidl.parallel.sync.DistributedOptimizer.)"""
        if self.size > 1:
            self.allreduce_sum_(buf, what="Allreduce(gradients)")
            buf /= self.size
        return buf

    # -- gradient reduction: non-blocking, 16-bit, sharded, hierarchical --------------
    def iallreduce_sum(self, buf: np.ndarray, codec: str | None = None):
        """Start an in-place sum; returns a request for :meth:`test_all` / :meth:`wait_all`.
        With `codec` ('fp16', 'bf16') `buf` holds uint16 words of that encoding, summed by
        a user-defined operation that adds in float32 (see mpidl.parallel.compress)."""
        return self._comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._sum_op(codec))

    def allreduce_encoded_sum_(self, buf: np.ndarray, codec: str | None = None) -> np.ndarray:
        """Blocking in-place sum, of plain numbers or of 16-bit `codec` words."""
        if self.size > 1:
            with self._watch("Allreduce(encoded gradients)"):
                self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._sum_op(codec))
        return buf

    def thread_can_communicate(self) -> bool:
        """Whether a second thread may make MPI calls (while this one makes none)."""
        return self._MPI.Query_thread() >= self._MPI.THREAD_SERIALIZED

    def test_all(self, requests) -> bool:
        """Lets MPI progress pending requests (MPICH moves a non-blocking collective
        forward only inside MPI calls); True once all are complete."""
        return bool(self._MPI.Request.Testall(requests)) if requests else True

    def wait_all(self, requests) -> None:
        if requests:
            with self._watch("Waitall(gradient buckets)"):
                self._MPI.Request.Waitall(requests)

    def reduce_scatter_sum(self, send: np.ndarray, shard: np.ndarray) -> np.ndarray:
        """shard <- this rank's block of the sum over ranks of `send` (size x len(shard))."""
        if self.size > 1:
            with self._watch("Reduce_scatter(gradients)"):
                self._comm.Reduce_scatter_block(send, shard, op=self._MPI.SUM)
        else:
            shard[...] = send
        return shard

    def allgather_blocks_(self, buf: np.ndarray) -> np.ndarray:
        """In place: block r of `buf` (len(buf) / size elements) comes from rank r."""
        if self.size > 1:
            with self._watch("Allgather(parameters)"):
                self._comm.Allgather(self._MPI.IN_PLACE, buf)
        return buf

    def hierarchical_allreduce_sum_(self, buf: np.ndarray, ranks_per_node: int | None = None) -> np.ndarray:
        """In-place sum in three stages: Reduce to each node's leader over shared memory,
        Allreduce among the leaders (the only traffic between nodes), Bcast in each node."""
        if self.size == 1:
            return buf
        node, leaders = self.node_groups(ranks_per_node)
        MPI = self._MPI
        with self._watch("hierarchical Allreduce"):
            self._hierarchical(buf, node, leaders, MPI)
        return buf

    @staticmethod
    def _hierarchical(buf, node, leaders, MPI) -> None:
        if node.Get_size() > 1:
            if node.Get_rank() == 0:
                node.Reduce(MPI.IN_PLACE, buf, op=MPI.SUM, root=0)
            else:
                node.Reduce(buf, None, op=MPI.SUM, root=0)
        if leaders is not None and leaders.Get_size() > 1:
            leaders.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if node.Get_size() > 1:
            node.Bcast(buf, root=0)
        return buf

    def node_groups(self, ranks_per_node: int | None = None):
        """(communicator of this node's ranks, communicator of node leaders or None).

        Nodes come from MPI_Comm_split_type(COMM_TYPE_SHARED); `ranks_per_node` (or the
        environment variable MPIDL_RANKS_PER_NODE) instead groups consecutive ranks, which
        lets one machine stand in for several nodes in tests and benchmarks."""
        if ranks_per_node is None:
            ranks_per_node = ranks_per_node_from_env()
        key = ranks_per_node or 0
        cache = self.__dict__.setdefault("_node_groups", {})
        if key not in cache:
            MPI = self._MPI
            if ranks_per_node:
                node = self._comm.Split(color=self.rank // ranks_per_node, key=self.rank)
            else:
                node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            leaders = self._comm.Split(color=0 if node.Get_rank() == 0 else MPI.UNDEFINED, key=self.rank)
            cache[key] = (node, None if leaders == MPI.COMM_NULL else leaders)
        return cache[key]

    def node_shape(self, ranks_per_node: int | None = None) -> tuple[int, int]:
        """(ranks on this rank's node, number of nodes) as node_groups cuts them."""
        if self.size == 1:
            return 1, 1
        node, leaders = self.node_groups(ranks_per_node)
        return node.Get_size(), leaders.Get_size() if leaders is not None else 0

    def _sum_op(self, codec):
        if codec is None:
            return self._MPI.SUM
        ops = self.__dict__.setdefault("_codec_ops", {})
        if codec not in ops:
            from mpidl.parallel.compress import add_encoded

            def combine(incoming, inout, datatype, codec=codec):
                add_encoded(codec, np.frombuffer(incoming, dtype=np.uint16), np.frombuffer(inout, dtype=np.uint16))

            ops[codec] = self._MPI.Op.Create(combine, commute=True)
        return ops[codec]

    def allreduce_min_max(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element-wise minimum and maximum over ranks, in ONE Allreduce(MIN) of [v, -v]."""
        both = np.concatenate([values, -values])
        if self.size > 1:
            with self._watch("Allreduce(min/max)"):
                self._comm.Allreduce(self._MPI.IN_PLACE, both, op=self._MPI.MIN)
        n = len(values)
        return both[:n], -both[n:]

    def bcast_(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        if self.size > 1:
            with self._watch("Bcast"):
                self._comm.Bcast(buf, root=root)
        return buf

    def allgather_bytes(self, payload: bytes, width: int = 64) -> list[bytes]:
        """Every rank's fixed-width byte string (digests, short names), without pickle."""
        send = np.zeros(width, dtype=np.uint8)
        raw = np.frombuffer(payload[:width], dtype=np.uint8)
        send[:raw.size] = raw
        recv = np.zeros((self.size, width), dtype=np.uint8)
        if self.size > 1:
            with self._watch("Allgather(bytes)"):
                self._comm.Allgather(send, recv)
        else:
            recv[0] = send
        return [bytes(row) for row in recv]

    def barrier(self) -> None:
        if self.size > 1:
            with self._watch("Barrier"):
                self._comm.Barrier()

    def gather_rows(self, rows: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Each rank's 2-D float64 array (own row count, same width) collected at root as a
        list indexed by rank; None elsewhere. Gather of counts, then Gatherv: no pickle."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        if self.size == 1:
            return [rows.copy()]
        width = rows.shape[1]
        counts = np.zeros(self.size, dtype=np.int64)
        with self._watch("Gather(counts)"):
            self._comm.Gather(np.array([rows.shape[0]], dtype=np.int64), counts, root=root)
        with self._watch("Gatherv(rows)"):
            if self.rank != root:
                self._comm.Gatherv(rows, None, root=root)
                return None
            recv = np.empty((int(counts.sum()), width))
            self._comm.Gatherv(rows, [recv, (counts * width).tolist()], root=root)
        return np.split(recv, np.cumsum(counts)[:-1])

    # -- groups and point to point (model parallelism) -------------------------------
    def split(self, color: int, key: int, name: str) -> "Communicator":
        """The ranks that gave the same `color`, ordered by `key` (MPI_Comm_split); `name` (such
        as "tensor group") appears in the watchdog's messages. The group reports its waits to
        this communicator, so the one watchdog of the world sees a rank stuck in a group."""
        return GroupCommunicator(self._comm.Split(color=color, key=key), self._MPI, self, name)

    def isend(self, buf: np.ndarray, dest: int, tag: int):
        """Start sending a contiguous array to `dest`; keep `buf` alive until wait_sends."""
        return self._comm.Isend(buf, dest=dest, tag=tag)

    def wait_sends(self, requests, what: str = "Waitall(sends)") -> None:
        if requests:
            with self._watch(what):
                self._MPI.Request.Waitall(requests)

    def recv_(self, buf: np.ndarray, source: int, tag: int, what: str = "Recv") -> np.ndarray:
        with self._watch(what):
            self._comm.Recv(buf, source=source, tag=tag)
        return buf

    def gather_flat(self, buf: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Each rank's 1-D array (own length, one dtype) at root as a list indexed by rank;
        None elsewhere (Gather of the lengths, then Gatherv)."""
        buf = np.ascontiguousarray(buf)
        if self.size == 1:
            return [buf.copy()]
        counts = np.zeros(self.size, dtype=np.int64)
        with self._watch("Gather(lengths)"):
            self._comm.Gather(np.array([buf.size], dtype=np.int64), counts, root=root)
        with self._watch("Gatherv(shards)"):
            if self.rank != root:
                self._comm.Gatherv(buf, None, root=root)
                return None
            recv = np.empty(int(counts.sum()), dtype=buf.dtype)
            self._comm.Gatherv(buf, [recv, counts.tolist()], root=root)
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
            with self._watch("Allreduce(failure flag)"):
                self._comm.Allreduce(self._MPI.IN_PLACE, flag, op=self._MPI.MIN)
        first = int(flag[0])
        return None if first >= self.size else first

    def any_true(self, value: bool) -> bool:
        flag = np.array([1 if value else 0], dtype=np.int32)
        if self.size > 1:
            with self._watch("Allreduce(flag)"):
                self._comm.Allreduce(self._MPI.IN_PLACE, flag, op=self._MPI.MAX)
        return bool(flag[0])

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards our output asynchronously and stops forwarding once the abort
        # tears the job down; without a pause the message explaining it is sometimes lost.
        time.sleep(0.5)
        self._comm.Abort(code)
        os._exit(code)  # should MPI_Abort return before the launcher ends this process

    def wtime(self) -> float:
        return self._MPI.Wtime()

    def finalize(self) -> None:
        """MPI_Finalize now (before a deliberate os._exit); every rank must call it."""
        if not self._MPI.Is_finalized():
            self._MPI.Finalize()


class GroupCommunicator(Communicator):
    """A sub-group of the world (a tensor, pipeline or data group of a model-parallel grid).
    Waits and the step context are kept on the world's communicator, whose watchdog then
    names the group's collective; an abort ends the whole job."""

    def __init__(self, mpi_comm, MPI, parent: Communicator, name: str):
        self._root = parent._root if isinstance(parent, GroupCommunicator) else parent
        super().__init__(mpi_comm, MPI)
        self.name = name
        self.blas_threads = getattr(self._root, "blas_threads", None)
        self.traffic: dict[str, int] = {}  # bytes passed to each kind of Allreduce (benchmarks)

    def allreduce_sum_(self, buf: np.ndarray, what: str = "Allreduce(sum)") -> np.ndarray:
        if self.size > 1:
            self.traffic[what] = self.traffic.get(what, 0) + buf.nbytes
        return super().allreduce_sum_(buf, what)

    @property
    def waiting_in(self):
        return self._root.waiting_in

    @waiting_in.setter
    def waiting_in(self, value):
        if value is not None:
            value = (f"{value[0]} in the {self.name}", value[1])
        if hasattr(self, "_root"):
            self._root.waiting_in = value

    @property
    def context(self):
        return self._root.context

    @context.setter
    def context(self, value):
        if hasattr(self, "_root"):
            self._root.context = value

    def abort(self, code: int = 1) -> None:
        self._root.abort(code)


class SerialComm(Communicator):
    """A world of one for machines where mpi4py cannot load an MPI library. The base class
    already returns early at size 1 from every collective; only what touches MPI itself is here."""

    def __init__(self):  # noqa: D401 - no MPI at all
        self.rank, self.size, self._node_info = 0, 1, (1, 0)
        self.waiting_in, self.context = None, ""

    @property
    def library(self) -> str:
        return "none (serial stand-in)"

    def split(self, color, key, name):
        return self  # a world of one is its own only group

    # A world of one: every reduction is already complete.
    def iallreduce_sum(self, buf, codec=None):
        return None

    def test_all(self, requests):
        return True

    def thread_can_communicate(self):
        return False

    def wait_all(self, requests):
        pass

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def wtime(self):
        return time.perf_counter()

    def finalize(self):
        pass


def _yield_when_oversubscribed() -> None:
    """More ranks than cores on this node: waiting ranks must yield the core instead of
    busy-polling, or they starve the rank they wait for (2.3x faster here for 4 ranks on
    2 cores). Read by MPICH (and Open MPI) at MPI_Init; a user's own setting wins."""
    local = next((os.environ[v] for v in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
                  if os.environ.get(v, "").isdigit()), "1")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if int(local) > cores:
        os.environ.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")


def _start_mpi_or_exit_if_a_peer_rank_never_starts(timeout: float | None):
    """Import mpi4py.MPI (MPI_Init). MPI_Init waits for every rank; a rank that is stopped or
    hung before it would hang its peers here, holding the GIL, where no Python watchdog runs.
    faulthandler's timer is a C thread: after `timeout` s it prints this function's name and
    the stack to stderr and exits, and the launcher then ends the job."""
    import faulthandler
    if timeout:
        faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        from mpi4py import MPI
    finally:
        if timeout:
            faulthandler.cancel_dump_traceback_later()
    return MPI


def world(startup_timeout: float | None = None) -> Communicator:
    """The communicator of all ranks; starts MPI on first use (exiting after `startup_timeout`
    seconds if some rank never reaches MPI_Init)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    _yield_when_oversubscribed()
    try:
        MPI = _start_mpi_or_exit_if_a_peer_rank_never_starts(startup_timeout)
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
