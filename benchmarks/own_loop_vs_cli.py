"""A hand-written loop (mpidl.DistributedOptimizer) against the command line, same model and
steps, in one run: mlp 784-256-256-10 on Fashion-MNIST, global batch 128, 300 steps.

    python benchmarks/own_loop_vs_cli.py [--ranks 2] [--steps 300]

Prints both step times (train time only, the slowest rank) and their ratio.
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import run_ranks  # noqa: E402

LOOP = r'''
import json, sys, time
import numpy as np
import mpidl
from mpidl import nn, optim
from mpidl.data import ShardedSampler, load_dataset
steps = int(sys.argv[1])
comm = mpidl.world()
d = load_dataset("fashion-mnist")
model = mpidl.Model(nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                  nn.Linear(256, 10, init="xavier")), loss="cross_entropy", seed=0)
dopt = mpidl.DistributedOptimizer(optim.Adam(model, lr=1e-3), model, comm)
sampler = ShardedSampler(len(d.x_train), 128, comm.rank, comm.size, seed=0)
done, t0 = 0, None
for step in sampler.epoch(0):
    if done == 1:
        comm.barrier(); t0 = time.perf_counter()   # the first step warms up
    x = d.x_train[step.indices].astype(np.float32) * np.float32(d.scale)
    dopt.zero_grad()
    model.loss_and_backward(x, d.y_train[step.indices], step.weight)
    dopt.step()
    done += 1
    if done == steps:
        break
comm.barrier()
per_step = (time.perf_counter() - t0) / (steps - 1)
if comm.rank == 0:
    print(json.dumps({"loop_ms": per_step * 1e3}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "loop.py")
        with open(script, "w") as f:
            f.write(LOOP)
        loop = json.loads(run_ranks(args.ranks, [script, str(args.steps)]).strip().splitlines()[-1])
        run_ranks(args.ranks, ["-m", "mpidl.train", "--model", "mlp", "--hidden", "256,256", "--dataset",
                               "fashion-mnist", "--batch-size", "128", "--max-steps", str(args.steps),
                               "--check-every", "0", "--progress", "none", "--out", os.path.join(tmp, "cli")])
        with open(os.path.join(tmp, "cli", "summary.json")) as f:
            summary = json.load(f)
    cli_ms = summary["timing"]["step_ms"]  # mean over ranks, the first (warm-up) step left out
    print(f"mlp 784-256-256-10, Fashion-MNIST, global batch 128, {args.ranks} ranks, {args.steps} steps: "
          f"hand-written loop {loop['loop_ms']:.3f} ms/step, CLI {cli_ms:.3f} ms/step, "
          f"loop / CLI = {loop['loop_ms'] / cli_ms:.3f}")


if __name__ == "__main__":
    main()
