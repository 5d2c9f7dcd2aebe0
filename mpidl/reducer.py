"""How the ranks' gradients are combined each step and how the update is applied.

No MPI here: every collective is a method of ``mpidl.comm.Communicator``. One object per
run, chosen from the config by :func:`make_gradient_sync`; the trainer calls, each step::

    sync.arm()                        # before the last backward of the step (buckets start early)
    ...backward...
    sync.finish()                     # gradients (or this rank's shard of them) are the mean
    data, grad = sync.update_arrays()
    optimizer.step(data, grad, lr)
    sync.after_update()               # ZeRO: gather the updated parameter shards

Strategies:

- ``GradientSync``: one in-place Allreduce of the whole flat buffer after backward.
- ``BucketSync`` (--bucket-mb, --grad-compression): the flat buffer cut into buckets from
  its end; a bucket starts reducing (Iallreduce) as soon as backward has finished every
  layer whose parameters lie in it. Buckets start in the same order on every rank because
  the order depends only on the model. Progress comes from MPI_Testall between layers
  (--overlap test) or from a thread doing blocking Allreduces (--overlap thread).
  With a 16-bit codec each bucket is pre-scaled by 1/ranks, encoded, summed in float32
  by a user-defined MPI operation, decoded; a bucket whose sum still overflowed
  (inf/NaN, seen identically on every rank) is reduced again in full precision.
- ``HierarchicalSync`` (--allreduce hierarchical): Reduce to each node's leader,
  Allreduce among leaders, Bcast in the node.
- ``ZeroSync`` (--zero 1): Reduce_scatter of the padded gradient buffer, the optimiser
  updates only this rank's shard (its state is allocated for the shard alone), then
  Allgather of the parameters.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from mpidl.compress import DECODE, ENCODE
from mpidl.layers import Layer
from mpidl.params import Param, ParamStore

MB = 2 ** 20


class GradientSync:
    """The plain synchronous path: one Allreduce of the whole gradient buffer."""

    # The trainer multiplies the loss gradient by this before backward. The plain path folds
    # the 1/ranks of the mean in there (a multiply on a batch x outputs array, exact for a
    # power-of-two rank count), so the reduction is a bare Allreduce with no pass over the
    # buffer afterwards. The other strategies divide their own sums and set it to 1.
    grad_scale_folded = True

    def __init__(self, comm, store: ParamStore):
        self.comm, self.store = comm, store
        self.exposed_time = 0.0   # seconds spent in finish(): communication not hidden by compute
        self.steps = 0
        self.grad_scale = 1.0 / comm.size if self.grad_scale_folded else 1.0

    def describe(self) -> str:
        return "one Allreduce of the flat gradient buffer after backward"

    def optimizer_target(self) -> tuple[np.ndarray, np.ndarray]:
        """The parameters this rank's optimiser updates, and their weight-decay mask."""
        return self.store.data, self.store.decay_mask()

    def arm(self) -> None:
        """The next backward is the step's last: reduction may start during it."""

    def finish(self) -> None:
        t0 = time.perf_counter()
        self._finish()
        self.exposed_time += time.perf_counter() - t0
        self.steps += 1

    def _finish(self) -> None:
        # already scaled by 1/ranks: the sum is the mean
        self.comm.allreduce_sum_(self.store.grad, what="Allreduce(gradients)")

    def update_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.store.data, self.store.grad

    def all_finite(self, grad: np.ndarray) -> bool:
        """Whether the reduced gradient is finite; the same answer on every rank, because the
        reduced gradient is the same everywhere (a sum propagates NaN and inf)."""
        return bool(np.isfinite(grad.sum()))

    def after_update(self) -> None:
        pass


class HierarchicalSync(GradientSync):
    grad_scale_folded = False

    def __init__(self, comm, store, ranks_per_node: int | None = None):
        super().__init__(comm, store)
        from mpidl.comm import ranks_per_node_from_env  # no MPI: reads the environment once
        self.ranks_per_node = ranks_per_node or ranks_per_node_from_env()
        if comm.size > 1:
            node, leaders = comm.node_groups(ranks_per_node)
            self.node_size = node.Get_size()
            self.nodes = leaders.Get_size() if leaders is not None else 0
        else:
            self.node_size, self.nodes = 1, 1

    def describe(self) -> str:
        return (f"hierarchical: Reduce to the node leader, Allreduce among leaders, Bcast in the node "
                f"(this rank's node has {self.node_size} rank(s))")

    def _finish(self) -> None:
        grad = self.store.grad
        self.comm.hierarchical_allreduce_sum_(grad, self.ranks_per_node)
        grad /= self.comm.size


