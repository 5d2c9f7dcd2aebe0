"""Train a model data-parallel across MPI ranks.

    python -m mpidl.train                      # one process (a world of one)
    mpirun -n 4 python -m mpidl.train          # four ranks, same global batch
    mpirun -n 4 python -m mpidl.train --model mlp --dataset fashion-mnist --epochs 5
    mpidl --help

Only rank 0 prints and writes files. A bad flag, config or data file is reported once,
in one line, and every rank exits with status 2; an unexpected exception on any rank
aborts all ranks.
"""

from __future__ import annotations

import json
import os
import sys
import time

from mpidl import __version__
from mpidl.cluster import EXIT_PREEMPTED, StopSignal, check_world_size, prints_errors
from mpidl.comm import install_abort_on_exception, launcher_rank, start_watchdog, world
from mpidl.config import parse_config
from mpidl.errors import TrainingHalted, UserError
from mpidl.timing import format_summary

EXIT_USAGE = 2
EXIT_HALTED = 3


def _fail(message: str, rank: int | None = None) -> None:
    tag = f" [rank {rank}]" if rank else ""
    print(f"mpidl: error{tag}: {message}", file=sys.stderr, flush=True)


def _agreed(comm, fn):
    """Run fn on every rank; if it raises a UserError anywhere, the lowest such rank prints
    it and every rank exits with status 2 together (no rank left waiting in a collective)."""
    error = None
    try:
        result = fn()
    except UserError as exc:
        error, result = exc, None
    first = comm.first_failure(error is not None)
    if first is not None:
        if comm.rank == first:
            _fail(str(error), first)
        raise SystemExit(EXIT_USAGE)
    return result


def blas_threads(cfg, comm) -> int:
    """--threads, else SLURM_CPUS_PER_TASK, else the cores this process may use / ranks on this node."""
    if cfg.threads:
        return cfg.threads
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // comm.local_size)


def _prepare_out_dir(cfg) -> str:
    out = cfg.out or os.path.join("runs", f"{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".mpidl-write-test")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc})")
    return out


class Reporter:
    """Rank 0's progress display and metric files."""

    def __init__(self, cfg, trainer, out_dir, enabled: bool):
        self.enabled = enabled
        self.out_dir = out_dir
        self.bar = None
        if not enabled:
            return
        mode = cfg.progress
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "log"
        self.mode = mode
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=trainer.total_steps, initial=trainer.global_step, unit="step",
                            dynamic_ncols=True)
        path = os.path.join(out_dir, "metrics.jsonl")
        # A resumed run keeps the epochs finished before its checkpoint, drops any logged after it.
        kept = _metric_lines_before(path, trainer.epoch) if trainer.global_step > 0 else []
        self.metrics_file = open(path, "w")
        self.metrics_file.writelines(kept)

    def step(self, trainer):
        if self.bar is not None:
            self.bar.update(1)

    def epoch(self, trainer, m):
        if not self.enabled:
            return
        self.metrics_file.write(json.dumps(m.to_dict()) + "\n")
        self.metrics_file.flush()
        acc = "" if m.val_accuracy is None else f"  {trainer.data.val_name}_acc {m.val_accuracy:.4f}"
        line = (f"epoch {m.epoch:3d}/{trainer.epochs}  step {m.step:6d}  train_loss {m.train_loss:.4f}  "
                f"{trainer.data.val_name}_loss {m.val_loss:.4f}{acc}  {m.samples_per_sec:8.0f} samples/s")
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
        if self.enabled:
            self.metrics_file.close()


def _metric_lines_before(path: str, epochs_done: int) -> list[str]:
    try:
        with open(path) as f:
            return [line for line in f if line.strip() and json.loads(line)["epoch"] <= epochs_done]
    except (OSError, ValueError, KeyError):
        return []


def _resume(cfg, comm, trainer):
    """Collective: load the checkpoint --resume names (rank 0 reads, all receive). Returns its path or None."""
    from mpidl.checkpoint import check_compatible, locate_checkpoint, restore_checkpoint

    def find():
        if comm.rank != 0:
            return None
        found = locate_checkpoint(cfg, warn=lambda msg: print(msg, file=sys.stderr, flush=True))
        if found is not None:
            check_compatible(trainer, *found)
        return found

    found = _agreed(comm, find)
    if not comm.any_true(found is not None):
        if comm.rank == 0:
            print(f"--resume {cfg.resume}: no checkpoint in {cfg.checkpoint_dir}, starting from step 0", flush=True)
        return None
    meta = restore_checkpoint(trainer, found[1] if comm.rank == 0 else None)
    if comm.rank == 0:
        print(f"resumed from {found[0]}: step {meta['global_step']} (epoch {meta['epoch'] + 1}, step "
              f"{meta['step_in_epoch']} in it), written by {meta['world_size']} rank(s)", flush=True)
    return found[0] if comm.rank == 0 else ""


