"""The data-parallel training loop.

Each rank: the same model (rank 0's initial weights broadcast), its own slice of every
global batch, local gradients, one Allreduce of the flat gradient buffer, the same
optimiser step. Start-up compares config, parameter layout and dataset across ranks.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from mpidl.comm import Communicator
from mpidl.config import RunConfig
from mpidl.data import ShardedSampler, eval_shard, load_dataset
from mpidl.data.cache import default_cache_dir, npy_cache
from mpidl.data.prefetch import InlineBatches, Prefetcher
from mpidl.errors import ConfigError
from mpidl.models import MODELS, Model
from mpidl.optim import Schedule, make_optimizer
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
        if spec.task != self.data.task:
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
        self.model.allocate(self.dtype, cfg.seed)
        self.store = self.model.store

        # A mismatch here would otherwise surface as a hang or a silent divergence.
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
        self.optimizer = make_optimizer(cfg.optimizer, self.store.data, self.store.decay_mask(),
                                        weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                        nesterov=cfg.nesterov)
        self.global_step = 0
        self.samples_seen = 0
        self.train_time = 0.0

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
        """(step, (x, y)) for every remaining step of the run, prepared ahead with --prefetch."""
        steps = itertools.islice(
            itertools.chain.from_iterable(self.sampler.epoch(e) for e in range(self.epochs)),
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
        self.store.zero_grad()
        loss = 0.0
        if len(step.indices):
            loss = self.model.train_step_grads(x, y, weight=step.weight, lap=clock.lap)
        else:
            clock.lap("forward")
        clock.lap("backward")
        # Blocking, so timed as one phase; a non-blocking reduction would lap
        # "allreduce_post" after posting and "allreduce_wait" after completing.
        self.comm.allreduce_mean_(self.store.grad)
        clock.lap("allreduce")
        self.optimizer.step(self.store.data, self.store.grad, self.schedule(self.global_step))
        clock.lap("optimizer")
        clock.end_step()
        self.global_step += 1
        self.samples_seen += step.global_count
        return loss * len(step.indices)

    # -- evaluation ----------------------------------------------------------------
    def evaluate(self) -> tuple[float, float | None]:
        """Loss and accuracy over the whole validation set: every sample counted exactly once."""
        mine = eval_shard(len(self.data.x_val), self.comm.rank, self.comm.size)
        sums = np.zeros(3)  # loss sum, correct, count
        for start in range(0, len(mine), self.cfg.eval_batch_size):
            idx = mine[start:start + self.cfg.eval_batch_size]
            x = self.data.inputs(self.data.x_val[idx], self.dtype)
            loss_sum, correct = self.model.evaluate_sums(x, self.data.y_val[idx])
            sums += (loss_sum, correct, len(idx))
        self.comm.allreduce_sum_(sums)
        loss, correct, count = sums
        accuracy = None if self.model.task == "regression" else correct / count
        return loss / count, accuracy

    # -- the loop ------------------------------------------------------------------
    def fit(self, on_step=None, on_epoch=None) -> list[EpochMetrics]:
        history = []
        start_time = time.perf_counter()
        feed = self.batches()
        try:
            for epoch in range(self.epochs):
                t0 = time.perf_counter()
                seen0 = self.samples_seen
                loss_sum = np.zeros(2)  # summed loss, samples (this rank)
                for _ in range(min(self.sampler.steps_per_epoch, self.total_steps - self.global_step)):
                    self.clock.begin()
                    step, batch = next(feed)
                    loss_sum += (self.train_step(step, batch), len(step.indices))
                    if on_step is not None:
                        on_step(self)
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
                    lr=float(self.schedule(max(self.global_step - 1, 0))))
                history.append(metrics)
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
