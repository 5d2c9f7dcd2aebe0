"""How the ranks' gradients are combined each step and how the update is applied.

No mpi4py here: every collective is a method of ``mpidl.parallel.comm.Communicator``
(hierarchical allreduce gets the node groups from it). One strategy object per run, chosen by
:func:`make_sync`; :class:`DistributedOptimizer` drives it, each step::

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

import hashlib
import queue
import threading
import time

import numpy as np

from mpidl import __version__
from mpidl.errors import ConfigError, TrainingHalted

from mpidl.parallel.comm import ranks_per_node_from_env
from mpidl.parallel.compress import DECODE, ENCODE
from mpidl.params import ParamStore

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
        self.ranks_per_node = ranks_per_node or ranks_per_node_from_env()
        self.node_size, self.nodes = comm.node_shape(self.ranks_per_node)

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
        owned = [layer.parameters() for layer in layers]
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


class AutoSync(GradientSync):
    """--allreduce auto: measures the link (alpha, beta) and the 16-bit codecs' cost at
    start-up, reduces the first step flat while timing when each layer's gradients are ready
    in its backward, then takes the reduction with the shortest predicted wait after backward
    (costmodel.reduction_wait): flat, bf16 or fp16, whole or in buckets of 1, 4 or 16 MiB
    started during backward. A net without per-layer hooks gets the choice at start-up,
    without buckets."""
    grad_scale_folded = False
    CODECS = (None, "bf16", "fp16")
    BUCKET_MB = (0, 1, 4, 16)

    def __init__(self, comm, store, net, overlap: str = "test", announce=None):
        from mpidl.parallel import costmodel
        super().__init__(comm, store)
        self.net, self.overlap = net, overlap
        self.announce = announce or (lambda *a, **k: None)
        self.inner = BucketSync(comm, store, net, None, overlap, None)  # flat, mean taken after
        self.predicted: dict[str, float] = {}
        if comm.size == 1:
            self.chosen, self.deciding = "--allreduce auto: one rank, nothing to reduce", False
            return
        self.alpha, self.beta = costmodel.measure_link(comm)
        # the slowest rank's coding sets the pace of every ring step
        own = np.array([costmodel.codec_seconds_per_element(c, store.size) for c in self.CODECS if c])
        _, slowest = comm.allreduce_min_max(own)
        self.codec_cost = dict(zip([c for c in self.CODECS if c], slowest.tolist()))
        self.ready_after = BucketSync._ready_frontiers(net, store)
        self.link = costmodel.describe_link(self.alpha, self.beta)
        self._hook_times: list[tuple[int, float]] = []
        self.deciding = self.ready_after is not None
        if self.deciding:
            self.chosen = f"--allreduce auto: {self.link}; chooses after timing the first step's backward"
        else:
            self._decide([], 0.0)

    def describe(self) -> str:
        if self.inner.codec is None and len(self.inner.buckets) == 1:
            return GradientSync.describe(self)
        return self.inner.describe()

    def arm(self) -> None:
        if self.deciding:
            self._hook_times = []
            self.net.backward_hook = lambda index: self._hook_times.append((index, time.perf_counter()))
        else:
            self.inner.arm()

    def _finish(self) -> None:
        if not self.deciding:
            self.inner._finish()
            return
        ended = time.perf_counter()
        self.net.backward_hook = None
        self.inner._finish()
        if self._hook_times:  # the step's last backward was timed (not a step without one)
            self.deciding = False
            ready = [(index, t - ended) for index, t in self._hook_times]
            self._decide(ready, ended - self._hook_times[0][1])

    def _bucket_ready(self, buckets, ready) -> list[tuple[int, float]]:
        """(elements, seconds before the end of backward) of each bucket, as BucketSync
        would launch them: at the first layer after which everything in the bucket is final."""
        out = []
        for start, end in buckets:
            when = next((t for index, t in ready if self.ready_after[index] <= start), 0.0)
            out.append((end - start, when))
        return out

    def _decide(self, ready, backward_s: float) -> None:
        from mpidl.parallel import costmodel
        p, itemsize, plans = self.comm.size, self.store.grad.dtype.itemsize, {}
        for codec in self.CODECS:
            seen = []
            for mb in (self.BUCKET_MB if ready else (0,)):
                buckets = cut_buckets(self.store, mb * MB) if mb else [(0, self.store.size)]
                if buckets in seen:
                    continue  # the same cut as a smaller size (or the whole buffer)
                seen.append(buckets)
                name = ", ".join(filter(None, [codec, f"buckets {mb} MiB" if mb else None])) or "flat"
                plans[name] = (codec, mb)
                self.predicted[name] = costmodel.reduction_wait(
                    p, self.alpha, self.beta, self._bucket_ready(buckets, ready) if mb else [(self.store.size, 0.0)],
                    2 if codec else itemsize, self.codec_cost.get(codec, 0.0))
        best = costmodel.choose(self.comm, self.predicted, lossy={k for k, (codec, _) in plans.items() if codec})
        codec, mb = plans[best]
        if codec or mb:
            self.inner = BucketSync(self.comm, self.store, self.net, mb * MB if mb else None, self.overlap, codec)
        timed = f"backward {backward_s * 1e3:.1f} ms (timed in step 1); " if ready else ""
        self.chosen = (f"--allreduce auto: {self.link}; {timed}predicted wait after backward for "
                       f"{self.store.size * itemsize / MB:.2f} MiB: " +
                       ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.predicted.items()) + f" -> {best}")
        if ready:
            self.announce(f"communication: {self.chosen}; {self.inner.describe()}", flush=True)


def make_sync(comm, model, *, zero: bool = False, allreduce: str = "flat", bucket_mb: float = 0.0,
              overlap: str = "test", compression: str | None = None, announce=None) -> GradientSync:
    """The strategy these options name (see the module docstring); refuses combinations that
    are not implemented."""
    codec = None if compression in (None, "none") else compression
    if zero and (bucket_mb or codec or allreduce != "flat"):
        raise ConfigError("--zero 1 does not combine with --bucket-mb, --grad-compression or --allreduce hierarchical")
    if allreduce == "hierarchical" and (bucket_mb or codec):
        raise ConfigError("--allreduce hierarchical does not combine with --bucket-mb or --grad-compression")
    if allreduce not in ("flat", "hierarchical", "auto"):
        raise ConfigError(f"--allreduce {allreduce!r}: choose flat, hierarchical or auto")
    store = model.store
    if allreduce == "auto":
        if zero or codec or bucket_mb:
            raise ConfigError("--allreduce auto chooses the compression and the buckets itself: "
                              "leave out --grad-compression, --bucket-mb and --zero")
        return AutoSync(comm, store, model.net, overlap, announce)
    if zero:
        store.pad(comm.size)
        return ZeroSync(comm, store)
    if allreduce == "hierarchical":
        return HierarchicalSync(comm, store)
    if bucket_mb > 0 or codec:
        return BucketSync(comm, store, model.net, bucket_mb * MB if bucket_mb > 0 else None, overlap, codec)
    return GradientSync(comm, store)


def broadcast_and_verify(comm, model, **digests: bytes) -> None:
    """Start-up agreement (what DDP's constructor does): every rank must run the same mpidl
    and build the same parameter layout (and agree on whatever else is given, e.g.
    configuration=...); then rank 0's initial weights are broadcast. A disagreement raises
    MismatchError on every rank, naming what differs."""
    comm.check_same(f"mpidl version (this rank runs {__version__})", hashlib.sha256(__version__.encode()).digest())
    for what, digest in digests.items():
        comm.check_same(what.replace("_", " "), digest)
    comm.check_same("model parameter layout", model.store.layout_digest())
    comm.bcast_(model.store.data, root=0)


class DistributedOptimizer:
    """Wraps an optimiser so that its step updates every replica alike (Horovod's and
    ChainerMN's DistributedOptimizer): ``step()`` reduces the gradients with the chosen
    strategy, takes the agreed finite/non-finite decision, updates, gathers ZeRO shards, and
    leaves the gradients zeroed for the next step.

    Your loop, on every rank::

        dopt = mpidl.DistributedOptimizer(mpidl.optim.Adam(model, lr=1e-3), model)
        for step in sampler.epoch(epoch):
            dopt.zero_grad()
            model.loss_and_backward(x[step.indices], y[step.indices], step.weight)
            dopt.step()

    Where the work is folded together for speed, it is named here: on the plain path the
    1/ranks of the gradient mean is multiplied into the loss gradient (``loss_scale``, which
    this class hands the model as ``model.loss_scale``) instead of dividing the reduced
    buffer; and the optimiser zeroes each block of gradients as it consumes it, so
    ``zero_grad()`` is a no-op after a successful step. If you call ``net.backward`` yourself,
    multiply your loss gradient by ``dopt.loss_scale``.

    Construction is collective: it checks that all ranks built the same model and broadcasts
    rank 0's weights (``broadcast=False`` skips that).
    """

    def __init__(self, optimizer, model, comm=None, *, zero: bool = False, allreduce: str = "flat",
                 bucket_mb: float = 0.0, overlap: str = "test", compression: str | None = None,
                 on_nonfinite: str = "skip", broadcast: bool = True, warn=None):
        from mpidl.parallel.comm import world
        if on_nonfinite not in ("skip", "abort"):
            raise ConfigError(f"on_nonfinite={on_nonfinite!r}: choose skip or abort")
        grid = getattr(model, "grid", None)  # a ShardedModel: replicas of this shard reduce together
        self.comm = comm if comm is not None else (grid.data if grid is not None else world())
        # The ranks holding the other shards of this replica, which must take the same decision
        # on a non-finite gradient although each sees only its own shard's.
        self.model_group = grid.model if grid is not None and grid.model.size > 1 else None
        self.model, self.store, self.optimizer = model, model.store, optimizer
        self.on_nonfinite = on_nonfinite
        self.warn = warn if warn is not None else (print if self.comm.rank == 0 else (lambda *a, **k: None))
        self.sync = make_sync(self.comm, model, zero=zero, allreduce=allreduce, bucket_mb=bucket_mb,
                              overlap=overlap, compression=compression, announce=self.warn)
        data, mask = self.sync.optimizer_target()
        optimizer.bind(data, mask)  # ZeRO: state for this rank's shard only
        self.loss_scale = self.sync.grad_scale
        model.loss_scale = self.loss_scale
        self.skipped_steps = 0      # updates skipped for non-finite gradients
        self.where = ""             # the step, for messages (the trainer keeps it current)
        self._zeroed = False        # the last update left the gradients zeroed
        buffers = self.store.buffer_mask()
        self._buffers = np.flatnonzero(buffers) if buffers.any() else None
        self._weights = ~buffers if buffers.any() else None
        if broadcast:
            broadcast_and_verify(self.comm, model)
        self._kernels_agreed = self.comm.size == 1  # see agree_on_kernels

    def describe(self) -> str:
        chosen = getattr(self.sync, "chosen", "")
        return (chosen + "; " if chosen else "") + self.sync.describe()

    def state_bytes(self) -> int:
        """Bytes of the optimiser's persistent state (moments, velocity) on this rank."""
        return sum(v.nbytes for v in self.optimizer.state_dict().values()
                   if isinstance(v, np.ndarray) and v.ndim)

    # -- checkpoints: the optimiser state in the layout of the whole flat buffer ----------
    def _sharded(self, value) -> bool:
        return (isinstance(self.sync, ZeroSync) and isinstance(value, np.ndarray) and value.ndim == 1
                and value.size == self.sync.shard_len)

    def checkpoint_state(self) -> dict:
        """Collective: the optimiser state as a run without ZeRO would hold it (ZeRO's shards
        gathered, padding dropped), so that a checkpoint does not depend on the rank count."""
        out = {}
        for key, value in self.optimizer.state_dict().items():
            if self._sharded(value):
                full = np.zeros(len(self.store.padded_data), dtype=value.dtype)
                full[self.sync.shard] = value
                self.comm.allgather_blocks_(full)
                value = full[:self.store.size]
            out[key] = value
        return out

    def checkpoint_shapes(self) -> dict:
        """The shape of each array checkpoint_state returns (no communication)."""
        return {key: (self.store.size,) if self._sharded(value) else np.shape(value)
                for key, value in self.optimizer.state_dict().items()}

    def load_checkpoint_state(self, state: dict) -> None:
        """The inverse of checkpoint_state, on every rank: under ZeRO each keeps its shard."""
        mine = {}
        for key, value in self.optimizer.state_dict().items():
            if self._sharded(value):
                full = np.zeros(len(self.store.padded_data), dtype=value.dtype)
                full[:self.store.size] = state[key]
                mine[key] = full[self.sync.shard]
            else:
                mine[key] = state[key]
        self.optimizer.load_state_dict(mine)

    def zero_grad(self, arm: bool = True) -> None:
        """Ready the gradient buffer for this step's backward (a no-op when the last update
        already zeroed it); `arm`: the next backward is the step's last, so bucket reductions
        may start during it."""
        if not self._zeroed:
            self.store.zero_grad()
        self._zeroed = False
        if arm:
            self.sync.arm()

    def arm(self) -> None:
        self.sync.arm()

    def step(self, lr: float | None = None, lap=None) -> bool:
        """Reduce, check, update. Returns False when the update was skipped because the
        averaged gradient was not finite (every rank decides alike); raises TrainingHalted
        instead with on_nonfinite='abort'. `lap`: a step clock's lap function."""
        self.sync.finish()
        if lap is not None:
            lap("allreduce")
        data, grad = self.sync.update_arrays()
        # Decided from the reduced gradient, which every rank holds alike (ZeRO asks its peers).
        # A NaN or inf loss brings a non-finite gradient with it.
        applied = self.sync.all_finite(grad)
        if self.model_group is not None:
            applied = not self.model_group.any_true(not applied)
        if applied:
            # Only the store's own gradient buffer may be zeroed early (ZeRO updates from a shard).
            zero_after = grad is self.store.grad
            self.optimizer.step(data, grad, lr, zero_grad=zero_after)
            if zero_after:
                self.store.mark_grads_zero()
                self._zeroed = True
            self.sync.after_update()
        else:
            self._nonfinite()
        if not self._kernels_agreed:
            self.agree_on_kernels()
        if lap is not None:
            lap("optimizer")
        return applied

    def agree_on_kernels(self) -> None:
        """Collective, once, after the first step: every rank takes the convolution kernels rank
        0's layers measured fastest on their first batch (nn.Conv2d, algorithm 'auto'), so that
        all replicas round alike from the second step on."""
        from mpidl.nn.conv import kernel_choices, set_kernel_choices
        self._kernels_agreed = True
        net = getattr(self.model, "net", None)
        codes = kernel_choices(net) if net is not None else None
        if codes is not None and codes.size:
            self.comm.bcast_(codes)
            set_kernel_choices(net, codes)

    def _nonfinite(self) -> None:
        where = f" at {self.where}" if self.where else ""
        if self.on_nonfinite == "abort":
            raise TrainingHalted(f"non-finite loss or gradient{where}; --on-nonfinite abort. "
                                 "Lower --lr, check the inputs, or use --on-nonfinite skip")
        self.skipped_steps += 1
        self.warn(f"warning: non-finite loss or gradient{where}: update skipped "
                  f"({self.skipped_steps} so far)", flush=True)

    def sync_buffers(self) -> None:
        """Collective: average the buffers (running statistics of plain BatchNorm, which each
        rank updates from its own slice) over the ranks, so that every replica evaluates and
        saves the same model. Trainer calls it before each evaluation and checkpoint; a loop
        of your own calls it before evaluating or saving."""
        if self._buffers is None or self.comm.size == 1:
            return
        values = self.store.data[self._buffers]
        self.comm.allreduce_sum_(values, what="Allreduce(buffers)")
        values /= self.comm.size
        self.store.data[self._buffers] = values

    def check_replicas(self, on_drift: str = "repair") -> bool:
        """Compare a 53-bit hash of the weights (buffers left out: they may differ by design)
        across ranks with one small collective. On a mismatch, repair from rank 0 (weights and
        optimiser state) or halt."""
        weights = self.store.data if self._weights is None else self.store.data[self._weights]
        digest = hashlib.blake2b(weights.tobytes(), digest_size=8).digest()
        h = float(int.from_bytes(digest, "little") >> 11)  # 53 bits: exact in a float64
        lo, hi = self.comm.allreduce_min_max(np.array([h]))
        if lo[0] == hi[0]:
            return True
        where = f" at {self.where}" if self.where else ""
        if on_drift == "abort":
            raise TrainingHalted(f"replicas have drifted apart{where} (weight checksums differ "
                                 "between ranks); --on-drift abort")
        self.comm.bcast_(self.store.data, root=0)
        for value in self.optimizer.state_dict().values():
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.size == self.store.size:
                self.comm.bcast_(value, root=0)
        self.warn(f"warning: replicas had drifted apart{where}; repaired from rank 0", flush=True)
        return False
