"""The command line: flags and TOML merged with a model's recipe into a RunConfig, then one
Trainer; errors become one line and an exit status (mpidl.errors).

    python -m mpidl.train                      # one process (a world of one)
    mpirun -n 4 python -m mpidl.train          # four ranks, same global batch
    mpirun -n 4 python -m mpidl.train --model mlp --dataset fashion-mnist --epochs 5
    mpirun -n 2 python -m mpidl.train --model my_models.py:build --dataset digits
    mpidl --help

Only rank 0 prints and writes files. A bad flag, config or data file is reported once,
in one line, and every rank exits with status 2; an unexpected exception on any rank
aborts all ranks.
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import time
from dataclasses import fields

from mpidl.config import FIELDS, RunConfig, _field_type, did_you_mean, validate
from mpidl.errors import (EXIT_HALTED, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE, TrainingHalted, UserError,
                          ConfigError)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Datasets that read no files, so --data-dir cannot apply to them.
BUILT_IN_DATASETS = ("digits", "xor", "regression")


def _fail(message: str, rank: int | None = None) -> None:
    tag = f" [rank {rank}]" if rank else ""
    print(f"mpidl: error{tag}: {message}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing (so that only rank 0 prints), and suggests
    the closest flag for a misspelled one."""

    def error(self, message):
        if "unrecognized arguments:" in message:
            flags = [s for a in self._actions for s in a.option_strings]
            unknown = message.split("unrecognized arguments:", 1)[1].split()
            hints = []
            for word in unknown:
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{word}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        raise ConfigError(message)

    def print_help(self, file=None):
        from mpidl.parallel.comm import launcher_rank
        if launcher_rank() == 0:
            super().print_help(file)


def _choices(f):
    from mpidl.data.datasets import LOADERS
    c = f.metadata.get("choices")
    if c == "models":
        return None  # a built-in name or FILE.py:FUNCTION: checked when the model is built
    return {"datasets": tuple(LOADERS)}.get(c, c) if isinstance(c, str) else c


def build_parser() -> argparse.ArgumentParser:
    from mpidl.models import MODELS
    width = max(map(len, MODELS))
    models = "\n".join(f"  {name:{width}s}  {spec.help}" for name, spec in MODELS.items())
    p = _Parser(
        prog="mpidl",
        description="Data-parallel training with NumPy kernels and MPI Allreduce.\n"
                    "Launch with: mpirun -n 4 python -m mpidl.train [options]",
        epilog=f"models:\n{models}\n  {'FILE.py:FUNCTION':{width}s}  your own: FUNCTION(sample_shape, "
               "num_classes, options) returns an mpidl.nn module (also MODULE:FUNCTION)\n\n"
               "Every option can also be set in --config FILE.toml "
               "(keys as the option names, e.g. batch_size = 128); flags win over the file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file")
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(f)
        default = f.default
        helptext = f.metadata["help"] + ("" if default is None or t is bool else f" (default {default})")
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext)
        else:
            choices = _choices(f)
            p.add_argument(flag, type=t, choices=choices, metavar=None if choices else t.__name__.upper(),
                           help=helptext)
    return p


def _from_toml(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})")
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"--config {path}: unknown key {key!r}{did_you_mean(name, FIELDS)}")
        f = FIELDS[name]
        t = _field_type(f)
        if name == "hidden" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        ok = (isinstance(value, bool) if t is bool else
              isinstance(value, int) and not isinstance(value, bool) if t is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if t is float else
              isinstance(value, str))
        if not ok:
            raise ConfigError(f"--config {path}: {key} = {value!r} should be of type {t.__name__}")
        choices = _choices(f)
        if choices and value not in choices:
            raise ConfigError(f"--config {path}: {key} = {value!r}; choose from {', '.join(choices)}")
        out[name] = t(value)
    return out