class ZeroSync(GradientSync):
    """ZeRO stage 1: each rank keeps optimiser state for 1/size of the parameters."""

    grad_scale_folded = False

    def __init__(self, comm, store):
        super().__init__(comm, store)
        total = len(store.padded_grad)
        if total % comm.size:
            raise ValueError("ZeRO needs the store allocated with pad_to = number of ranks")
        self.shard_len = total // comm.size
        start = comm.rank * self.shard_len
        self.shard = slice(start, start + self.shard_len)
        self.shard_grad = np.zeros(self.shard_len, dtype=store.grad.dtype)

    def describe(self) -> str:
        return (f"ZeRO-1: Reduce_scatter of gradients, update of this rank's {self.shard_len} of "
                f"{self.store.size} parameters, Allgather of parameters")

    def optimizer_target(self):
        mask = np.zeros(len(self.store.padded_data), dtype=self.store.data.dtype)
        mask[:self.store.size] = self.store.decay_mask()
        return self.store.padded_data[self.shard], mask[self.shard].copy()

    def _finish(self) -> None:
        self.comm.reduce_scatter_sum(self.store.padded_grad, self.shard_grad)
        self.shard_grad /= self.comm.size

    def update_arrays(self):
        return self.store.padded_data[self.shard], self.shard_grad

    def all_finite(self, grad) -> bool:
        # Each rank holds only its shard: agree with one tiny Allreduce.
        return not self.comm.any_true(not np.isfinite(grad.sum()))

    def after_update(self) -> None:
        self.comm.allgather_blocks_(self.store.padded_data)


