"""The run's configuration: one flat dataclass, one field per command-line flag, TOML key and
Trainer keyword (``--batch-size``, ``batch_size = 128``, ``Trainer(..., batch_size=128)``).

This module knows nothing of models or data; mpidl.cli merges a model's recipe, a TOML file
and the flags into a RunConfig; ``library_config`` makes one from a Trainer's keywords.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field, fields

import numpy as np

from mpidl.errors import ConfigError

UNSET = None  # "take it from the model's recipe"


def _opt(default, help, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class RunConfig:
    # what to train
    model: str = _opt("mlp", "model to train", choices="models")
    dataset: str | None = _opt(UNSET, "a built-in dataset (default: the model's own) or your own: a .npz, a folder "
                                      "of .npy files, a .csv/.tsv table, an .h5 file or an image folder")
    data_dir: str | None = _opt(UNSET, "folder with the dataset's files (MNIST/Fashion-MNIST IDX raw or .gz; CIFAR-10 python batches)")
    # your own data (--dataset PATH; see "Your own data" in the README)
    target: str | None = _opt(UNSET, "table: the column holding the targets (default: one named target, "
                                     "label, class or y)")
    x_key: str | None = _opt(UNSET, ".npz, .npy folder or HDF5: the inputs' array (default x_train or x)")
    y_key: str | None = _opt(UNSET, ".npz, .npy folder or HDF5: the targets' array (default y_train or y)")
    val_fraction: float | None = _opt(UNSET, "hold out this fraction for validation (seeded by --seed) when the "
                                             "data has no validation split")
    task: str | None = _opt(UNSET, "what the targets are (default: integers are classes, floats values)",
                            choices=("classification", "regression"))
    image_size: str | None = _opt(UNSET, "image folders: resize every image, HxW or one size (e.g. 32x32, 28)")
    normalize: str = _opt("none", "per-feature (per-channel) preprocessing fitted on the whole training set: "
                                  "scale to [0, 1] or standard (zero mean, unit variance); saved with the weights",
                          choices=("none", "scale", "standard"))
    hidden: str | None = _opt(UNSET, "hidden layer sizes of mlp, comma-separated (default 64,64)")
    loss: str | None = _opt(UNSET, "loss of a --model FILE.py:FUNCTION (default from the targets: cross_entropy "
                                   "for class labels, mse for values)")
    # how long
    epochs: int | None = _opt(UNSET, "passes over the training set")
    max_steps: int | None = _opt(UNSET, "stop after this many optimiser steps in total")
    batch_size: int | None = _opt(UNSET, "GLOBAL batch size, split across ranks")
    drop_last: bool = _opt(True, "drop the last incomplete global batch of each epoch")
    shuffle: str = _opt("full", "sample order each epoch: full (a fresh permutation), blocks (contiguous blocks "
                                "of --shuffle-block samples in a fresh order: fewer, longer reads on slow file "
                                "systems) or none", choices=("full", "blocks", "none"))
    shuffle_block: int = _opt(0, "samples per block with --shuffle blocks (default: about 1 MiB of samples, "
                                 "at most 1/64 of the training set)")
    # optimiser and schedule
    optimizer: str | None = _opt(UNSET, "optimiser", choices=("sgd", "adam", "adamw"))
    lr: float | None = _opt(UNSET, "learning rate (before --lr-scaling)")
    momentum: float | None = _opt(UNSET, "SGD momentum (default 0.9 where the recipe says so, else 0)")
    nesterov: bool = _opt(False, "Nesterov momentum (SGD)")
    weight_decay: float = _opt(0.0, "weight decay (L2 for sgd/adam, decoupled for adamw); not on biases")
    schedule: str = _opt("constant", "learning-rate schedule", choices=("constant", "step", "cosine"))
    warmup_steps: int | None = _opt(UNSET, "linear warm-up steps (default 0; 5%% of the run with --lr-scaling linear)")
    lr_step: int = _opt(0, "'step' schedule: decay every this many steps (default: a third of the run)")
    lr_gamma: float = _opt(0.1, "'step' schedule: decay factor")
    lr_scaling: str = _opt("none", "'linear': lr x number of ranks, with warm-up (Goyal et al. 2017)",
                           choices=("none", "linear"))
    # numerics and reproducibility
    seed: int = _opt(0, "seed for initial weights and data order (same on every rank)")
    dtype: str = _opt("float32", "floating-point type of weights, gradients and activations",
                      choices=("float32", "float64"))
    conv_algorithm: str = _opt("auto", "3x3 stride-1 convolutions: auto (from 4 input channels up, each layer "
                                       "times Winograd F(2x2,3x3) against im2col on its first batch and keeps the "
                                       "faster; rank 0's choice holds on every rank), direct (im2col + GEMM "
                                       "always; shifted rows at 8-16 channels) or winograd",
                               choices=("auto", "direct", "winograd"))
    winograd_keeps: str = _opt("auto", "what a Winograd layer keeps for its weight gradient: transform (its "
                                       "transformed input, 4x the input's size: fastest), input (transforms it "
                                       "again in backward: no memory beyond the input) or auto (input from 32 "
                                       "output channels up, where that costs no measurable time)",
                               choices=("auto", "transform", "input"))
    # machine
    threads: int | None = _opt(UNSET, "BLAS threads per rank (default: cores / ranks on this node)")
    allocator: str = _opt("keep", "memory a step frees: keep (mapped for the next step's arrays, no page "
                                  "faults; glibc) or system (the C library's default: given back and "
                                  "faulted in again)", choices=("keep", "system"))
    # failures (see "Failure behaviour" in the README)
    collective_timeout: float = _opt(300.0, "abort the job if a rank waits this many seconds in one "
                                     "collective (a peer died or hangs); 0 disables")
    check_every: int = _opt(100, "compare a checksum of the weights across ranks every N steps; 0 disables")
    on_drift: str = _opt("repair", "when replicas differ: repair (copy rank 0's weights and optimiser "
                         "state) or abort", choices=("repair", "abort"))
    on_nonfinite: str = _opt("skip", "when the averaged gradient holds NaN/inf: skip the update (counted) "
                             "or abort", choices=("skip", "abort"))
    # data loading and profiling
    # Off by default: on small models (sub-millisecond steps) handing batches between threads
    # costs more GIL hand-offs than preparing inline saves (benchmarks/run_all.py measures both).
    prefetch: int = _opt(0, "batches prepared ahead by a background thread (0: prepare each batch in the "
                            "training loop; try 2 when augmentation or large inputs make data wait show)")
    cache_dir: str | None = _opt(UNSET, "folder where datasets read from files are kept as .npy and "
                                        "memory-mapped (default ~/.cache/mpidl; 'none': no cache)")
    timeline: str | None = _opt(UNSET, "write a Chrome trace of every rank's steps to this JSON file, in the "
                                       "output folder unless the name has a folder in it "
                                       "(open in ui.perfetto.dev or chrome://tracing)")
    timeline_steps: int = _opt(1000, "steps recorded in the --timeline, from the first")
    # output
    out: str | None = _opt(UNSET, "output folder (default runs/MODEL-DATASET-TIME)")
    eval_batch_size: int | None = _opt(UNSET, "samples per evaluation batch on each rank (default: this rank's "
                                              "share of the training batch, so evaluating needs no more "
                                              "memory than a step)")
    log_every: int = _opt(0, "also write a record to metrics.jsonl every N steps (step, training loss, "
                             "learning rate, samples/s); 0: per epoch only")
    progress: str = _opt("auto", "progress display on rank 0: auto (bar on a terminal), bar, log, none",
                         choices=("auto", "bar", "log", "none"))
    # communication (mpidl.parallel.sync)
    bucket_mb: float = _opt(0.0, "reduce gradients in buckets of this many MiB, each started while backward "
                                 "still runs (0: one Allreduce after backward)")
    overlap: str = _opt("test", "what moves bucket reductions forward during backward: 'test' (MPI_Testall "
                                "between layers) or 'thread' (a communication thread)", choices=("test", "thread"))
    accumulate: int = _opt(1, "micro-batches per optimiser step: the global batch is split into this many, "
                              "gradients reduced once per step")
    grad_compression: str = _opt("none", "send gradients as 16-bit floats (fp16, or bf16 emulated), summed in "
                                         "float32", choices=("none", "fp16", "bf16"))
    zero: int = _opt(0, "1: ZeRO stage 1, optimiser state sharded across ranks (Reduce_scatter + Allgather)",
                     choices=(0, 1))
    allreduce: str = _opt("flat", "'hierarchical': Reduce in each node, Allreduce among node leaders, Bcast; "
                                  "'auto': measure the link at start-up and take flat, bf16 or fp16, whichever "
                                  "the cost model predicts fastest", choices=("flat", "hierarchical", "auto"))
    # model parallelism (mpidl.parallel.tensor, mpidl.parallel.pipeline)
    tensor_parallel: int = _opt(1, "split the dense pairs and attention layers across this many ranks (Megatron-style); "
                                   "the data-parallel degree is ranks / (tensor x pipeline)")
    pipeline_stages: int = _opt(1, "split the network's top-level layers into this many consecutive stages, "
                                   "one per rank of a pipeline group")
    micro_batches: int | None = _opt(UNSET, "micro-batches per step in the pipeline (default 2 x stages)")
    pipeline_schedule: str = _opt("1f1b", "pipeline schedule: 1f1b (at most stages-s micro-batches held on stage s) "
                                          "or gpipe (all forwards, then all backwards)", choices=("1f1b", "gpipe"))
    # checkpoints and clusters (see mpidl/checkpoint.py and jobs/)
    checkpoint_dir: str | None = _opt(UNSET, "write checkpoints into this folder (rank 0, atomically)")
    checkpoint_every: str | None = _opt(UNSET, "checkpoint every N steps ('500') or every N epochs ('2e'); "
                                        "a final one is always written when --checkpoint-dir is set")
    keep_last: int = _opt(3, "keep only the newest K checkpoints (0 keeps all)")
    checkpoint_write: str = _opt("behind", "'behind': rank 0 writes each checkpoint in a thread while training "
                                 "goes on (one in flight); 'sync': training waits for the disk",
                                 choices=("behind", "sync"))
    resume: str | None = _opt(UNSET, "'latest' (newest good checkpoint in --checkpoint-dir, error if none), "
                              "'auto' (the same, or a fresh start if there is none) or a checkpoint file")
    expect_ranks: int | None = _opt(UNSET, "fail unless the MPI world has exactly this many ranks "
                                    "(job scripts pass $SLURM_NTASKS: catches N one-rank worlds)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> bytes:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).digest()

    def hidden_sizes(self) -> tuple[int, ...]:
        if self.hidden is None:
            return (64, 64)
        try:
            sizes = tuple(int(s) for s in str(self.hidden).split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"--hidden {self.hidden!r}: expected comma-separated integers, e.g. 128,64")
        if not sizes or min(sizes) < 1:
            raise ConfigError(f"--hidden {self.hidden!r}: sizes must be positive integers")
        return sizes

    def image_hw(self) -> tuple[int, int] | None:
        if self.image_size is None:
            return None
        m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(self.image_size))
        if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < 1):
            raise ConfigError(f"--image-size {self.image_size!r}: expected HEIGHTxWIDTH like 32x32, or one size")
        h = int(m.group(1))
        return h, int(m.group(2) or h)

    def model_options(self) -> dict:
        """What a model's factory receives as options."""
        return {"hidden": self.hidden_sizes()} if self.hidden is not None else {}


