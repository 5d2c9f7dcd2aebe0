"""Framework overhead of the gradient reduction: mpidl's reduction of its flat gradient
buffer against a bare mpi4py Allreduce of the same number of bytes.

    mpiexec -n 2 python benchmarks/overhead.py --model mlp --out overhead.json

Each iteration computes real gradients (forward and backward of one batch), then times
both reductions, each after a Barrier so that waiting for a slower rank is not counted,
in alternating order so that neither always finds the caches warmer. An iteration's time
is the slowest rank's; medians are compared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from mpi4py import MPI
from threadpoolctl import threadpool_limits

from mpidl.parallel.comm import world
from mpidl.cli import parse_config
from mpidl.trainer import Trainer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--per-rank-batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", required=True)
    args, train_args = ap.parse_known_args(argv)
    threadpool_limits(1)
    comm = world()
    raw = MPI.COMM_WORLD
    cfg = parse_config(["--model", args.model, "--batch-size", str(args.per_rank_batch * comm.size),
                        "--max-steps", "1000000", "--prefetch", "0", *train_args])
    trainer = Trainer.from_config(cfg, comm)
    grad = trainer.store.grad
    bare = np.zeros_like(grad)
    steps = iter(trainer.sampler.epoch(0))
    ours, theirs = np.empty(args.iters), np.empty(args.iters)

    def time_ours():  # exactly what a training step runs after backward
        raw.Barrier()
        t0 = MPI.Wtime()
        trainer.sync.finish()
        return MPI.Wtime() - t0

    def time_bare():
        raw.Barrier()
        t0 = MPI.Wtime()
        raw.Allreduce(MPI.IN_PLACE, bare, op=MPI.SUM)
        return MPI.Wtime() - t0

    for i in range(-10, args.iters):  # ten warm-up rounds
        step = next(steps, None)
        if step is None:
            steps = iter(trainer.sampler.epoch(0))
            step = next(steps)
        x, y = trainer.prepare_batch(step)
        trainer.store.zero_grad()
        trainer.model.loss_and_backward(x, y, step.weight)  # times the 1/ranks loss scale, as in training
        bare[...] = grad  # the same values: a sum's speed can depend on them (subnormals)
        if i % 2:
            a, b = time_ours(), time_bare()
        else:
            b, a = time_bare(), time_ours()
        if i >= 0:
            ours[i], theirs[i] = a, b
    raw.Allreduce(MPI.IN_PLACE, ours, op=MPI.MAX)
    raw.Allreduce(MPI.IN_PLACE, theirs, op=MPI.MAX)
    if comm.rank == 0:
        med_ours, med_bare = float(np.median(ours)), float(np.median(theirs))
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "ranks": comm.size, "grad_bytes": int(grad.nbytes),
                       "iters": args.iters, "mpidl_median_s": med_ours, "bare_median_s": med_bare,
                       "mpidl_p10_s": float(np.percentile(ours, 10)), "mpidl_p90_s": float(np.percentile(ours, 90)),
                       "bare_p10_s": float(np.percentile(theirs, 10)), "bare_p90_s": float(np.percentile(theirs, 90)),
                       "ratio": med_ours / med_bare}, f, indent=2)


if __name__ == "__main__":
    main()
