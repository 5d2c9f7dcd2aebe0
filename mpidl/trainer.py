"""The data-parallel training loop.

Each rank: the same model (rank 0's initial weights broadcast), its own slice of every
global batch, local gradients, the gradients reduced across ranks, the same optimiser step.

    trainer = mpidl.Trainer(net, train=(x, y), val=(xv, yv), loss="cross_entropy",
                            optimizer="adam", lr=1e-3, batch_size=256, epochs=5, out="runs/mine")
    history = trainer.fit()

Every keyword is a field of :class:`mpidl.config.RunConfig`, the same settings as the
command line's flags (``--batch-size`` is ``batch_size``). ``Trainer.from_config`` is what
the command line uses.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from mpidl.config import RunConfig, library_config
from mpidl.data import Dataset, ShardedSampler, as_dataset, eval_shard, load_dataset
from mpidl.data.cache import default_cache_dir
from mpidl.data.files import FileOptions, row_bytes, take_rows
from mpidl.data.loader import default_block
from mpidl.data.normalize import fit_normalizer
from mpidl.data.prefetch import InlineBatches, Prefetcher
from mpidl.errors import ConfigError, UserError
from mpidl.init import DATA_STREAM, MODEL_STREAM
from mpidl.models.base import DEFAULT_LOSS, Model, build_model
from mpidl.optim import Schedule, make_optimizer
from mpidl.parallel.grid import Grid
from mpidl.parallel.guard import StopSignal, agreed, start_watchdog
from mpidl.parallel.sharded import ShardedModel
from mpidl.parallel.sync import DistributedOptimizer, broadcast_and_verify
from mpidl.timing import LOADER_THREAD, PHASES, StepClock, gather_summary, write_timeline



@dataclass
class EpochMetrics:
    epoch: int
    step: int
    train_loss: float | None
    val_loss: float
    val_accuracy: float | None
    samples_per_sec: float
    wall_time: float
    lr: float
    val_terms: dict = field(default_factory=dict)  # a multi-term loss's parts (VAE: recon_bce, kl)

    def to_dict(self) -> dict:
        return {"kind": "epoch", **self.__dict__}


def model_parallel(cfg: RunConfig) -> bool:
    return cfg.tensor_parallel * cfg.pipeline_stages > 1


class Trainer:
    def __init__(self, model, train=None, val=None, *, comm=None, hooks=(), **settings):
        """model: an mpidl.Model, or a module (then loss= names its loss, default from the
        targets); train/val: (x, y) arrays or an mpidl.data.Dataset; settings: RunConfig fields."""
        from mpidl.parallel import world
        if comm is None:
            comm = world(settings.get("threads"), settings.get("collective_timeout", 300.0),
                         settings.get("expect_ranks"), settings.get("allocator", "keep"))

        def build():
            cfg = library_config(settings, model_name=getattr(model, "name", "custom"))
            data = as_dataset(train, val)
            net = model
            if not isinstance(net, (Model, ShardedModel)):
                net = Model(net, cfg.loss or DEFAULT_LOSS.get(data.task, "cross_entropy"),
                            dtype=cfg.dtype, seed=cfg.seed, allocate=not model_parallel(cfg))
            elif str(net.store.data.dtype) != cfg.dtype:
                if "dtype" in settings:
                    raise ConfigError(f"dtype={cfg.dtype}: the Model was built in {net.store.data.dtype}; "
                                      "give dtype= to mpidl.Model instead")
                cfg.dtype = str(net.store.data.dtype)
            self._setup(cfg, comm, net, data, hooks)
        agreed(comm, build)

    @classmethod
    def from_config(cls, cfg: RunConfig, comm, hooks=(), data: Dataset | None = None) -> "Trainer":
        """Dataset and model by name, as the command line builds them (`data`: an already
        loaded dataset instead of cfg.dataset)."""
        self = cls.__new__(cls)
        if data is None:
            cache_dir = default_cache_dir() if cfg.cache_dir is None else cfg.cache_dir
            data = load_dataset(cfg.dataset, cfg.data_dir, file_options(cfg), comm,
                                None if cache_dir.lower() == "none" else cache_dir)
        model = build_model(cfg.model, data.sample_shape, data.num_classes, cfg.model_options(),
                            dtype=cfg.dtype, seed=cfg.seed, loss=cfg.loss, task=data.task,
                            allocate=not model_parallel(cfg))
        self._setup(cfg, comm, model, data, hooks)
        return self

    def _setup(self, cfg: RunConfig, comm, model: Model, data: Dataset, hooks) -> None:
        # Model parallelism: this rank keeps its shard of its stage; gradients, batches and
        # validation shards then go by the data-parallel group, and loss and evaluation sums
        # count on one rank per replica (ShardedModel.grid.reports).
        if isinstance(model, ShardedModel):
            if (model.T, model.S) != (cfg.tensor_parallel, cfg.pipeline_stages) and model_parallel(cfg):
                raise ConfigError("Trainer: the ShardedModel's grid differs from tensor_parallel/pipeline_stages")
            cfg.tensor_parallel, cfg.pipeline_stages = model.T, model.S
        elif model_parallel(cfg):
            model = ShardedModel(model, Grid(comm, cfg.tensor_parallel, cfg.pipeline_stages),
                                 schedule=cfg.pipeline_schedule, micro_batches=cfg.micro_batches)
        self.grid = getattr(model, "grid", None)
        self.data_comm = comm if self.grid is None else self.grid.data
        self.reports = self.grid is None or self.grid.reports
        self.cfg, self.comm, self.model, self.data = cfg, comm, model, data
        self.store, self.dtype = model.store, model.store.data.dtype
        if model.task != data.task and model.task != "generative":
            raise ConfigError(f"--model {model.name} ({model.task}) cannot train on --dataset {data.name} "
                              f"({data.task})")
        n_train, replicas = len(data.x_train), self.data_comm.size
        who = f"{replicas} ranks" if self.grid is None else f"{replicas} data-parallel replicas"
        if n_train < replicas:
            raise ConfigError(f"{data.name}: {n_train} training samples are fewer than the {who}")
        if cfg.batch_size < replicas:
            raise ConfigError(f"--batch-size {cfg.batch_size}: the global batch must hold at least one "
                              f"sample per {'rank' if self.grid is None else 'replica'} ({who})")
        if cfg.batch_size > n_train:
            raise ConfigError(f"--batch-size {cfg.batch_size}: larger than the {n_train} training samples "
                              f"of {data.name}")
        if cfg.normalize != "none" and data.normalizer is None:
            data.normalizer = fit_normalizer(cfg.normalize, data.x_train, data.scale, comm, data.name)
        from mpidl.nn import Conv2d
        for module in model.net.modules():
            if isinstance(module, Conv2d):
                module.algorithm = cfg.conv_algorithm
                module.winograd_keeps = cfg.winograd_keeps
        # One stream per replica: the ranks that hold parts of one replica draw alike.
        replica = self.data_comm.rank
        self.model_rng = np.random.default_rng([cfg.seed, replica, MODEL_STREAM])
        self.data_rng = np.random.default_rng([cfg.seed, replica, DATA_STREAM])
        model.attach(self.model_rng, comm)

        # A mismatch here would otherwise surface as a hang or a silent divergence.
        if self.grid is not None:
            comm.check_same("configuration", cfg.digest())
        broadcast_and_verify(self.data_comm, model, configuration=cfg.digest(),
                             **{f"dataset {data.name} (size, shapes or contents)": data.digest()})
        # Per-rank phase times; the timeline keeps the first steps' spans only when asked for.
        self.clock = StepClock(PHASES, record_steps=cfg.timeline_steps if cfg.timeline else 0)
        self.clock.align(comm)

        self.sampler = ShardedSampler(n_train, cfg.batch_size, replica, replicas, cfg.seed,
                                      drop_last=cfg.drop_last, shuffle=cfg.shuffle,
                                      block=cfg.shuffle_block or default_block(n_train, row_bytes(data.x_train)))
        steps_per_epoch = self.sampler.steps_per_epoch
        epochs = cfg.epochs if cfg.epochs is not None else math.ceil(cfg.max_steps / steps_per_epoch)
        self.total_steps = epochs * steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.epochs = math.ceil(self.total_steps / steps_per_epoch)

        lr = cfg.lr * (replicas if cfg.lr_scaling == "linear" else 1)
        warmup = cfg.warmup_steps
        if warmup is None:
            warmup = round(0.05 * self.total_steps) if cfg.lr_scaling == "linear" else 0
        self.schedule = Schedule(lr, cfg.schedule, total_steps=self.total_steps, warmup_steps=warmup,
                                 step_size=cfg.lr_step or max(self.total_steps // 3, 1), gamma=cfg.lr_gamma)
        self.optimizer = make_optimizer(cfg.optimizer, None, weight_decay=cfg.weight_decay,
                                        momentum=cfg.momentum, nesterov=cfg.nesterov)
        self.dopt = DistributedOptimizer(self.optimizer, model, self.data_comm, zero=bool(cfg.zero), allreduce=cfg.allreduce,
                                         bucket_mb=cfg.bucket_mb, overlap=cfg.overlap,
                                         compression=cfg.grad_compression, on_nonfinite=cfg.on_nonfinite,
                                         broadcast=False)
        self.sync = self.dopt.sync
        self.optimizer_state_bytes = self.dopt.state_bytes()
        # Hooks: objects with on_step(trainer) and/or on_epoch(trainer, metrics), called in
        # this order after every step / epoch; fit() adds the Reporter and the Checkpointer.
        self.hooks = ([ReplicaCheck(cfg.check_every, cfg.on_drift)] if cfg.check_every else []) + list(hooks)
        self.global_step = 0
        self.samples_seen = 0
        self.train_time = 0.0
        self.drift_repairs = 0
        self.val_terms = {}
        # Where the loop stands (for checkpoints): the epoch, the steps done in it, and this
        # rank's summed loss and sample count over those steps.
        self.epoch, self.step_in_epoch = 0, 0
        self.epoch_loss = np.zeros(2)
        self._carried_loss = None  # a resumed epoch's loss so far
        self.last_step_loss = (0.0, 0)  # this rank's summed loss and samples of the last step
        self.stop_requested = False  # set by an on_step hook (preemption): the loop returns after this step
        self.out_dir = None
        self.checkpointer = None
        self._data_rng_after = None  # with --prefetch: the data generator's state after the last step

    @property
    def skipped_steps(self) -> int:
        return self.dopt.skipped_steps

    def resume_from(self, global_step, epoch, step_in_epoch, epoch_loss):
        """Continue from a checkpoint's position (weights and optimiser are restored by the caller)."""
        self.global_step = int(global_step)
        self.epoch, self.step_in_epoch = int(epoch), int(step_in_epoch)
        self._carried_loss = np.array(epoch_loss, dtype=np.float64)

    # -- one step ------------------------------------------------------------------
    def prepare_batch(self, step):
        """This rank's inputs and targets for `step`: gather, convert, augment (the loader
        thread runs this when prefetching, in step order, so data_rng draws are unchanged)."""
        x = self.data.inputs(take_rows(self.data.x_train, step.indices), self.dtype)
        if self.data.augment is not None:
            x = self.data.augment(x, self.data_rng)
        y = take_rows(self.data.y_train, step.indices)
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
            return Prefetcher(steps, self._prepare_ahead, self.cfg.prefetch,
                              on_prepared=lambda t0, t1: self.clock.span("prepare batch", t0, t1, LOADER_THREAD))
        return InlineBatches(steps, self.prepare_batch)

    def _prepare_ahead(self, step):
        """prepare_batch in the loader thread, with the data generator's state right after it:
        the state a checkpoint taken after this step must record, although the thread has
        drawn further by then."""
        x, y = self.prepare_batch(step)
        return x, y, self.data_rng.bit_generator.state

    def data_rng_state(self) -> dict:
        """The data generator's state as of the last step trained (not of the batches
        prepared ahead)."""
        return self._data_rng_after if self._data_rng_after is not None else self.data_rng.bit_generator.state

    def micro_batches(self, n: int):
        """--accumulate: this rank's share in micro-batches, each weighted by its size, so the
        summed gradient is the whole share's mean gradient; one reduction per step."""
        if self.cfg.accumulate == 1:  # the usual case: no index arrays to build every step
            return [(slice(None), n)] if n else []
        parts = [p for p in np.array_split(np.arange(n), self.cfg.accumulate) if len(p)]
        return [(p, len(p)) for p in parts]

    def train_step(self, step, batch=None) -> float:
        """One synchronised step; returns this rank's summed loss (mean loss x local samples).
        `batch` is (x, y) when already prepared; the clock's "data" lap then measures the wait."""
        clock, dopt = self.clock, self.dopt
        if batch is None:
            clock.begin()
            batch = self.prepare_batch(step)
        x, y = batch
        clock.lap("data")
        self.comm.context = dopt.where = f"step {self.global_step + 1} (epoch {step.epoch + 1})"
        parts = self.micro_batches(len(step.indices))
        dopt.zero_grad(arm=len(parts) == 1)
        loss_sum = 0.0
        n = len(step.indices)
        for i, (part, count) in enumerate(parts):
            if len(parts) > 1 and i == len(parts) - 1:
                dopt.arm()  # buckets may start reducing during the last backward
            loss = self.model.loss_and_backward(x[part], y[part], step.weight * count / n, lap=clock.lap)
            loss_sum += loss * count
            clock.lap("backward")
        # Reduce, agreed finite check, update; the clock's allreduce lap is the communication
        # left after backward (all of it unless buckets started during backward).
        dopt.step(self.schedule(self.global_step), lap=clock.lap)
        clock.end_step()
        self.global_step += 1
        self.samples_seen += step.global_count
        return loss_sum if math.isfinite(loss_sum) else 0.0

    def check_replicas(self, on_drift: str | None = None) -> bool:
        """Compare a 53-bit hash of the weights across ranks; repair from rank 0 or halt (--on-drift)."""
        self.dopt.where = f"step {self.global_step}"
        ok = self.dopt.check_replicas(on_drift or self.cfg.on_drift)
        self.drift_repairs += not ok
        return ok


    # -- evaluation ----------------------------------------------------------------
    def evaluate(self) -> tuple[float, float | None]:
        """Loss and accuracy over the whole validation set: every sample counted exactly once."""
        self.dopt.sync_buffers()  # the same running statistics on every rank
        mine = eval_shard(len(self.data.x_val), self.data_comm.rank, self.data_comm.size)
        terms = self.model.term_names
        loss_sum, correct, count = 0, 1, 2   # positions in `sums`; the terms' sums follow
        sums = np.zeros(3 + len(terms))
        # Batches no larger than a training step's share: the layers' working arrays (kept from
        # call to call) then never grow past what training needs (resnet20: 3.7 GB at 1000).
        size = self.cfg.eval_batch_size or max(1, -(-self.cfg.batch_size // self.data_comm.size))
        for start in range(0, len(mine), size):
            idx = mine[start:start + size]
            x = self.data.inputs(take_rows(self.data.x_val, idx), self.dtype)
            batch_loss, batch_correct, *term_sums = self.model.evaluate_sums(x, take_rows(self.data.y_val, idx))
            sums += (batch_loss, batch_correct, len(idx) * self.reports, *term_sums)
        self.comm.allreduce_sum_(sums)
        n = sums[count]
        self.val_terms = {name: float(s / n) for name, s in zip(terms, sums[3:])}
        accuracy = None if self.model.task in ("regression", "generative") else sums[correct] / n
        return sums[loss_sum] / n, accuracy

    # -- the loop ------------------------------------------------------------------
    def train(self, on_step=None, on_epoch=None) -> list[EpochMetrics]:
        """The bare loop: train to total_steps, starting where resume_from left off (possibly
        mid-epoch), calling the hooks; no files, no display. Returns early, after the step on
        which a hook set stop_requested."""
        history = []
        start_time = time.perf_counter()
        feed = self.batches()
        first_epoch, first_step = self.epoch, self.step_in_epoch
        step_hooks = [h.on_step for h in self.hooks if hasattr(h, "on_step")] + ([on_step] if on_step else [])
        epoch_hooks = [h.on_epoch for h in self.hooks if hasattr(h, "on_epoch")] + ([on_epoch] if on_epoch else [])
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
                    if len(batch) == 3:  # prepared ahead: (x, y, data generator state after it)
                        *batch, self._data_rng_after = batch
                    self.last_step_loss = (self.train_step(step, batch), len(step.indices) * self.reports)
                    loss_sum += self.last_step_loss
                    self.step_in_epoch = step.index + 1
                    for hook in step_hooks:
                        hook(self)
                    if self.stop_requested:
                        self.train_time += time.perf_counter() - t0
                        return history
                totals = self.comm.allreduce_sum_(loss_sum.copy())  # loss_sum stays this rank's (checkpoints)
                elapsed = time.perf_counter() - t0
                self.train_time += elapsed
                e0 = time.perf_counter()
                val_loss, val_acc = self.evaluate()
                self.clock.span("evaluate", e0, time.perf_counter())
                metrics = EpochMetrics(
                    epoch=epoch + 1, step=self.global_step,
                    train_loss=float(totals[0] / max(totals[1], 1)),
                    val_loss=float(val_loss), val_accuracy=None if val_acc is None else float(val_acc),
                    samples_per_sec=(self.samples_seen - seen0) / max(elapsed, 1e-9),
                    wall_time=time.perf_counter() - start_time,
                    lr=float(self.schedule(max(self.global_step - 1, 0))), val_terms=self.val_terms)
                history.append(metrics)
                if self.step_in_epoch == self.sampler.steps_per_epoch:
                    self.epoch, self.step_in_epoch, self.epoch_loss = epoch + 1, 0, np.zeros(2)
                # else the run ended inside this epoch (--max-steps): the position stays there,
                # so that a resumed run with a larger target continues from exactly this sample.
                for hook in epoch_hooks:
                    hook(self, metrics)
        finally:
            feed.close()  # stops the loader thread, also when a step raised
        return history

    def fit(self, on_step=None, on_epoch=None) -> list[EpochMetrics]:
        """Everything the command line does around the loop: the output folder (with --out),
        resuming, checkpoints, the progress display and metrics on rank 0, the watchdog, and the
        final weights, summary and model description. Collective: every rank calls it.
        Raises a UserError or TrainingHalted on every rank together."""
        from mpidl.checkpoint import Checkpointer
        from mpidl.report import Reporter
        cfg, comm = self.cfg, self.comm
        lead = comm.rank == 0
        if cfg.out:
            self.out_dir = agreed(comm, lambda: _prepare_out_dir(cfg.out) if lead else None)
        if cfg.resume:
            self.resume()
            if self.global_step >= self.total_steps and lead:
                print(f"the run is already at step {self.global_step} of {self.total_steps}: nothing to "
                      "train (give a larger --max-steps or --epochs to continue it)", flush=True)
        self.checkpointer = Checkpointer(cfg, StopSignal().install()) if cfg.checkpoint_dir else None
        if self.checkpointer is not None and cfg.resume:
            self.checkpointer.last_saved = self.checkpointer.position(self)  # no need to write it again
        reporter = Reporter(cfg, self, self.out_dir, enabled=lead)
        reporter.header()
        hooks = [reporter] + ([self.checkpointer] if self.checkpointer is not None else [])
        start_watchdog(comm, cfg.collective_timeout)
        t0 = time.perf_counter()

        def on_step_all(t):
            for h in hooks:
                h.on_step(t)
            if on_step is not None:
                on_step(t)

        def on_epoch_all(t, m):
            for h in hooks:
                h.on_epoch(t, m)
            if on_epoch is not None:
                on_epoch(t, m)
        stop_signal = self.checkpointer.stop_signal if self.checkpointer is not None else None
        try:
            return self._fit_and_finish(on_step_all, on_epoch_all, reporter, stop_signal, t0)
        finally:
            if stop_signal is not None:
                stop_signal.uninstall()

    def _fit_and_finish(self, on_step, on_epoch, reporter, stop_signal, t0):
        """fit's loop and its ending. The stop signal stays installed to the end: a Ctrl-C
        once training is over must not cut the final checkpoint or outputs short."""
        from mpidl.report import write_outputs
        cfg, lead = self.cfg, self.comm.rank == 0
        try:
            history = self.train(on_step=on_step, on_epoch=on_epoch)
        finally:
            reporter.close()
            if stop_signal is not None:
                stop_signal.finishing = True
        self.wall_time = time.perf_counter() - t0
        self.timing = self.timing_summary()
        if cfg.timeline:
            self.write_timeline(self.timeline_path())
        if self.checkpointer is not None:
            if self.checkpointer.preempted:
                self.checkpointer.finish(self)  # the stop's checkpoint is on disk before we exit
                if lead:
                    print(f"stopped by a signal at step {self.global_step} of {self.total_steps}; "
                          f"continue with --resume latest --checkpoint-dir {cfg.checkpoint_dir}", flush=True)
                return history
            self.checkpointer.on_end(self)
        if not history:  # resumed from a checkpoint written at the very end: report it again
            val_loss, val_acc = self.evaluate()
            history = [EpochMetrics(self.epochs, self.global_step, None, float(val_loss),
                                    None if val_acc is None else float(val_acc), 0.0, 0.0,
                                    float(self.schedule(max(self.global_step - 1, 0))), self.val_terms)]
        self.history = history
        write_outputs(self, history)
        return history

    @property
    def preempted(self) -> bool:
        return self.checkpointer is not None and self.checkpointer.preempted

    def resume(self) -> str | None:
        """Collective: load the checkpoint --resume names (rank 0 reads, all receive). Returns its path or None."""
        from mpidl.checkpoint import check_compatible, locate_checkpoint, restore_checkpoint
        cfg, comm = self.cfg, self.comm

        def find():
            if comm.rank != 0:
                return None
            found = locate_checkpoint(cfg, warn=lambda msg: print(msg, file=sys.stderr, flush=True))
            if found is not None:
                check_compatible(self, *found)
            return found

        found = agreed(comm, find)
        if not comm.any_true(found is not None):
            if comm.rank == 0:
                print(f"--resume {cfg.resume}: no checkpoint in {cfg.checkpoint_dir}, starting from step 0",
                      flush=True)
            return None
        meta = restore_checkpoint(self, found[1] if comm.rank == 0 else None)
        if comm.rank == 0:
            print(f"resumed from {found[0]}: step {meta['global_step']} (epoch {meta['epoch'] + 1}, step "
                  f"{meta['step_in_epoch']} in it), written by {meta['world_size']} rank(s)", flush=True)
        return found[0] if comm.rank == 0 else ""

    # -- where the time went ---------------------------------------------------------
    def timing_summary(self) -> dict:
        """Mean time per phase over ranks and the slowest rank (collective: every rank calls it)."""
        return gather_summary(self.clock, self.comm)

    def timeline_path(self) -> str:
        """--timeline NAME lands in the output folder; a path with a folder in it where it says."""
        path = self.cfg.timeline
        if self.out_dir is not None and not os.path.dirname(path):
            return os.path.join(self.out_dir, path)
        return path

    def write_timeline(self, path: str) -> None:
        """Chrome trace of every rank's recorded steps, written by rank 0 (collective)."""
        write_timeline(path, self.clock, self.comm)


def file_options(cfg: RunConfig) -> FileOptions:
    """What --dataset PATH's reader needs to know."""
    return FileOptions(target=cfg.target, x_key=cfg.x_key, y_key=cfg.y_key, image_size=cfg.image_hw(),
                       val_fraction=cfg.val_fraction, task=cfg.task, seed=cfg.seed)


def _prepare_out_dir(out: str) -> str:
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".mpidl-write-test")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})")
    return out


class ReplicaCheck:
    """Hook: every `every` steps, check that the replicas still hold the same weights
    (--check-every, --on-drift)."""

    def __init__(self, every: int, on_drift: str = "repair"):
        self.every, self.on_drift = every, on_drift

    def on_step(self, trainer) -> None:
        if trainer.global_step % self.every == 0:
            trainer.check_replicas(self.on_drift)
