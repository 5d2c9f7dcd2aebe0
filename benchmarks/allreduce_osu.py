"""Allreduce microbenchmark in the OSU style, plus the memory bandwidth of this run.

    mpiexec -n 4 python benchmarks/allreduce_osu.py --out allreduce-4.json [--max-bytes 67108864]

For each message size (float32 SUM, in place): warm-up iterations, then each timed
iteration starts after a Barrier and is timed with MPI.Wtime; an iteration's time is the
slowest rank's. Reported: median and the 10th/90th percentiles, algorithm bandwidth n/t
and bus bandwidth n/t * 2(p-1)/p (the bytes each rank must move in a ring, NCCL's
convention), and the ring lower bound 2(p-1)/p * n / B with B the memory copy bandwidth
that every rank measures at the same time, in this run.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from mpi4py import MPI


def timed(comm, fn, iters: int) -> np.ndarray:
    """Seconds per iteration, the slowest rank's, each iteration started after a barrier."""
    times = np.empty(iters)
    for i in range(iters):
        comm.Barrier()
        t0 = MPI.Wtime()
        fn()
        times[i] = MPI.Wtime() - t0
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)
    return times


def copy_bandwidth(comm, nbytes: int, iters: int = 7) -> float:
    """Bytes per second of np.copyto with every rank copying at once (the shared-memory
    transport is limited by exactly this contended rate)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t = timed(comm, lambda: np.copyto(dst, src), iters)
    return nbytes / float(np.median(t))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-bytes", type=int, default=1024)
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    ap.add_argument("--factor", type=int, default=4, help="size step (x4: 1K, 4K, 16K, ...)")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of timed work aimed at per size")
    args = ap.parse_args(argv)
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    bandwidth = copy_bandwidth(comm, min(max(args.max_bytes, 1 << 20), 64 << 20))
    rows = []
    n = args.min_bytes
    while n <= args.max_bytes:
        buf = np.zeros(n // 4, dtype=np.float32)  # zeros: repeated in-place sums stay finite

        def reduce():
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

        probe = timed(comm, reduce, 5)  # warm-up, and a guess of how many iterations fit the budget
        iters = int(np.clip(args.budget / max(float(np.median(probe)), 1e-6), 5, 1000))
        timed(comm, reduce, min(iters // 10 + 2, 20))  # more warm-up
        t = timed(comm, reduce, iters)
        med = float(np.median(t))
        ring = 2 * (p - 1) / p * n / bandwidth if p > 1 else 0.0
        rows.append({"bytes": n, "iters": iters, "median_s": med, "p10_s": float(np.percentile(t, 10)),
                     "p90_s": float(np.percentile(t, 90)), "min_s": float(t.min()),
                     "algbw_GBps": n / med / 1e9, "busbw_GBps": n / med * 2 * (p - 1) / p / 1e9,
                     "ring_bound_s": ring, "vs_bound": med / ring if ring else None})
        n *= args.factor
    if comm.Get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"ranks": p, "library": MPI.Get_library_version().splitlines()[0].strip(),
                       "copy_bandwidth_GBps": bandwidth / 1e9, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
