"""Learning curves of one or several training runs, overlaid in one PNG.

    python -m mpidl.plot runs/adam runs/sgd -o curves.png --labels Adam,SGD

Reads RUN_DIR/metrics.jsonl of each run (and RUN_DIR/summary.json where there is one).
Left panel: loss against step, training loss solid (from the step records written with
--log-every, else from the epoch records), validation loss dashed with markers, one colour
per run. Right panel: validation accuracy against step; left out when no run has accuracy
(regression). Needs matplotlib: pip install 'mpidl[plot]'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

from mpidl.checkpoint import atomic_write
from mpidl.errors import EXIT_USAGE

PROG = "mpidl.plot"


class PlotError(Exception):
    """Input that cannot be plotted; main reports it in one line and exits with EXIT_USAGE."""


@dataclass
class Run:
    """One run's curves as (step, value) points, sorted by step, nulls left out."""
    folder: str
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    train_from_steps: bool = False
    val_split: str | None = None
    dataset: str | None = None


def _number(value):
    """A finite float, or None for null, a missing key or anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _points(records, key) -> list[tuple[float, float]]:
    pts = [(_number(r.get("step")), _number(r.get(key))) for r in records]
    return sorted((s, v) for s, v in pts if s is not None and v is not None)


def read_records(path: str) -> tuple[list[dict], list[dict]]:
    """(epoch records, step records) of a metrics.jsonl; a record without "kind" is an epoch record."""
    epochs, steps = [], []
    try:
        with open(path) as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as e:
        raise PlotError(f"cannot read {path}: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise PlotError(f"{path} line {number}: not JSON") from None
        if not isinstance(record, dict):
            raise PlotError(f"{path} line {number}: not a JSON object")
        kind = record.get("kind", "epoch")
        if kind == "epoch":
            epochs.append(record)
        elif kind == "step":
            steps.append(record)
        # Other kinds, if a later version writes some, are not curves: skip them.
    if not epochs and not steps:
        raise PlotError(f"{path}: no records")
    return epochs, steps


def _read_summary(run_dir: str) -> dict:
    """summary.json is optional: a missing or unreadable one only costs the title."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def read_run(run_dir: str) -> Run:
    if not os.path.isdir(run_dir):
        raise PlotError(f"{run_dir}: no such run folder")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{run_dir}: no metrics.jsonl (not a run folder, or the run wrote none)")
    epochs, steps = read_records(path)
    summary = _read_summary(run_dir)
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    run = Run(folder=os.path.basename(os.path.normpath(os.path.abspath(run_dir))),
              val_loss=_points(epochs, "val_loss"), val_accuracy=_points(epochs, "val_accuracy"),
              val_split=summary.get("val_split") if isinstance(summary.get("val_split"), str) else None,
              dataset=config.get("dataset") if isinstance(config.get("dataset"), str) else None)
    step_train = _points(steps, "train_loss")
    run.train_from_steps = bool(step_train)
    run.train_loss = step_train or _points(epochs, "train_loss")
    return run


def _common(values):
    """The one value all runs share, else None."""
    values = {v for v in values if v is not None}
    return values.pop() if len(values) == 1 else None


def _use_log_scale(runs) -> bool:
    """Log loss axis when the losses span a wide range (a steep first epoch hides the rest)."""
    values = [v for r in runs for _, v in r.train_loss + r.val_loss]
    return bool(values) and min(values) > 0 and max(values) / min(values) > 30


def _minor_log_label(value, _pos) -> str:
    """Label the 2x and 5x minor ticks of a log axis, leave the others blank."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if abs(lead - 2) < 1e-6 or abs(lead - 5) < 1e-6 else ""


def draw(runs: list[Run], labels: list[str], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    with_accuracy = any(r.val_accuracy for r in runs)
    known_split = _common(r.val_split for r in runs)  # from summary.json, when the runs agree
    split = known_split or "val"
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(12.5 if with_accuracy else 7, 4.8),
                             squeeze=False, constrained_layout=True)
    loss_ax = axes[0][0]
    for i, (run, label) in enumerate(zip(runs, labels)):
        colour = f"C{i % 10}"
        if run.train_loss:
            xs, ys = zip(*run.train_loss)
            # Per-step losses are noisy and dense: thinner, a little transparent, no markers.
            loss_ax.plot(xs, ys, color=colour, lw=1.2 if run.train_from_steps else 1.8,
                         alpha=0.85 if run.train_from_steps else 1.0,
                         marker=None if run.train_from_steps or len(xs) > 40 else ".")
        if run.val_loss:
            xs, ys = zip(*run.val_loss)
            loss_ax.plot(xs, ys, color=colour, ls="--", lw=1.8, marker="o", ms=4.5)
    if _use_log_scale(runs):
        loss_ax.set_yscale("log")
        # Plain numbers (0.1, 0.2, 0.5, 1, 2) rather than only the powers of ten.
        loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        loss_ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
    loss_ax.set_title("Loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss" + (" (log scale)" if loss_ax.get_yscale() == "log" else ""))
    # One legend: a coloured entry per run, then what the two line styles mean.
    handles = [Line2D([], [], color=f"C{i % 10}", lw=2.5) for i in range(len(runs))]
    handles += [Line2D([], [], color="0.35", lw=1.5), Line2D([], [], color="0.35", lw=1.5, ls="--", marker="o",
                                                             ms=4.5)]
    loss_ax.legend(handles, [*labels, "train loss", f"{split} loss"], fontsize="small", framealpha=0.85)

    if with_accuracy:
        acc_ax = axes[0][1]
        for i, (run, label) in enumerate(zip(runs, labels)):
            if run.val_accuracy:
                xs, ys = zip(*run.val_accuracy)
                acc_ax.plot(xs, ys, color=f"C{i % 10}", lw=1.8, marker="o", ms=4.5, label=label)
        acc_ax.set_title("Accuracy")
        acc_ax.set_xlabel("step")
        acc_ax.set_ylabel(f"{split} accuracy")
        acc_ax.legend(fontsize="small", loc="lower right", framealpha=0.85)
    for ax in axes[0]:
        ax.grid(True, alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    dataset = _common(r.dataset for r in runs)
    title = [f"dataset {dataset}" if dataset else "", f"validation split: {known_split}" if known_split else ""]
    if any(title):
        fig.suptitle(", ".join(t for t in title if t), fontsize="medium")
    ext = os.path.splitext(out)[1].lstrip(".").lower()
    fmt = ext or "png"  # no extension: a PNG
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        raise PlotError(f"cannot write {out}: unknown image format {ext!r} (use .png)")
    try:
        atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=110))
    except OSError as e:
        raise PlotError(f"cannot write {out}: {e}") from None
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpidl.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's output folder (holds metrics.jsonl)")
    p.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default curves.png)")
    p.add_argument("--labels", help="legend labels, comma-separated, one per RUN_DIR (default: folder names)")
    args = p.parse_args(argv)
    try:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise PlotError("needs matplotlib: pip install 'mpidl[plot]'") from None
        labels = None
        if args.labels is not None:
            labels = [s.strip() for s in args.labels.split(",")]
            if len(labels) != len(args.runs):
                raise PlotError(f"--labels gives {len(labels)} label(s) for {len(args.runs)} run(s)")
        runs = [read_run(d) for d in args.runs]
        draw(runs, labels or [r.folder for r in runs], args.output)
    except PlotError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.output} ({len(runs)} run{'' if len(runs) == 1 else 's'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
