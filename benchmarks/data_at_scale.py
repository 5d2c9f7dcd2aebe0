"""Data at any size, in one run: private memory per rank and throughput on memory-mapped
datasets, and block shuffling against full shuffling on a cold page cache.

    python benchmarks/data_at_scale.py [--small-gb 0.3] [--large-gb 2.0] [--dir /tmp]

Model: mlp 784-256-256-10 (Adam, global batch 128). Data: Fashion-MNIST's 60,000 training
images as float32 (3,136 bytes a sample), repeated to fill a 0.3 GB and a 2 GB .npy folder of
the same sample shape (x_train, y_train; the 10,000 test images as x_val, y_val).

1. Memory, 4 ranks: peak RssAnon (private anonymous memory; mapped file pages are not in it)
   per rank, training on the 0.3 GB and on the 2 GB folder through --dataset (mapped).
2. Throughput, 2 ranks (one per core): the 2 GB folder mapped, with a warm and with a cold
   page cache, against the 0.3 GB folder loaded into every rank's memory (np.load); pairs
   alternated, median of --repeats.
3. Reads on a cold cache, one process: samples/s gathering batches from the 2 GB file in the
   order --shuffle full and --shuffle blocks give (blocks of 32, 128, the default 334 = 1 MiB,
   and 2048 samples).
4. Accuracy: mlp 784-256-256-10 on the real Fashion-MNIST, 2 ranks, --shuffle full against
   --shuffle blocks (blocks of 32, 128 and the default 334), same seed and epochs.

"Cold" = every page of the files dropped from the page cache with posix_fadvise(DONTNEED)
before the run (no root needed; the file's pages are clean).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, REPO, child_env, mpiexec  # noqa: E402

from mpidl.data.loader import default_block  # noqa: E402

SAMPLE_BYTES = 784 * 4


def write_dataset(folder: str, gigabytes: float) -> int:
    """Fashion-MNIST as float32 rows, repeated to `gigabytes`; returns the training samples."""
    from mpidl.data import load_dataset
    fm = load_dataset("fashion-mnist")
    x = (np.asarray(fm.x_train).reshape(-1, 784) / np.float32(255)).astype(np.float32)
    y = np.asarray(fm.y_train)
    n = int(gigabytes * 1e9 // SAMPLE_BYTES)
    os.makedirs(folder, exist_ok=True)
    out = np.lib.format.open_memmap(os.path.join(folder, "x_train.npy"), "w+", np.float32, (n, 784))
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, len(x)):
        stop = min(n, start + len(x))
        out[start:stop] = x[:stop - start]
        labels[start:stop] = y[:stop - start]
    out.flush()
    del out
    np.save(os.path.join(folder, "y_train.npy"), labels)
    np.save(os.path.join(folder, "x_val.npy"), (np.asarray(fm.x_val).reshape(-1, 784) / np.float32(255)).astype(np.float32))
    np.save(os.path.join(folder, "y_val.npy"), np.asarray(fm.y_val))
    return n


def drop_cache(folder: str) -> None:
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_cache(folder: str) -> None:
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            while f.read(64 << 20):
                pass


def train(ranks: int, folder: str, *extra) -> dict:
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, os.path.join(HERE, "_data_child.py"), folder, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO, env=child_env(ranks))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def read_rate(folder: str, shuffle: str, block: int, batches: int) -> float:
    """Samples/s gathering `batches` global batches of 128 in the sampler's order, cold cache."""
    from mpidl.data import ShardedSampler
    drop_cache(folder)
    x = np.load(os.path.join(folder, "x_train.npy"), mmap_mode="r")
    sampler = ShardedSampler(len(x), 128, 0, 1, seed=0, shuffle=shuffle, block=block)
    t0 = time.perf_counter()
    n = 0
    for step in sampler.epoch(0):
        n += len(x[step.indices])
        if step.index + 1 == batches:
            break
    return n / (time.perf_counter() - t0)


