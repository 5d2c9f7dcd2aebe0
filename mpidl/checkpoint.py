"""Files that hold weights and whole training states: written atomically, read with pickling disabled.

A checkpoint (``ckpt-000001200.npz`` in --checkpoint-dir, the number is the global step) is
one .npz of plain arrays:

    params           the flat parameter vector
    opt/NAME         each array of Optimizer.state_dict()
    epoch_loss       the current epoch's summed training loss and sample count so far (all ranks)
    meta             UTF-8 JSON: step, epoch and step within it, samples seen, world size, config,
                     parameter layout, and every rank's two random-generator states
    checksum         SHA-256 over all of the above (names, dtypes, shapes, bytes)

Rank 0 writes it (temporary file, fsync, rename); rank 0 reads it and broadcasts, so only
rank 0 needs to see the folder. Resuming with the same rank count continues every stream
exactly; with another count the data order and the global batch are unchanged (both derive
from the seed alone) but the per-rank random streams (dropout, noise, augmentation) are
not: rank r < old size continues old rank r's stream, higher ranks start new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time

import numpy as np

from mpidl.config import parse_every
from mpidl.errors import CheckpointError
from mpidl.init import DATA_STREAM, MODEL_STREAM
from mpidl.nn.conv import kernel_choices, set_kernel_choices
from mpidl.params import ParamStore


def atomic_write(path: str, write) -> None:
    """Write through `write(fileobj)` to a temporary file in the same folder, fsync, rename.
    A crash at any moment leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the user's usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_weights(path: str, store: ParamStore, **extra) -> None:
    """The flat parameter vector under 'params', the layout beside it, and each
    parameter as a named array: readable with numpy.load alone."""
    layout = store.layout()
    arrays = {
        "params": store.data,
        "names": np.array(layout["names"]),
        "offsets": np.array(layout["offsets"], dtype=np.int64),
        "shapes": np.array(_pad_shapes(layout["shapes"]), dtype=np.int64),
        "ndims": np.array([len(s) for s in layout["shapes"]], dtype=np.int64),
    }
    for p in store.params:
        arrays["param/" + p.name] = p.data
    for k, v in extra.items():
        arrays[k] = np.asarray(v)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _pad_shapes(shapes):
    width = max((len(s) for s in shapes), default=0)
    return [list(s) + [0] * (width - len(s)) for s in shapes]


def load_weights(path: str) -> dict[str, np.ndarray]:
    """Named arrays from a weights file written by save_weights (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        flat = z["params"]
        out = {}
        for name, off, shape, nd in zip(z["names"], z["offsets"], z["shapes"], z["ndims"]):
            shape = tuple(int(s) for s in shape[:nd])
            size = int(np.prod(shape, dtype=np.int64))
            out[str(name)] = flat[off:off + size].reshape(shape)
        return out


# -- checkpoints ---------------------------------------------------------------------

FORMAT = "mpidl-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.npz$")
# Flags that may differ between an interrupted run and its resumption; every other field
# of RunConfig changes the trajectory, so a mismatch there is an error. epochs/max_steps extend or shorten a run (a schedule that
# depends on the total, like cosine, then follows the new total); the failure knobs do not
# touch the numbers.
MAY_CHANGE_ON_RESUME = frozenset({"out", "threads", "allocator", "progress", "eval_batch_size", "checkpoint_dir",
                                  "checkpoint_every", "keep_last", "checkpoint_write", "resume", "expect_ranks",
                                  "epochs", "max_steps", "collective_timeout", "check_every",
                                  "on_drift", "on_nonfinite", "log_every", "timeline",
                                  "timeline_steps", "tensor_parallel", "pipeline_stages", "micro_batches",
                                  "pipeline_schedule"})


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.npz"


def _checksum(arrays: dict) -> np.ndarray:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def write_checkpoint(path: str, arrays: dict) -> None:
    arrays = dict(arrays)
    arrays["checksum"] = _checksum(arrays)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path: str) -> dict:
    """All arrays of a checkpoint, checksum verified. Raises CheckpointError saying what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file")
    except Exception as exc:  # zipfile, zlib, ValueError, EOFError, CRC errors: all mean damaged
        raise CheckpointError(f"checkpoint {path}: unreadable, truncated or corrupt ({type(exc).__name__}: {exc})")
    stored = arrays.pop("checksum", None)
    if stored is None or "meta" not in arrays or "params" not in arrays:
        raise CheckpointError(f"checkpoint {path}: not an mpidl checkpoint (missing checksum, meta or params)")
    if not np.array_equal(stored, _checksum(arrays)):
        raise CheckpointError(f"checkpoint {path}: checksum mismatch, the file is corrupt")
    return arrays