FIELDS = {f.name: f for f in fields(RunConfig)}


def _field_type(f) -> type:
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return t
    raise TypeError(f.type)


def validate(cfg: RunConfig) -> None:
    def need(cond, flag, msg):
        if not cond:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(cfg, flag)}: {msg}")

    need(cfg.epochs is None or cfg.epochs >= 1, "epochs", "must be at least 1")
    need(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", "must be at least 1")
    need(cfg.batch_size is not None and cfg.batch_size >= 1, "batch_size", "must be at least 1")
    need(cfg.lr is not None and cfg.lr > 0, "lr", "must be positive")
    need(0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)")
    need(cfg.weight_decay >= 0, "weight_decay", "must be non-negative")
    need(cfg.warmup_steps is None or cfg.warmup_steps >= 0, "warmup_steps", "must be non-negative")
    need(cfg.lr_step >= 0, "lr_step", "must be non-negative")
    need(0 < cfg.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
    need(cfg.threads is None or cfg.threads >= 1, "threads", "must be at least 1")
    need(cfg.eval_batch_size is None or cfg.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
    need(cfg.collective_timeout >= 0, "collective_timeout", "must be non-negative")
    need(cfg.check_every >= 0, "check_every", "must be non-negative")
    need(cfg.prefetch >= 0, "prefetch", "must be non-negative")
    need(cfg.timeline_steps >= 1, "timeline_steps", "must be at least 1")
    need(cfg.log_every >= 0, "log_every", "must be non-negative")
    need(cfg.shuffle_block >= 0, "shuffle_block", "must be non-negative")
    need(cfg.val_fraction is None or 0 < cfg.val_fraction < 1, "val_fraction", "must be between 0 and 1")
    need(not cfg.nesterov or (cfg.optimizer == "sgd" and cfg.momentum > 0), "nesterov",
         "needs --optimizer sgd and --momentum > 0")
    need(cfg.bucket_mb >= 0, "bucket_mb", "must be non-negative")
    need(cfg.accumulate >= 1, "accumulate", "must be at least 1")
    need(not cfg.zero or (cfg.bucket_mb == 0 and cfg.grad_compression == "none" and cfg.allreduce != "hierarchical"),
         "zero", "does not combine with --bucket-mb, --grad-compression or --allreduce hierarchical")
    need(cfg.allreduce != "hierarchical" or (cfg.bucket_mb == 0 and cfg.grad_compression == "none"), "allreduce",
         "hierarchical does not combine with --bucket-mb or --grad-compression")
    need(cfg.allreduce != "auto" or (cfg.grad_compression == "none" and not cfg.zero and cfg.bucket_mb == 0),
         "allreduce", "auto chooses the compression and the buckets itself: leave out --grad-compression, "
         "--bucket-mb and --zero")
    need(cfg.tensor_parallel >= 1, "tensor_parallel", "must be at least 1")
    need(cfg.pipeline_stages >= 1, "pipeline_stages", "must be at least 1")
    need(cfg.micro_batches is None or cfg.micro_batches >= 1, "micro_batches", "must be at least 1")
    need(cfg.tensor_parallel * cfg.pipeline_stages == 1 or (cfg.bucket_mb == 0 and cfg.grad_compression == "none"
                                                            and cfg.allreduce == "flat" and not cfg.zero),
         "tensor_parallel", "with --pipeline-stages: the gradient reduction among replicas is the flat Allreduce "
         "(--bucket-mb, --grad-compression, --allreduce hierarchical and --zero do not combine with them yet)")
    need(cfg.keep_last >= 0, "keep_last", "must be non-negative (0 keeps all)")
    need(cfg.expect_ranks is None or cfg.expect_ranks >= 1, "expect_ranks", "must be at least 1")
    need(cfg.resume is None or cfg.resume not in ("latest", "auto") or cfg.checkpoint_dir is not None,
         "resume", "needs --checkpoint-dir to look in")
    need(cfg.checkpoint_every is None or cfg.checkpoint_dir is not None, "checkpoint_every",
         "needs --checkpoint-dir")
    need(cfg.epochs is not None or cfg.max_steps is not None, "epochs", "give --epochs or --max-steps")
    need(cfg.optimizer in ("sgd", "adam", "adamw"), "optimizer", "choose sgd, adam or adamw")
    if cfg.checkpoint_every is not None:
        parse_every(cfg.checkpoint_every)
    cfg.hidden_sizes()
    cfg.image_hw()


def parse_every(text: str) -> tuple[int, str]:
    """'500' -> (500, 'steps'); '2e' -> (2, 'epochs')."""
    m = re.fullmatch(r"\s*(\d+)\s*(e|epochs?)?\s*", str(text))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--checkpoint-every {text!r}: expected a positive step count like 500, "
                          "or an epoch count like 2e")
    return int(m.group(1)), ("epochs" if m.group(2) else "steps")


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


# A Trainer built from Python gets these where the command line has a model's recipe.
LIBRARY_DEFAULTS = dict(dataset="arrays", optimizer="adam", lr=1e-3, batch_size=64, momentum=0.0)


def library_config(settings: dict, model_name: str = "custom") -> RunConfig:
    """RunConfig from a Trainer's keywords; an unknown keyword is an error with a suggestion."""
    for key in settings:
        if key not in FIELDS or key in ("model", "dataset", "data_dir", "config", "target", "x_key", "y_key",
                                        "val_fraction", "task", "image_size"):
            raise ConfigError(f"Trainer: unknown setting {key!r}{did_you_mean(key, FIELDS)}")
    if isinstance(settings.get("hidden"), (tuple, list)):
        settings = dict(settings, hidden=",".join(map(str, settings["hidden"])))
    cfg = RunConfig(**{**LIBRARY_DEFAULTS, "model": model_name, **settings})
    if not isinstance(cfg.dtype, str):  # np.float64 and the like
        cfg.dtype = str(np.dtype(cfg.dtype))
    validate(cfg)
    return cfg
