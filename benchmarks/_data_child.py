"""One rank of benchmarks/data_at_scale.py: train mlp 784-256-256-10 on a dataset folder,
memory-mapped (--dataset FOLDER, as the command line reads it) or loaded into every rank's
memory (--in-memory), and report each rank's private memory and the throughput as one JSON
line from rank 0."""

import argparse
import json
import os

import numpy as np


def rss_anon_mb() -> float:
    """Private anonymous resident memory of this process (file-backed mapped pages excluded)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """Hook: RssAnon sampled every `every` steps; the peak is what a rank needed."""

    def __init__(self, every=25):
        self.every, self.peak = every, rss_anon_mb()

    def on_step(self, trainer):
        if trainer.global_step % self.every == 0:
            self.peak = max(self.peak, rss_anon_mb())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--in-memory", action="store_true")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--shuffle", default="full")
    args = ap.parse_args()

    import mpidl
    from mpidl.cli import parse_config
    from mpidl.data import ArrayDataset
    from mpidl.trainer import Trainer
    comm = mpidl.world()
    flags = ["--model", "mlp", "--hidden", "256,256", "--dataset", args.folder, "--batch-size", "128",
             "--max-steps", str(args.steps), "--optimizer", "adam", "--lr", "1e-3", "--progress", "none",
             "--shuffle", args.shuffle, "--cache-dir", "none", "--eval-batch-size", "500"]
    cfg = parse_config(flags)
    peak = PeakMemory()
    data = None
    if args.in_memory:  # what a script that np.load()s its arrays does: a private copy per rank
        load = {n: np.load(os.path.join(args.folder, n + ".npy")) for n in ("x_train", "y_train", "x_val", "y_val")}
        data = ArrayDataset(load["x_train"], load["y_train"], load["x_val"], load["y_val"])
    trainer = Trainer.from_config(cfg, comm, hooks=[peak], data=data)
    before = rss_anon_mb()
    trainer.train()
    peak.on_step(trainer)
    sent = np.array([peak.peak, rss_anon_mb(), before], dtype=np.float64)
    rows = comm.gather_rows(sent[None, :])
    if comm.rank == 0:
        per_rank = np.concatenate(rows)
        print(json.dumps({"ranks": comm.size, "steps": trainer.global_step,
                          "samples_per_sec": trainer.samples_seen / trainer.train_time,
                          "peak_rss_anon_mb": per_rank[:, 0].tolist(), "end_rss_anon_mb": per_rank[:, 1].tolist(),
                          "n_train": len(trainer.data.x_train)}), flush=True)


if __name__ == "__main__":
    main()