def layer_params(obj, _seen=None) -> list[Param]:
    """Every Param a layer owns, found through its attributes (nested layers, lists of them)."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, Param):
        return [obj]
    if isinstance(obj, (list, tuple)):
        items = obj
    elif isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, Layer):
        items = list(vars(obj).values())
    else:
        return []
    found = []
    for item in items:
        if isinstance(item, (Param, Layer, list, tuple, dict)):
            found += layer_params(item, seen)
    return found


def cut_buckets(store: ParamStore, bucket_bytes: float) -> list[tuple[int, int]]:
    """[start, end) element ranges of the flat buffer, from its end backwards, each at least
    `bucket_bytes` (except the first parameters left over) and cut at parameter boundaries."""
    itemsize = store.grad.dtype.itemsize
    bounds = sorted(p.offset for p in store.params)
    buckets, end = [], store.size
    for start in reversed(bounds):
        if (end - start) * itemsize >= bucket_bytes:
            buckets.append((start, end))
            end = start
    if end > 0:
        buckets.append((0, end))
    return buckets


class BucketSync(GradientSync):
    grad_scale_folded = False

    def __init__(self, comm, store, net, bucket_bytes: float | None, overlap: str = "test",
                 codec: str | None = None):
        super().__init__(comm, store)
        self.codec, self.overlap = codec, overlap
        self.buckets = cut_buckets(store, bucket_bytes) if bucket_bytes else [(0, store.size)]
        self.net = net
        self.ready_after = self._ready_frontiers(net, store) if bucket_bytes else None
        self.words = np.zeros(store.size, dtype=np.uint16) if codec else None
        self.fallbacks = 0          # buckets whose 16-bit sum overflowed and were redone in full precision
        self.launch_log: list[int] = []   # bucket indices in the order this step started them
        self.last_order: list[int] = []   # ... and the last finished step
        self.last_started_early = 0       # buckets of the last step started during backward
        self._next = 0
        self._requests: list = []
        self._armed = False
        if (overlap == "thread" and self.ready_after is not None and comm.size > 1
                and comm.thread_can_communicate()):
            self._queue: queue.Queue = queue.Queue()
            self._error = None
            self._worker = threading.Thread(target=self._serve, name="mpidl-allreduce", daemon=True)
            self._worker.start()
        else:
            self.overlap = "test"

    def describe(self) -> str:
        what = f"{len(self.buckets)} bucket(s)"
        if self.ready_after is None and len(self.buckets) > 1:
            what += " (no overlap: layers' parameters not found)"
        elif self.ready_after is not None:
            what += f", started during backward, progress by {'MPI_Testall' if self.overlap == 'test' else 'a thread'}"
        return what + (f", {self.codec} on the wire" if self.codec else "")

    @staticmethod
    def _ready_frontiers(net, store):
        """ready_after[i]: after layers[i].backward, every gradient at or beyond this flat
        offset is final (all later-declared parameters belong to layers already done).
        None if the net's parameters cannot all be found layer by layer."""
        layers = getattr(net, "layers", None)
        if layers is None or not hasattr(net, "backward_hook"):
            return None
        owned = [layer_params(layer) for layer in layers]
        if sorted(p.offset for ps in owned for p in ps) != sorted(p.offset for p in store.params):
            return None
        ready, frontier = [], 0
        for ps in owned:  # ready_after[i] = largest end among layers[:i]
            ready.append(frontier)
            frontier = max([frontier] + [p.offset + p.size for p in ps])
        return ready

    # -- during backward -------------------------------------------------------------
    def arm(self) -> None:
        if self.ready_after is not None:
            self._armed = True
            self.net.backward_hook = self._layer_done

    def _layer_done(self, index: int) -> None:
        frontier = self.ready_after[index]
        while self._next < len(self.buckets) and self.buckets[self._next][0] >= frontier:
            self._launch(self._next)
        if self._requests:
            self.comm.test_all(self._requests)

    def _prepare(self, index):
        """The buffer that travels for bucket `index` (encoded words or the gradients)."""
        start, end = self.buckets[index]
        if self.codec is None:
            return self.store.grad[start:end]
        scaled = self.store.grad[start:end] / self.comm.size
        return ENCODE[self.codec](scaled, out=self.words[start:end])

    def _launch(self, index: int) -> None:
        self.launch_log.append(index)
        self._next = index + 1
        buf = self._prepare(index)
        if self.overlap == "thread":
            self._queue.put(buf)
        else:
            self._requests.append(self.comm.iallreduce_sum(buf, self.codec))

    def _serve(self) -> None:
        while True:
            buf = self._queue.get()
            try:
                self.comm.allreduce_encoded_sum_(buf, self.codec)
            except BaseException as exc:  # surfaced by finish() in the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    # -- after backward ----------------------------------------------------------------
    def _finish(self) -> None:
        if self._armed:
            self.net.backward_hook = None
            self._armed = False
        started_early = len(self.launch_log)
        # Buckets not started yet (no overlap, or layers without input gradient) go now,
        # blocking: nothing is left to overlap with.
        while self._next < len(self.buckets):
            index = self._next
            self.launch_log.append(index)
            self._next += 1
            buf = self._prepare(index)
            if self.overlap == "thread":
                self._queue.put(buf)
            else:
                self.comm.allreduce_encoded_sum_(buf, self.codec)
        if self.overlap == "thread":
            self._queue.join()
            if self._error is not None:
                raise self._error
        else:
            self.comm.wait_all(self._requests)
        self._requests = []
        self._next = 0
        self._complete()
        self.last_order, self.launch_log = self.launch_log, []
        self.last_started_early = started_early

    def _complete(self) -> None:
        grad = self.store.grad
        if self.codec is None:
            grad /= self.comm.size
            return
        decode = DECODE[self.codec]
        for start, end in self.buckets:
            mean = decode(self.words[start:end])
            if np.isfinite(mean).all():
                grad[start:end] = mean
            else:  # the same on every rank, so every rank takes this branch
                self.fallbacks += 1
                self.comm.allreduce_mean_(grad[start:end])


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the optimiser's persistent state (moments, velocity) on this rank."""
    return sum(v.nbytes for v in optimizer.state_dict().values() if isinstance(v, np.ndarray) and v.ndim)


def make_gradient_sync(cfg, comm, model) -> GradientSync:
    store = model.store
    if getattr(cfg, "zero", 0):
        return ZeroSync(comm, store)
    if getattr(cfg, "allreduce", "flat") == "hierarchical":
        return HierarchicalSync(comm, store)
    codec = None if getattr(cfg, "grad_compression", "none") == "none" else cfg.grad_compression
    bucket_mb = getattr(cfg, "bucket_mb", 0.0)
    if bucket_mb > 0 or codec:
        return BucketSync(comm, store, model.net, bucket_mb * MB if bucket_mb > 0 else None,
                          getattr(cfg, "overlap", "test"), codec)
    return GradientSync(comm, store)
