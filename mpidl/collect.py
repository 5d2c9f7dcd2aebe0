"""Collect the summary.json of many runs (a sweep's task folders) into one table.

    python -m mpidl.collect runs/sweep-1234            # a text table on stdout, best first
    python -m mpidl.collect runs/sweep-1234 --csv results.csv --sort val_loss

Columns: the run folder, every config value that differs between the runs, then the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

RESULTS = ("world_size", "steps", "train_loss", "val_loss", "val_accuracy", "samples_per_sec", "wall_time")


def find_summaries(root: str) -> list[tuple[str, dict]]:
    found = []
    for folder, _, files in os.walk(root):
        if "summary.json" in files:
            with open(os.path.join(folder, "summary.json")) as f:
                found.append((os.path.relpath(folder, root), json.load(f)))
    return sorted(found)


def table(summaries: list[tuple[str, dict]], sort_key: str | None = None) -> tuple[list[str], list[list]]:
    configs = [s.get("config", {}) for _, s in summaries]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if k != "out" and len({json.dumps(c.get(k)) for c in configs}) > 1]
    header = ["run", *varying, *RESULTS]
    rows = [[run, *(cfg.get(k) for k in varying), *(s.get(k) for k in RESULTS)]
            for (run, s), cfg in zip(summaries, configs)]
    key = sort_key or ("val_accuracy" if any(s.get("val_accuracy") is not None for _, s in summaries)
                       else "val_loss")
    if key in header:
        i = header.index(key)
        descending = key in ("val_accuracy", "samples_per_sec")
        rows.sort(key=lambda r: (r[i] is None, -r[i] if descending and r[i] is not None else r[i] or 0))
    return header, rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpidl.collect", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="folder holding run folders (searched recursively for summary.json)")
    p.add_argument("--sort", help="column to sort by (default val_accuracy, best first, else val_loss)")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    args = p.parse_args(argv)
    summaries = find_summaries(args.root)
    if not summaries:
        print(f"mpidl.collect: no summary.json under {args.root}", file=sys.stderr)
        return 1
    header, rows = table(summaries, args.sort)
    cells = [header, *[[_fmt(v) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