def meta_of(arrays: dict) -> dict:
    return json.loads(arrays["meta"].tobytes().decode())


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoint files in `folder`, newest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(folder, n)) for n in names if (m := _NAME.match(n))]
    return sorted(found, reverse=True)


def newest_good(folder: str, warn=print) -> tuple[str, dict] | None:
    """The newest checkpoint in `folder` that passes its checksum; damaged ones are reported
    through `warn` and skipped."""
    for _, path in list_checkpoints(folder):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as exc:
            warn(f"mpidl: warning: {exc}; trying an older one")
    return None


def _gather_json(comm, obj) -> list:
    """Every rank's JSON-able object, on every rank, through a fixed-width uint8 Allgather."""
    payload = json.dumps(obj, sort_keys=True).encode()
    _, longest = comm.allreduce_min_max(np.array([len(payload)], dtype=np.int64))
    rows = comm.allgather_bytes(payload, width=int(longest[0]))
    return [json.loads(row.rstrip(b"\0").decode()) for row in rows]


def _bcast_bytes(comm, payload: bytes | None) -> bytes:
    n = np.array([0 if payload is None else len(payload)], dtype=np.int64)
    comm.bcast_(n)
    buf = np.zeros(int(n[0]), dtype=np.uint8)
    if comm.rank == 0:
        buf[:] = np.frombuffer(payload, dtype=np.uint8)
    comm.bcast_(buf)
    return buf.tobytes()


