"""How long a checkpoint holds training up, written behind (a thread on rank 0) against
synchronously, in one run: cnn on Fashion-MNIST (6.5 MB of weights, 13 MB with SGD momentum)
and mlp 784-4096-4096-10 (80 MB of weights, 160 MB checkpoints), 2 ranks, a checkpoint every
5 steps.

    python benchmarks/checkpoint_stall.py [--ranks 2] [--steps 30]

The stall is the time rank 0 spends in each save (gathering the state, copying it, and with
'sync' writing, fsyncing and renaming the file), from summary.json's checkpoint_stalls_ms.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_ranks  # noqa: E402

MODELS = {"cnn": ["--model", "cnn"], "mlp 784-4096-4096-10": ["--model", "mlp", "--hidden", "4096,4096",
                                                              "--optimizer", "sgd", "--momentum", "0.9",
                                                              "--lr", "0.01"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--dir", default=None, help="where checkpoints go (default: a temporary folder)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for label, model in MODELS.items():
            medians = {}
            for mode in ("sync", "behind"):
                out = os.path.join(tmp, f"{mode}-{len(rows)}")
                run_ranks(args.ranks, ["-m", "mpidl.train", *model, "--dataset", "fashion-mnist", "--batch-size", "64",
                                       "--max-steps", str(args.steps), "--checkpoint-dir", os.path.join(out, "ck"),
                                       "--checkpoint-every", "5", "--checkpoint-write", mode, "--keep-last", "2",
                                       "--progress", "none", "--check-every", "0", "--out", out])
                with open(os.path.join(out, "summary.json")) as f:
                    stalls = json.load(f)["checkpoint_stalls_ms"]
                medians[mode] = statistics.median(stalls)
            rows.append((label, medians))
            print(f"{label}: checkpoint stall, median of {args.steps // 5} saves on {args.ranks} ranks: "
                  f"sync {medians['sync']:.1f} ms, behind {medians['behind']:.1f} ms "
                  f"({medians['sync'] / max(medians['behind'], 1e-9):.1f}x less)", flush=True)


if __name__ == "__main__":
    main()