def parse_config(argv=None) -> RunConfig:
    """Flags and file merged, model recipe applied, values checked. Raises ConfigError."""
    from mpidl.models import MODELS, is_factory_path
    args = vars(build_parser().parse_args(argv))
    file_values = _from_toml(args.pop("config")) if "config" in args else {}
    given = {**file_values, **args}   # what the user set, by flag or file
    model = given.get("model", RunConfig.model)
    if not is_factory_path(model) and model not in MODELS:
        raise ConfigError(f"--model {model!r}: not a built-in model ({', '.join(MODELS)}) "
                          f"nor FILE.py:FUNCTION{did_you_mean(model, MODELS)}")
    recipe = MODELS[model].defaults if model in MODELS else {}
    unknown = [k for k in recipe if k not in FIELDS]
    if unknown:
        raise ConfigError(f"model {model}: its recipe sets unknown option(s) {', '.join(unknown)}")
    if is_factory_path(model):  # your own model: the library's defaults where no recipe exists
        recipe = {"dataset": "digits", "epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 1e-3}
    if "max_steps" in given and "epochs" not in given:
        # --max-steps alone sets the run's length: the recipe's epochs would cut it short
        recipe = {k: v for k, v in recipe.items() if k != "epochs"}
    cfg = RunConfig(**{**recipe, **given})
    if cfg.momentum is None:
        cfg.momentum = 0.0
    validate(cfg)
    _refuse_what_does_not_apply(cfg, given, MODELS.get(model))
    return cfg


def _refuse_what_does_not_apply(cfg: RunConfig, given: dict, spec) -> None:
    """A flag the run would ignore is an error, not a silent no-op."""
    def refuse(flag, why):
        raise ConfigError(f"--{flag.replace('_', '-')} {given[flag]}: {why}")

    if "hidden" in given and spec is not None and "hidden" not in spec.options:
        refuse("hidden", f"--model {cfg.model} has no hidden sizes to set (only mlp reads --hidden)")
    if "loss" in given and spec is not None:
        refuse("loss", f"--model {cfg.model} has its own loss ({spec.loss}); --loss is for FILE.py:FUNCTION models")
    if "data_dir" in given and cfg.dataset in BUILT_IN_DATASETS:
        refuse("data_dir", f"--dataset {cfg.dataset} is built in and reads no files")
    from mpidl.data import LOADERS
    own = cfg.dataset not in LOADERS
    for flag in ("target", "x_key", "y_key", "val_fraction", "image_size", "task"):
        if flag in given and not own:
            refuse(flag, f"applies to your own data (--dataset PATH), not to the built-in {cfg.dataset}")
    if "data_dir" in given and own:
        refuse("data_dir", "applies to the built-in mnist, fashion-mnist and cifar10; give your own data "
                           "as --dataset PATH")
    if "shuffle_block" in given and cfg.shuffle != "blocks":
        refuse("shuffle_block", f"applies to --shuffle blocks, not {cfg.shuffle}")
    for flag in ("momentum", "nesterov"):
        if flag in given and given[flag] and cfg.optimizer != "sgd":
            refuse(flag, f"applies to --optimizer sgd, not {cfg.optimizer}")
    for flag in ("lr_step", "lr_gamma"):
        if flag in given and cfg.schedule != "step":
            refuse(flag, f"applies to --schedule step, not {cfg.schedule}")
    if "overlap" in given and cfg.bucket_mb == 0 and cfg.grad_compression == "none":
        refuse("overlap", "applies to bucketed reduction (--bucket-mb or --grad-compression)")
    if "timeline_steps" in given and not cfg.timeline:
        refuse("timeline_steps", "applies with --timeline FILE")
    if "keep_last" in given and cfg.checkpoint_dir is None:
        refuse("keep_last", "needs --checkpoint-dir")


def main(argv=None) -> int:
    from mpidl.parallel.comm import launcher_rank
    rank_hint = launcher_rank()
    try:
        cfg = parse_config(argv)
    except UserError as exc:
        if rank_hint == 0:
            _fail(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    named_by_time = cfg.out is None
    if named_by_time:
        data = os.path.basename(os.path.normpath(cfg.dataset)).replace(":", "-")
        cfg.out = os.path.join("runs", f"{cfg.model.replace(':', '-').replace('/', '_')}-{data}-"
                                       f"{time.strftime('%Y%m%d-%H%M%S')}")

    from mpidl.parallel import agreed, world
    from mpidl.trainer import Trainer
    try:
        comm = world(cfg.threads, cfg.collective_timeout, cfg.expect_ranks, cfg.allocator)
    except UserError as exc:  # the same verdict on every rank, no collective needed
        if getattr(exc, "report", True):
            _fail(str(exc))
        else:  # srun --kill-on-bad-exit ends all tasks at the first exit: let the one that prints go first
            time.sleep(0.5)
        return EXIT_USAGE
    if named_by_time:  # rank 0's clock names the run: ranks that start a second apart must agree
        cfg.out = comm.allgather_bytes(cfg.out.encode(), width=1024)[0].rstrip(b"\0").decode()
    lead = comm.rank == 0
    try:
        trainer = agreed(comm, lambda: Trainer.from_config(cfg, comm))
        trainer.fit()
    except TrainingHalted as exc:  # raised on every rank at the same step
        if lead:
            _fail(str(exc))
        return EXIT_HALTED
    except UserError as exc:  # raised on every rank together (mpidl.parallel.agreed)
        if getattr(exc, "report", lead):
            _fail(str(exc), getattr(exc, "rank", None))
        return EXIT_USAGE
    # The run is over and its files are written: a signal in the last moments of the process
    # (the launcher forwarding a late Ctrl-C) must not turn it into a failure.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return EXIT_PREEMPTED if trainer.preempted else EXIT_OK
