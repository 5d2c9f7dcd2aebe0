"""The data-parallel training loop.

Each rank: the same model (rank 0's initial weights broadcast), its own slice of every
global batch, local gradients, one Allreduce of the flat gradient buffer, the same
optimiser step. Start-up compares config, parameter layout and dataset across ranks.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from mpidl import __version__
from mpidl.comm import Communicator
from mpidl.config import RunConfig
from mpidl.data import ShardedSampler, eval_shard, load_dataset
from mpidl.data.cache import default_cache_dir, npy_cache
from mpidl.data.prefetch import InlineBatches, Prefetcher
from mpidl.errors import ConfigError, TrainingHalted
from mpidl.models import MODELS, Model
from mpidl.optim import Schedule, make_optimizer
from mpidl.reducer import make_gradient_sync, optimizer_state_bytes
from mpidl.timing import LOADER_THREAD, PHASES, StepClock, gather_summary, write_timeline


@dataclass
class EpochMetrics:
    epoch: int
    step: int
    train_loss: float
    val_loss: float
    val_accuracy: float | None
    samples_per_sec: float
    wall_time: float
    lr: float
    val_terms: dict = field(default_factory=dict)  # a multi-term loss's parts (VAE: recon_bce, kl)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Trainer:
    def __init__(self, cfg: RunConfig, comm: Communicator):
        self.cfg, self.comm = cfg, comm
        self.dtype = np.dtype(cfg.dtype)
        spec = MODELS[cfg.model]
        cache_dir = default_cache_dir() if cfg.cache_dir is None else cfg.cache_dir
        with npy_cache(None if cache_dir.lower() == "none" else cache_dir, comm):
            self.data = load_dataset(cfg.dataset, cfg.data_dir)
        if spec.task != self.data.task and spec.task != "generative":
            raise ConfigError(f"--model {cfg.model} ({spec.task}) cannot train on --dataset {cfg.dataset} "
                              f"({self.data.task})")
        n_train = len(self.data.x_train)
        if cfg.batch_size < comm.size:
            raise ConfigError(f"--batch-size {cfg.batch_size}: the global batch must hold at least one "
                              f"sample per rank ({comm.size} ranks)")
        if cfg.batch_size > n_train:
            raise ConfigError(f"--batch-size {cfg.batch_size}: larger than the {n_train} training samples "
                              f"of {cfg.dataset}")

        # Per-rank random streams (dropout masks, VAE noise, augmentation): seeded from the
        # run seed and the rank, so a run is reproducible and ranks do not draw the same numbers.
        self.model_rng = np.random.default_rng([cfg.seed, comm.rank, 1])
        self.data_rng = np.random.default_rng([cfg.seed, comm.rank, 2])
        self.model = Model(cfg.model, self.data.sample_shape, self.data.num_classes,
                           {"hidden": cfg.hidden_sizes(), "rng": self.model_rng, "comm": comm})
        self.model.allocate(self.dtype, cfg.seed, pad_to=comm.size if cfg.zero else 1)
        self.store = self.model.store

        # A mismatch here would otherwise surface as a hang or a silent divergence.
        comm.check_same(f"mpidl version (this rank runs {__version__})",
                        hashlib.sha256(__version__.encode()).digest())
        comm.check_same("configuration", cfg.digest())
        comm.check_same("model parameter layout", self.store.layout_digest())
        comm.check_same(f"dataset {cfg.dataset} (size, shapes or contents)", self.data.digest())
        comm.bcast_(self.store.data, root=0)
        # Per-rank phase times; the timeline keeps the first steps' spans only when asked for.
        self.clock = StepClock(PHASES, record_steps=cfg.timeline_steps if cfg.timeline else 0)
        self.clock.align(comm)

        self.sampler = ShardedSampler(n_train, cfg.batch_size, comm.rank, comm.size, cfg.seed,
                                      drop_last=cfg.drop_last)
        steps_per_epoch = self.sampler.steps_per_epoch
        if cfg.epochs is None and cfg.max_steps is None:
            raise ConfigError("give --epochs or --max-steps")
        epochs = cfg.epochs if cfg.epochs is not None else math.ceil(cfg.max_steps / steps_per_epoch)
        self.total_steps = epochs * steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.epochs = math.ceil(self.total_steps / steps_per_epoch)

        lr = cfg.lr * (comm.size if cfg.lr_scaling == "linear" else 1)
        warmup = cfg.warmup_steps
        if warmup is None:
            warmup = round(0.05 * self.total_steps) if cfg.lr_scaling == "linear" else 0
        self.schedule = Schedule(lr, cfg.schedule, total_steps=self.total_steps, warmup_steps=warmup,
                                 step_size=cfg.lr_step or max(self.total_steps // 3, 1), gamma=cfg.lr_gamma)
        # How gradients are combined (mpidl.reducer); with ZeRO the optimiser sees only this rank's shard.
        self.sync = make_gradient_sync(cfg, comm, self.model)
        opt_data, opt_mask = self.sync.optimizer_target()
        self.optimizer = make_optimizer(cfg.optimizer, opt_data, opt_mask,
                                        weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                        nesterov=cfg.nesterov)
        self.optimizer_state_bytes = optimizer_state_bytes(self.optimizer)
        self._grads_zeroed = False  # True when the last update left the gradients zeroed
        self.global_step = 0
        self.samples_seen = 0
        self.train_time = 0.0
        self.skipped_steps = 0       # updates skipped for non-finite gradients
        self.drift_repairs = 0
        self.warn = print if comm.rank == 0 else (lambda *a, **k: None)
        # Where the loop stands (for checkpoints): the epoch, the steps done in it, and this
        # rank's summed loss and sample count over those steps.
        self.epoch, self.step_in_epoch = 0, 0
        self.epoch_loss = np.zeros(2)
        self._carried_loss = None  # a resumed epoch's loss so far
        self.stop_requested = False  # set by an on_step hook (preemption): fit returns after this step

    def resume_from(self, global_step, epoch, step_in_epoch, epoch_loss):
        """Continue from a checkpoint's position (weights and optimiser are restored by the caller)."""
        self.global_step = int(global_step)
        self.epoch, self.step_in_epoch = int(epoch), int(step_in_epoch)
        self._carried_loss = np.array(epoch_loss, dtype=np.float64)

    # -- one step ------------------------------------------------------------------
    def prepare_batch(self, step):
        """This rank's inputs and targets for `step`: gather, convert, augment (the loader
        thread runs this when prefetching, in step order, so data_rng draws are unchanged)."""
        x = self.data.inputs(self.data.x_train[step.indices], self.dtype)
        if self.data.augment is not None:
            x = self.data.augment(x, self.data_rng)
        y = self.data.y_train[step.indices]
        return x, y

    def batches(self):
        """(step, (x, y)) for every remaining step of the run, from the current (possibly resumed)
        position; prepared ahead by a loader thread with --prefetch."""
        first_epoch, first_step = self.epoch, self.step_in_epoch
        steps = itertools.islice(
            itertools.chain.from_iterable(self.sampler.epoch(e, start=first_step if e == first_epoch else 0)
                                          for e in range(first_epoch, self.epochs)),
            self.total_steps - self.global_step)
        if self.cfg.prefetch > 0:
            return Prefetcher(steps, self.prepare_batch, self.cfg.prefetch,
                              on_prepared=lambda t0, t1: self.clock.span("prepare batch", t0, t1, LOADER_THREAD))
        return InlineBatches(steps, self.prepare_batch)

    def train_step(self, step, batch=None) -> float:
        """One synchronised step; returns this rank's summed loss (mean loss x local samples).
        `batch` is (x, y) when already prepared; the clock's "data" lap then measures the wait."""
        clock = self.clock
        if batch is None:
            clock.begin()
            batch = self.prepare_batch(step)
        x, y = batch
        clock.lap("data")
        self.comm.context = f"step {self.global_step + 1} (epoch {step.epoch + 1})"
        if not self._grads_zeroed:  # else the last update zeroed them on its way (cheaper)
            self.store.zero_grad()
        self._grads_zeroed = False
        n = len(step.indices)
        loss_sum = 0.0
        # --accumulate: this rank's share in micro-batches, each weighted by its size, so the
        # summed gradient is the whole share's mean gradient; one reduction per step.
        if self.cfg.accumulate == 1:  # the usual case: no index arrays to build every step
            parts = [range(n)] if n else []
        else:
            parts = [p for p in np.array_split(np.arange(n), self.cfg.accumulate) if len(p)]
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                self.sync.arm()
            whole = len(part) == n
            loss = self.model.train_step_grads(x if whole else x[part], y if whole else y[part],
                                               weight=step.weight * len(part) / n * self.sync.grad_scale,
                                               lap=clock.lap)
            loss_sum += loss * len(part)
            clock.lap("backward")
        # Exposed communication: what is left of the reduction after backward (all of it
        # unless buckets were started during backward).
        self.sync.finish()
        clock.lap("allreduce")
        data, grad = self.sync.update_arrays()
        # Decided from the reduced gradient, which every rank holds alike (ZeRO asks its peers):
        # all ranks skip or abort together. A NaN or inf loss brings a non-finite gradient with it.
        if self.sync.all_finite(grad):
            # Only the store's own gradient buffer may be zeroed early (ZeRO updates from a shard).
            zero_after = grad is self.store.grad
            self.optimizer.step(data, grad, self.schedule(self.global_step), zero_grad=zero_after)
            self._grads_zeroed = zero_after
            if zero_after:
                self.store.mark_grads_zero()
            self.sync.after_update()
        else:
            self._nonfinite(step)
        clock.lap("optimizer")
        clock.end_step()
        self.global_step += 1
        self.samples_seen += step.global_count
        if self.cfg.check_every and self.global_step % self.cfg.check_every == 0:
            self.check_replicas()
        return loss_sum if math.isfinite(loss_sum) else 0.0

    def _nonfinite(self, step):
        where = f"step {self.global_step + 1} (epoch {step.epoch + 1})"
        if self.cfg.on_nonfinite == "abort":
            raise TrainingHalted(f"non-finite loss or gradient at {where}; --on-nonfinite abort. "
                                 "Lower --lr, check the inputs, or use --on-nonfinite skip")
        self.skipped_steps += 1
        self.warn(f"warning: non-finite loss or gradient at {where}: update skipped "
                  f"({self.skipped_steps} so far)", flush=True)

    def check_replicas(self) -> bool:
        """Compare a 62-bit hash of the weights across ranks with one small collective. On a
        mismatch, repair from rank 0 (weights and optimiser state) or halt, as configured."""
        digest = hashlib.blake2b(self.store.data.tobytes(), digest_size=8).digest()
        h = float(int.from_bytes(digest, "little") >> 11)  # 53 bits: exact in a float64
        lo, hi = self.comm.allreduce_min_max(np.array([h]))
        if lo[0] == hi[0]:
            return True
        where = f"step {self.global_step}"
        if self.cfg.on_drift == "abort":
            raise TrainingHalted(f"replicas have drifted apart at {where} (weight checksums differ "
                                 "between ranks); --on-drift abort")
        self.comm.bcast_(self.store.data, root=0)
        for value in self.optimizer.state_dict().values():
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.size == self.store.size:
                self.comm.bcast_(value, root=0)
        self.drift_repairs += 1
        self.warn(f"warning: replicas had drifted apart at {where}; repaired from rank 0", flush=True)
        return False

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self) -> tuple[float, float | None]:
        """Loss and accuracy over the whole validation set: every sample counted exactly once."""
        mine = eval_shard(len(self.data.x_val), self.comm.rank, self.comm.size)
        terms = self.model.term_names
        sums = np.zeros(3 + len(terms))  # loss sum, correct, count, term sums
        for start in range(0, len(mine), self.cfg.eval_batch_size):
            idx = mine[start:start + self.cfg.eval_batch_size]
            x = self.data.inputs(self.data.x_val[idx], self.dtype)
            loss_sum, correct, *term_sums = self.model.evaluate_sums(x, self.data.y_val[idx])
            sums += (loss_sum, correct, len(idx), *term_sums)
        self.comm.allreduce_sum_(sums)
        loss, correct, count = sums[:3]
        self.val_terms = {name: float(s / count) for name, s in zip(terms, sums[3:])}
        accuracy = None if self.model.task in ("regression", "generative") else correct / count
        return loss / count, accuracy

    # -- the loop ------------------------------------------------------------------
    def fit(self, on_step=None, on_epoch=None) -> list[EpochMetrics]:
        """Train to total_steps, starting where resume_from left off (possibly mid-epoch).
        Returns early, after the step on which an on_step hook set stop_requested."""
        history = []
        start_time = time.perf_counter()
        feed = self.batches()
        first_epoch, first_step = self.epoch, self.step_in_epoch
        try:
            for epoch in range(first_epoch, self.epochs):
                t0 = time.perf_counter()
                seen0 = self.samples_seen
                start = first_step if epoch == first_epoch else 0
                loss_sum = (self._carried_loss if start and self._carried_loss is not None
                            else np.zeros(2))  # summed loss, samples (this rank)
                self.epoch, self.step_in_epoch, self.epoch_loss = epoch, start, loss_sum
                for _ in range(min(self.sampler.steps_per_epoch - start, self.total_steps - self.global_step)):
                    self.clock.begin()
                    step, batch = next(feed)
                    loss_sum += (self.train_step(step, batch), len(step.indices))
                    self.step_in_epoch = step.index + 1
                    if on_step is not None:
                        on_step(self)
                    if self.stop_requested:
                        self.train_time += time.perf_counter() - t0
                        return history
                self.comm.allreduce_sum_(loss_sum)
                elapsed = time.perf_counter() - t0
                self.train_time += elapsed
                e0 = time.perf_counter()
                val_loss, val_acc = self.evaluate()
                self.clock.span("evaluate", e0, time.perf_counter())
                metrics = EpochMetrics(
                    epoch=epoch + 1, step=self.global_step,
                    train_loss=float(loss_sum[0] / max(loss_sum[1], 1)),
                    val_loss=float(val_loss), val_accuracy=None if val_acc is None else float(val_acc),
                    samples_per_sec=(self.samples_seen - seen0) / max(elapsed, 1e-9),
                    wall_time=time.perf_counter() - start_time,
                    lr=float(self.schedule(max(self.global_step - 1, 0))), val_terms=self.val_terms)
                history.append(metrics)
                self.epoch, self.step_in_epoch, self.epoch_loss = epoch + 1, 0, np.zeros(2)
                if on_epoch is not None:
                    on_epoch(self, metrics)
        finally:
            feed.close()  # stops the loader thread, also when a step raised
        return history

    # -- where the time went ---------------------------------------------------------
    def timing_summary(self) -> dict:
        """Mean time per phase over ranks and the slowest rank (collective: every rank calls it)."""
        return gather_summary(self.clock, self.comm)

    def write_timeline(self, path: str) -> None:
        """Chrome trace of every rank's recorded steps, written by rank 0 (collective)."""
        write_timeline(path, self.clock, self.comm)