def accuracy(shuffle: str, epochs: int, block: int = 0) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpidl.train", "--model", "mlp", "--hidden", "256,256",
               "--dataset", "fashion-mnist", "--epochs", str(epochs), "--batch-size", "128", "--optimizer", "adam",
               "--lr", "1e-3", "--shuffle", shuffle, "--progress", "none", "--out", out,
               *(["--shuffle-block", str(block)] if block else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO, env=child_env(2))
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["val_accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-gb", type=float, default=0.3)
    ap.add_argument("--large-gb", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=1000, help="training steps per throughput run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--read-batches", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=5, help="epochs of the accuracy comparison")
    ap.add_argument("--dir", default=None, help="where the datasets are written (default: a temporary folder)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "data_at_scale.json"))
    args = ap.parse_args()
    results = {"model": "mlp 784-256-256-10, adam, global batch 128",
               "data": "Fashion-MNIST train as float32, repeated; 10,000 test images for validation"}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        small, large = os.path.join(tmp, "small"), os.path.join(tmp, "large")
        results["small_samples"] = write_dataset(small, args.small_gb)
        results["large_samples"] = write_dataset(large, args.large_gb)
        print(f"datasets: {results['small_samples']} samples ({args.small_gb} GB), {results['large_samples']} "
              f"samples ({args.large_gb} GB)", flush=True)

        # 1. memory, 4 ranks, both mapped
        memory = {}
        for label, folder in (("small", small), ("large", large)):
            warm_cache(folder)
            run = train(4, folder, "--steps", "300")
            memory[label] = run["peak_rss_anon_mb"]
            print(f"4 ranks, {label} dataset mapped: peak RssAnon per rank (MB) "
                  f"{', '.join(f'{m:.0f}' for m in run['peak_rss_anon_mb'])}", flush=True)
        results["memory_4_ranks"] = memory
        results["memory_difference_mb"] = max(memory["large"]) - max(memory["small"])
        print(f"  difference of the largest ranks: {results['memory_difference_mb']:.1f} MB", flush=True)

        # 2. throughput, 2 ranks: small in memory vs large mapped (warm, cold), alternated
        rates = {"small in memory": [], "large mapped, warm": [], "large mapped, cold": []}
        for _ in range(args.repeats):
            rates["small in memory"].append(train(2, small, "--in-memory", "--steps", str(args.steps))["samples_per_sec"])
            warm_cache(large)
            rates["large mapped, warm"].append(train(2, large, "--steps", str(args.steps))["samples_per_sec"])
            drop_cache(large)
            rates["large mapped, cold"].append(train(2, large, "--steps", str(args.steps))["samples_per_sec"])
        medians = {k: statistics.median(v) for k, v in rates.items()}
        results["throughput_2_ranks"] = {"samples_per_sec": rates, "median": medians,
                                         "warm_ratio": medians["large mapped, warm"] / medians["small in memory"],
                                         "cold_ratio": medians["large mapped, cold"] / medians["small in memory"]}
        for k, v in medians.items():
            print(f"2 ranks, {k}: {v:.0f} samples/s (median of {args.repeats})", flush=True)
        print(f"  mapped/in-memory: warm {results['throughput_2_ranks']['warm_ratio']:.3f}, cold "
              f"{results['throughput_2_ranks']['cold_ratio']:.3f}", flush=True)

        # 3. cold reads in the shuffles' orders
        reads = {"full": read_rate(large, "full", 1, args.read_batches)}
        for block in (32, 128, default_block(results["large_samples"], SAMPLE_BYTES), 2048):
            reads[f"blocks {block}"] = read_rate(large, "blocks", block, args.read_batches)
        results["cold_read_samples_per_sec"] = reads
        for k, v in reads.items():
            print(f"cold reads, --shuffle {k}: {v:.0f} samples/s ({v * SAMPLE_BYTES / 1e6:.1f} MB/s), "
                  f"{v / reads['full']:.1f}x full", flush=True)

    # 4. accuracy of block shuffling
    acc = {"full": accuracy("full", args.epochs)}
    for block in (32, 128, default_block(60000, SAMPLE_BYTES)):
        acc[f"blocks {block}"] = accuracy("blocks", args.epochs, block)
    results["accuracy_fashion_mnist"] = {"epochs": args.epochs, **acc}
    print(f"Fashion-MNIST test accuracy after {args.epochs} epochs, 2 ranks: " +
          ", ".join(f"{k} {v:.4f}" for k, v in acc.items()), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