def main(argv=None) -> int:
    rank_hint = launcher_rank()
    try:
        cfg = parse_config(argv)
    except UserError as exc:
        if rank_hint == 0:
            _fail(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    comm = world()
    try:
        check_world_size(comm, cfg.expect_ranks)
    except UserError as exc:  # the same verdict on every rank, no collective needed
        if comm.rank == 0 and prints_errors():
            _fail(str(exc))
        return EXIT_USAGE
    install_abort_on_exception(comm)
    from threadpoolctl import threadpool_limits
    threads = blas_threads(cfg, comm)
    threadpool_limits(threads)

    from mpidl.checkpoint import Checkpointer, atomic_write, save_weights
    from mpidl.trainer import Trainer

    try:
        trainer = _agreed(comm, lambda: Trainer(cfg, comm))
        out_dir = _agreed(comm, lambda: _prepare_out_dir(cfg) if comm.rank == 0 else None)
        if cfg.resume:
            _resume(cfg, comm, trainer)
    except SystemExit as exc:
        return int(exc.code)
    checkpointer = Checkpointer(cfg, StopSignal().install()) if cfg.checkpoint_dir else None
    if checkpointer is not None and cfg.resume:
        checkpointer.last_saved = checkpointer._position(trainer)  # no need to write it again

    lead = comm.rank == 0
    if lead:
        print(f"mpidl {__version__}: model {cfg.model}, dataset {cfg.dataset} "
              f"({len(trainer.data.x_train)} train / {len(trainer.data.x_val)} {trainer.data.val_name}), "
              f"{comm.size} rank(s) x {threads} BLAS thread(s), global batch {cfg.batch_size}, "
              f"{trainer.epochs} epoch(s) = {trainer.total_steps} steps, {cfg.optimizer} lr "
              f"{trainer.schedule.lr:g}, {cfg.dtype}; output in {out_dir}", flush=True)
        print(f"communication: {trainer.sync.describe()}; optimiser state "
              f"{trainer.optimizer_state_bytes / 2**20:.2f} MiB per rank", flush=True)

    reporter = Reporter(cfg, trainer, out_dir, enabled=lead)
    def on_step(t):
        reporter.step(t)
        if checkpointer is not None:
            checkpointer.on_step(t)

    def on_epoch(t, m):
        reporter.epoch(t, m)
        if checkpointer is not None:
            checkpointer.on_epoch(t, m)
    start_watchdog(comm, cfg.collective_timeout)
    t0 = time.perf_counter()
    try:
        history = trainer.fit(on_step=on_step, on_epoch=on_epoch)
    except TrainingHalted as exc:  # raised on every rank at the same step
        if lead:
            _fail(str(exc))
        return EXIT_HALTED
    except UserError as exc:  # e.g. a checkpoint rank 0 could not write; every rank raises it
        if lead:
            _fail(str(exc))
        return EXIT_USAGE
    finally:
        reporter.close()
    wall = time.perf_counter() - t0
    timing = trainer.timing_summary()
    if cfg.timeline:
        trainer.write_timeline(cfg.timeline)

    if checkpointer is not None:
        if checkpointer.preempted:
            if lead:
                print(f"stopped by a signal at step {trainer.global_step} of {trainer.total_steps}; "
                      f"continue with --resume latest --checkpoint-dir {cfg.checkpoint_dir}", flush=True)
            return EXIT_PREEMPTED
        try:
            checkpointer.on_end(trainer)
        except UserError as exc:
            if lead:
                _fail(str(exc))
            return EXIT_USAGE
    if not history:  # resumed from a checkpoint written at the very end: report it again
        from mpidl.trainer import EpochMetrics
        val_loss, val_acc = trainer.evaluate()
        history = [EpochMetrics(trainer.epochs, trainer.global_step, float("nan"), float(val_loss),
                                None if val_acc is None else float(val_acc), 0.0, 0.0,
                                float(trainer.schedule(max(trainer.global_step - 1, 0))))]

    if lead:
        last = history[-1]
        summary = {
            "mpidl_version": __version__,
            "world_size": comm.size,
            "blas_threads_per_rank": threads,
            "mpi_library": comm.library,
            "epochs": len(history),
            "steps": trainer.global_step,
            "train_loss": last.train_loss,
            "val_loss": last.val_loss,
            "val_accuracy": last.val_accuracy,
            "val_split": trainer.data.val_name,
            "val_terms": last.val_terms,
            "wall_time": wall,
            "train_time": trainer.train_time,
            "samples_per_sec": trainer.samples_seen / max(trainer.train_time, 1e-9),
            "skipped_steps": trainer.skipped_steps,
            "drift_repairs": trainer.drift_repairs,
            "communication": trainer.sync.describe(),
            "optimizer_state_bytes_per_rank": trainer.optimizer_state_bytes,
            "timing": timing,
            "config": cfg.to_dict(),
        }
        try:  # only rank 0 is left here: the other ranks have finished
            save_weights(os.path.join(out_dir, "weights.npz"), trainer.store)
            atomic_write(os.path.join(out_dir, "summary.json"),
                         lambda f: f.write(json.dumps(summary, indent=2).encode()))
        except OSError as exc:
            _fail(f"--out {out_dir}: cannot write the final outputs ({exc.strerror or exc})")
            return EXIT_USAGE
        print(format_summary(timing, comm.size), flush=True)
        if cfg.timeline:
            print(f"timeline of {comm.size} rank(s) written to {cfg.timeline}", flush=True)
        if trainer.model.spec.finish is not None:  # model-specific outputs (the VAE's PNG)
            written = trainer.model.spec.finish(trainer.model, trainer.data, out_dir)
            print(f"wrote {written}" if written else f"{cfg.model}: extra outputs skipped "
                  "(pip install 'mpidl[plot]' for matplotlib)", flush=True)
        acc = "" if last.val_accuracy is None else f"{trainer.data.val_name} accuracy {last.val_accuracy:.4f}, "
        print(f"done: {acc}{trainer.data.val_name} loss {last.val_loss:.4f}, {trainer.global_step} steps in "
              f"{wall:.1f} s, {summary['samples_per_sec']:.0f} samples/s on {comm.size} rank(s); "
              f"wrote {out_dir}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
