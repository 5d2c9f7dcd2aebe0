"""What rank 0 shows and writes: the progress display, metrics.jsonl, and at the end
weights.npz, model.json (how mpidl.load rebuilds the model) and summary.json."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from mpidl import __version__


def _json_safe(value):
    """NaN and infinities become null: every file we write parses with a strict JSON parser."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def dumps(obj, **kw) -> str:
    return json.dumps(_json_safe(obj), allow_nan=False, **kw)


class Reporter:
    """Rank 0's progress display and metric file; a training hook."""

    def __init__(self, cfg, trainer, out_dir, enabled: bool):
        self.enabled = enabled
        self.out_dir = out_dir
        self.started = time.perf_counter()
        self.trainer = trainer
        self.bar = None
        self.metrics_file = None
        self.kernels_told = False
        # --log-every: this rank's loss sum and sample count since the last step record
        self.log_every = cfg.log_every
        self.pending = np.zeros(2)
        self.last_log = (trainer.global_step, trainer.samples_seen, time.perf_counter())
        mode = cfg.progress
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "log"
        self.mode = mode
        if not enabled:
            return
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=trainer.total_steps, initial=trainer.global_step, unit="step",
                            dynamic_ncols=True)
        if out_dir is not None:
            path = os.path.join(out_dir, "metrics.jsonl")
            # A resumed run keeps the epochs finished before its checkpoint, drops any logged after it.
            kept = _metric_lines_before(path, trainer.epoch, trainer.global_step) if trainer.global_step > 0 else []
            self.metrics_file = open(path, "w")
            self.metrics_file.writelines(kept)

    def header(self):
        t, cfg = self.trainer, self.trainer.cfg
        if not self.enabled:
            return
        where = f"; output in {self.out_dir}" if self.out_dir else ""
        print(f"mpidl {__version__}: model {cfg.model}, dataset {t.data.name} "
              f"({len(t.data.x_train)} train / {len(t.data.x_val)} {t.data.val_name}), "
              f"{t.comm.size} rank(s) x {getattr(t.comm, 'blas_threads', '?')} BLAS thread(s), global batch "
              f"{cfg.batch_size}, {t.epochs} epoch(s) = {t.total_steps} steps, {cfg.optimizer} lr "
              f"{t.schedule.lr:g}, {cfg.dtype}{where}", flush=True)
        if t.grid is not None:
            print(f"model parallelism: {t.model.describe()}; parameters "
                  f"{t.store.data.nbytes / 2**20:.2f} MiB on this rank (rank 0)", flush=True)
        print(f"communication: {t.dopt.describe()}; optimiser state "
              f"{t.optimizer_state_bytes / 2**20:.2f} MiB per rank", flush=True)

    def on_step(self, trainer):
        if self.bar is not None:
            self.bar.update(1)
        if not self.kernels_told and self.enabled:
            self.kernels_told = True
            self.tell_kernels(trainer)
        if self.log_every:
            self.pending += trainer.last_step_loss
            if trainer.global_step % self.log_every == 0:
                self.log_step(trainer)

    def tell_kernels(self, trainer):
        """After the first step: which kernels the convolutions measured fastest (rank 0's, now every rank's)."""
        from mpidl.nn.conv import describe_kernel_choices
        net = getattr(trainer.model, "net", None)
        told = describe_kernel_choices(net) if net is not None else None
        if told is None:
            return
        line = f"convolutions: {told}"
        if self.bar is not None:
            self.bar.write(line)
        elif self.mode == "log":
            print(line, flush=True)

    def log_step(self, trainer):
        """A step record: the mean training loss over all ranks since the last one (collective)."""
        totals = trainer.comm.allreduce_sum_(self.pending.copy(), what="Allreduce(logged loss)")
        self.pending[:] = 0
        step0, seen0, t0 = self.last_log
        now = time.perf_counter()
        self.last_log = (trainer.global_step, trainer.samples_seen, now)
        if self.metrics_file is None:
            return
        record = {"kind": "step", "step": trainer.global_step, "epoch": trainer.epoch + 1,
                  "train_loss": float(totals[0] / max(totals[1], 1)),
                  "lr": float(trainer.schedule(max(trainer.global_step - 1, 0))),
                  "samples_per_sec": (trainer.samples_seen - seen0) / max(now - t0, 1e-9),
                  "wall_time": now - self.started}
        self.metrics_file.write(dumps(record) + "\n")
        self.metrics_file.flush()

    def on_epoch(self, trainer, m):
        if not self.enabled:
            return
        if self.metrics_file is not None:
            self.metrics_file.write(dumps(m.to_dict()) + "\n")
            self.metrics_file.flush()
        val = trainer.data.val_name
        acc = "" if m.val_accuracy is None else f"  {val}_acc {m.val_accuracy:.4f}"
        line = (f"epoch {m.epoch:3d}/{trainer.epochs}  step {m.step:6d}  train_loss {m.train_loss:.4f}  "
                f"{val}_loss {m.val_loss:.4f}{acc}  {m.samples_per_sec:8.0f} samples/s")
        line += "".join(f"  {name} {value:.4f}" for name, value in m.val_terms.items())
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{m.train_loss:.3f}", acc="-" if m.val_accuracy is None
                                 else f"{m.val_accuracy:.3f}")
            self.bar.write(line)
        elif self.mode == "log":
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None