class WriteBehind:
    """Rank 0's checkpoint writer thread: training goes on while the file is written, fsynced
    and renamed. At most one write is in flight (the next checkpoint waits for it); its
    failure is reported at the next checkpoint or at :meth:`finish`, on every rank."""

    def __init__(self):
        self._thread = None
        self._error: CheckpointError | None = None

    def submit(self, write) -> None:
        self.wait_quietly()

        def run():
            try:
                write()
            except CheckpointError as exc:
                self._error = exc
        self._thread = threading.Thread(target=run, name="mpidl-checkpoint-writer")
        self._thread.start()  # not a daemon: the process waits for a write under way

    def wait_quietly(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def failed(self) -> bool:
        """The write in flight has already failed (without waiting for it)."""
        return self._error is not None

    def take_error(self) -> CheckpointError | None:
        """Waits for the write in flight; its error, if it failed (once)."""
        self.wait_quietly()
        error, self._error = self._error, None
        return error


def _agree_on(comm, error):
    """Every rank learns of rank 0's failure and stops together (no rank left in a collective)."""
    if comm.first_failure(error is not None) is not None:
        raise error if error is not None else CheckpointError("rank 0 could not write a checkpoint")


def finish_writes(comm, writer: WriteBehind | None) -> None:
    """Collective: wait for rank 0's checkpoint write in flight and raise its failure everywhere."""
    if writer is not None:
        _agree_on(comm, writer.take_error() if comm.rank == 0 else None)


# A model split across ranks (mpidl.parallel.ShardedModel) is saved in the whole model's layout,
# so that its checkpoints resume on any grid and any rank count.
def _sharded(trainer):
    return getattr(trainer.model, "gather_whole", None) is not None


def _flat_like_params(trainer, value) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.size == trainer.store.size


def whole_layout(trainer) -> dict:
    return trainer.model.whole_layout() if _sharded(trainer) else trainer.store.layout()


def save_checkpoint(trainer, folder: str, keep_last: int = 0, writer: WriteBehind | None = None) -> str | None:
    """Collective: every rank contributes its random states; rank 0 writes the file and prunes
    old ones, at once or, with `writer`, in its thread from a copy of the state (the copy is
    the only stall). Returns the path on rank 0, None elsewhere."""
    comm = trainer.comm
    trainer.dopt.sync_buffers()  # every rank's running statistics count, not rank 0's alone
    rngs = _gather_json(comm, {"model": trainer.model_rng.bit_generator.state,
                               "data": trainer.data_rng_state()})
    epoch_loss = np.array(trainer.epoch_loss, dtype=np.float64)
    comm.allreduce_sum_(epoch_loss)
    optimizer_state = trainer.dopt.checkpoint_state()  # ZeRO: the shards gathered
    params = trainer.store.data
    if _sharded(trainer):  # tensor and pipeline shards gathered into the whole model's layout
        params = trainer.model.gather_whole(params)
        optimizer_state = {k: trainer.model.gather_whole(v) if _flat_like_params(trainer, v) else v
                           for k, v in optimizer_state.items()}
    path, error = None, None
    if comm.rank == 0:
        path, write = _prepare_rank0(trainer, folder, keep_last, rngs, epoch_loss, params, optimizer_state,
                                     copy=writer is not None)
        if writer is None:
            try:
                write()
            except CheckpointError as exc:
                error = exc
        else:
            error = writer.take_error()  # the previous write's outcome
            if error is None:
                writer.submit(write)
    _agree_on(comm, error)
    return path


def _prepare_rank0(trainer, folder, keep_last, rngs, epoch_loss, params, optimizer_state, copy: bool):
    """(path, write): the file's name and a function that writes it, from arrays that no longer
    change (copied when the write runs behind training)."""
    comm = trainer.comm
    from mpidl import __version__
    meta = {
        "format": FORMAT, "version": VERSION, "mpidl_version": __version__,
        "global_step": trainer.global_step, "epoch": trainer.epoch, "step_in_epoch": trainer.step_in_epoch,
        "samples_seen": trainer.samples_seen, "train_time": trainer.train_time,
        "world_size": comm.size, "config": trainer.cfg.to_dict(), "layout": whole_layout(trainer),
        "dtype": str(trainer.store.data.dtype), "rng": rngs,
        "preprocessing": trainer.data.preprocessing(),  # the --normalize statistics, fitted once
        "class_names": trainer.data.class_names, "feature_names": trainer.data.feature_names,
        "model": trainer.model.recipe,  # the architecture, as in model.json
        # The convolution kernels measured on the first batch, so a resumed run rounds alike.
        "kernels": None if _sharded(trainer) else kernel_choices(trainer.model.net).tolist(),
    }
    arrays = {"params": params, "epoch_loss": epoch_loss,
              "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for key, value in optimizer_state.items():
        arrays["opt/" + key] = np.asarray(value)
    if copy:
        arrays = {key: np.array(value) for key, value in arrays.items()}
    path = os.path.join(folder, checkpoint_name(trainer.global_step))
    step = trainer.global_step

    def write():
        try:
            os.makedirs(folder, exist_ok=True)
            write_checkpoint(path, arrays)
            if keep_last > 0:
                for _, old in list_checkpoints(folder)[keep_last:]:
                    os.unlink(old)
        except OSError as exc:  # disk full, quota, permissions: the previous checkpoint is untouched
            raise CheckpointError(f"--checkpoint-dir {folder}: cannot write checkpoint at step {step} "
                                  f"({exc.strerror or exc}); the previous checkpoints are intact")
    return path, write


def locate_checkpoint(cfg, warn=print) -> tuple[str, dict] | None:
    """Rank 0: the checkpoint --resume asks for, read and verified; None for 'auto' with none there."""
    if cfg.resume in ("latest", "auto"):
        found = newest_good(cfg.checkpoint_dir, warn)
        if found is None and cfg.resume == "latest":
            raise CheckpointError(f"--resume latest: no good checkpoint in {cfg.checkpoint_dir}")
        return found
    return cfg.resume, read_checkpoint(cfg.resume)


def check_compatible(trainer, path: str, arrays: dict) -> dict:
    """Rank 0: refuse a checkpoint from a different run (config, model layout, optimiser)."""
    meta = meta_of(arrays)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format {meta.get('format')} v{meta.get('version')}, "
                              f"this mpidl reads {FORMAT} v{VERSION}")
    mine = trainer.cfg.to_dict()
    differ = sorted(k for k, v in meta["config"].items()
                    if k in mine and k not in MAY_CHANGE_ON_RESUME and mine[k] != v)
    if differ:
        detail = ", ".join(f"--{k.replace('_', '-')} {meta['config'][k]!r} there, {mine[k]!r} now" for k in differ)
        raise CheckpointError(f"checkpoint {path} belongs to a different run: {detail}")
    if meta["layout"] != whole_layout(trainer) or meta["dtype"] != str(trainer.store.data.dtype):
        raise CheckpointError(f"checkpoint {path}: parameter layout or dtype differs from this model")
    shapes = _checkpoint_shapes(trainer)
    saved = _saved_optimizer_state(trainer, arrays)
    if set(saved) != set(shapes) or any(np.shape(saved[k]) != tuple(shapes[k]) for k in shapes):
        raise CheckpointError(f"checkpoint {path}: optimiser state does not fit --optimizer {trainer.cfg.optimizer}")
    return meta


def _saved_optimizer_state(trainer, arrays: dict) -> dict:
    """The file's optimiser state by this version's names (an older mpidl's converted)."""
    return trainer.optimizer.upgrade_state({k[4:]: v for k, v in arrays.items() if k.startswith("opt/")})


def _checkpoint_shapes(trainer) -> dict:
    shapes = trainer.dopt.checkpoint_shapes()
    if _sharded(trainer):
        state = trainer.optimizer.state_dict()
        shapes = {k: (trainer.model.whole_size,) if _flat_like_params(trainer, state[k]) else v
                  for k, v in shapes.items()}
    return shapes


def restore_checkpoint(trainer, arrays: dict | None) -> dict:
    """Collective: rank 0 passes the verified arrays, the others None; afterwards every rank
    holds the saved weights, optimiser state, position and its random states."""
    comm = trainer.comm
    meta_bytes = _bcast_bytes(comm, arrays["meta"].tobytes() if comm.rank == 0 else None)
    meta = json.loads(meta_bytes.decode())
    if _sharded(trainer):  # each rank takes its shard of the whole model
        trainer.model.scatter_whole(arrays["params"] if comm.rank == 0 else None, trainer.store.data)
    else:
        if comm.rank == 0:
            trainer.store.data[...] = arrays["params"]
        comm.bcast_(trainer.store.data)

    state, shapes = trainer.optimizer.state_dict(), trainer.dopt.checkpoint_shapes()
    saved = _saved_optimizer_state(trainer, arrays) if comm.rank == 0 else None
    restored = {}
    for key in sorted(state):
        if _sharded(trainer) and _flat_like_params(trainer, state[key]):
            buf = np.zeros(trainer.store.size, dtype=state[key].dtype)
            restored[key] = trainer.model.scatter_whole(saved[key] if comm.rank == 0 else None, buf)
            continue
        buf = np.zeros(int(np.prod(shapes[key], dtype=np.int64)), dtype=np.asarray(state[key]).dtype)
        if comm.rank == 0:
            buf[...] = saved[key].reshape(-1)
        comm.bcast_(buf)
        restored[key] = buf.reshape(shapes[key])
    trainer.dopt.load_checkpoint_state(restored)  # ZeRO: each rank keeps its shard

    epoch_loss = np.zeros(2)
    if comm.rank == 0:
        epoch_loss[:] = arrays["epoch_loss"]  # the end-of-epoch Allreduce adds the other ranks' zeros

    kernels = meta.get("kernels")
    if kernels and not _sharded(trainer) and np.shape(kernels) == kernel_choices(trainer.model.net).shape:
        set_kernel_choices(trainer.model.net, kernels)
    rngs = meta["rng"]
    if comm.rank < len(rngs):
        trainer.model_rng.bit_generator.state = rngs[comm.rank]["model"]
        trainer.data_rng.bit_generator.state = rngs[comm.rank]["data"]
    else:  # a rank the interrupted run did not have: a fresh stream that no earlier rank used
        seed, step = trainer.cfg.seed, meta["global_step"]
        trainer.model_rng.bit_generator.state = np.random.default_rng([seed, comm.rank, MODEL_STREAM, step]).bit_generator.state
        trainer.data_rng.bit_generator.state = np.random.default_rng([seed, comm.rank, DATA_STREAM, step]).bit_generator.state

    # The statistics the run was trained with (refitting on another rank count could differ
    # in the last bit).
    from mpidl.data.normalize import Normalizer
    saved = Normalizer.from_dict(meta.get("preprocessing", {}).get("normalize"))
    if saved is not None and trainer.data.normalizer is not None:
        trainer.data.normalizer = saved
    # Throughput counters (samples_seen, train_time) stay per session: they measure this run.
    trainer.resume_from(meta["global_step"], meta["epoch"], meta["step_in_epoch"], epoch_loss)
    return meta


class Checkpointer:
    """Training-loop hooks: periodic checkpoints, a final one, and a checkpoint-and-stop when
    a stop signal (preemption, time limit) arrives on any rank."""

    def __init__(self, cfg, stop_signal=None):
        self.folder = cfg.checkpoint_dir
        self.keep_last = cfg.keep_last
        self.writer = WriteBehind() if cfg.checkpoint_write == "behind" else None
        self.stalls: list[float] = []  # seconds each save held this rank up
        self.every, self.unit = parse_every(cfg.checkpoint_every) if cfg.checkpoint_every else (0, "steps")
        self.stop_signal = stop_signal
        self.last_saved = None  # (global step, epoch, step in epoch) of the last checkpoint
        self.preempted = False

    @staticmethod
    def position(trainer):
        return trainer.global_step, trainer.epoch, trainer.step_in_epoch

    def save(self, trainer):
        t0 = time.perf_counter()
        path = save_checkpoint(trainer, self.folder, self.keep_last, self.writer)
        self.stalls.append(time.perf_counter() - t0)
        self.last_saved = self.position(trainer)
        if path is not None:
            print(f"checkpoint: step {trainer.global_step} -> {path}", flush=True)

    def on_step(self, trainer):
        # One tiny collective per step decides both: a stop signal anywhere, or rank 0's
        # background write failed (disk full): then every rank stops within a step, not at
        # the next checkpoint, so at most one interval of steps is lost.
        comm = trainer.comm
        signalled = self.stop_signal is not None and self.stop_signal.received is not None
        write_failed = self.writer is not None and self.writer.failed()
        watching = self.stop_signal is not None or self.writer is not None
        if not watching or not comm.any_true(signalled or write_failed):
            stop = False
        else:
            finish_writes(comm, self.writer)  # raises on every rank if the write failed
            stop = comm.any_true(signalled)
        # The last step's checkpoint is left to on_end, which runs after the final evaluation.
        due = (self.unit == "steps" and self.every and trainer.global_step % self.every == 0
               and trainer.global_step < trainer.total_steps)
        if due or stop:
            self.save(trainer)
        if stop:
            self.preempted = trainer.stop_requested = True

    def on_epoch(self, trainer, metrics):
        if self.unit == "epochs" and self.every and metrics.epoch % self.every == 0:
            self.save(trainer)

    def on_end(self, trainer):
        if self.last_saved != self.position(trainer):
            self.save(trainer)
        self.finish(trainer)

    def finish(self, trainer):
        """Collective: the last write is on disk (or its failure raised on every rank)."""
        finish_writes(trainer.comm, self.writer)
