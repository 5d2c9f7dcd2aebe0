"""Accuracy with 16-bit gradient communication against full precision, same runs otherwise.

    python benchmarks/compression_accuracy.py --ranks 4
    python benchmarks/compression_accuracy.py --ranks 2 --dataset fashion-mnist --epochs 5

Launches `mpiexec -n RANKS python -m mpidl.train` once per codec (none, fp16, bf16) with the
mlp recipe and prints final validation accuracy and loss from each run's summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import child_env, mpiexec  # noqa: E402  (benchmarks import nothing from tests/)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=None, help="default: the mlp recipe's")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--extra", default="", help="more mpidl.train flags, space-separated")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds.split(","):
            for codec in ("none", "fp16", "bf16"):
                out = os.path.join(tmp, f"{codec}-{seed}")
                cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "mpidl.train", "--model", "mlp",
                       "--dataset", args.dataset, "--seed", seed, "--grad-compression", codec,
                       "--progress", "none", "--out", out, *args.extra.split()]
                if args.epochs:
                    cmd += ["--epochs", str(args.epochs)]
                subprocess.run(cmd, check=True, capture_output=True, env=child_env(args.ranks))
                with open(os.path.join(out, "summary.json")) as f:
                    s = json.load(f)
                rows.append((seed, codec, s["val_accuracy"], s["val_loss"], s["samples_per_sec"]))
    print(f"mlp on {args.dataset}, {args.ranks} ranks")
    print("| seed | gradients on the wire | val accuracy | val loss | samples/s |")
    print("|---|---|---|---|---|")
    for seed, codec, acc, loss, sps in rows:
        print(f"| {seed} | {codec} | {acc:.4f} | {loss:.4f} | {sps:.0f} |")


if __name__ == "__main__":
    main()