def _metric_lines_before(path: str, epochs_done: int, step: int) -> list[str]:
    """The records of a resumed run's past: epochs finished and steps trained before its checkpoint."""
    def kept(record):
        if record.get("kind") == "step":
            return record["step"] <= step
        return record["epoch"] <= epochs_done
    try:
        with open(path) as f:
            return [line for line in f if line.strip() and kept(json.loads(line))]
    except (OSError, ValueError, KeyError):
        return []


def summary_of(trainer, history) -> dict:
    last, comm = history[-1], trainer.comm
    return {
        "mpidl_version": __version__,
        "world_size": comm.size,
        "blas_threads_per_rank": getattr(comm, "blas_threads", None),
        "allocator": getattr(comm, "allocator", None),
        "mpi_library": comm.library,
        "epochs": len(history),
        "steps": trainer.global_step,
        "train_loss": last.train_loss,
        "val_loss": last.val_loss,
        "val_accuracy": last.val_accuracy,
        "val_split": trainer.data.val_name,
        "val_terms": last.val_terms,
        "wall_time": trainer.wall_time,
        "train_time": trainer.train_time,
        "samples_per_sec": trainer.samples_seen / max(trainer.train_time, 1e-9),
        "skipped_steps": trainer.skipped_steps,
        "drift_repairs": trainer.drift_repairs,
        "communication": trainer.dopt.describe(),
        "optimizer_state_bytes_per_rank": trainer.optimizer_state_bytes,
        "checkpoint_stalls_ms": [1e3 * s for s in trainer.checkpointer.stalls] if trainer.checkpointer else [],
        "timing": trainer.timing,
        "config": trainer.cfg.to_dict(),
    }


def write_outputs(trainer, history) -> None:
    """Rank 0: weights, model description and summary into the output folder (if any), the
    timing table and the closing line. Raises UserError if the folder cannot be written."""
    from mpidl.checkpoint import atomic_write, save_weights
    from mpidl.errors import UserError
    from mpidl.timing import format_summary
    # A model split across ranks is gathered into the single-process layout (collective).
    gather = getattr(trainer.model, "whole_store", None)
    whole_store = gather() if gather is not None and trainer.cfg.out else trainer.store
    if trainer.comm.rank != 0:
        return
    cfg, data, out_dir = trainer.cfg, trainer.data, trainer.out_dir
    summary = summary_of(trainer, history)
    if out_dir is not None:
        try:  # only rank 0 is here: the other ranks have finished
            save_weights(os.path.join(out_dir, "weights.npz"), whole_store)
            atomic_write(os.path.join(out_dir, "model.json"),
                         lambda f: f.write(dumps(model_description(trainer), indent=2).encode()))
            atomic_write(os.path.join(out_dir, "summary.json"),
                         lambda f: f.write(dumps(summary, indent=2).encode()))
        except OSError as exc:
            raise UserError(f"--out {out_dir}: cannot write the final outputs ({exc.strerror or exc})")
    print(format_summary(trainer.timing, trainer.comm.size), flush=True)
    if cfg.timeline:
        print(f"timeline of {trainer.comm.size} rank(s) written to {trainer.timeline_path()}", flush=True)
    finish = getattr(trainer.model, "finish", None)
    if finish is not None and out_dir is not None:  # model-specific outputs (the VAE's PNG)
        written = finish(trainer.model, data, out_dir)
        print(f"wrote {written}" if written else f"{cfg.model}: extra outputs skipped "
              "(pip install 'mpidl[plot]' for matplotlib)", flush=True)
    last = history[-1]
    acc = "" if last.val_accuracy is None else f"{data.val_name} accuracy {last.val_accuracy:.4f}, "
    wrote = f"; wrote {out_dir}/" if out_dir else ""
    print(f"done: {acc}{data.val_name} loss {last.val_loss:.4f}, {trainer.global_step} steps in "
          f"{trainer.wall_time:.1f} s, {summary['samples_per_sec']:.0f} samples/s on {trainer.comm.size} "
          f"rank(s){wrote}", flush=True)


def model_description(trainer) -> dict:
    """What mpidl.load needs besides the weights: how to rebuild the network (a registered
    name or a factory's import path, with its arguments), the loss and the input scaling."""
    model, data, cfg = trainer.model, trainer.data, trainer.cfg
    return {"format": "mpidl-model", "version": 1, "mpidl_version": __version__,
            "recipe": model.recipe, "loss": model.loss_name, "task": model.task,
            "dtype": str(model.store.data.dtype), **data.preprocessing(),
            "sample_shape": list(data.sample_shape), "num_classes": data.num_classes,
            "class_names": data.class_names, "feature_names": data.feature_names,
            # how the data was read: mpidl.predict reads new inputs the same way
            "data": {"dataset": cfg.dataset, "source": data.source, "val_split": data.val_name,
                     "target": cfg.target, "x_key": cfg.x_key, "y_key": cfg.y_key,
                     "val_fraction": cfg.val_fraction, "seed": cfg.seed, "image_size": cfg.image_size,
                     "task": cfg.task}}
