"""The hand-written loop of own_loop.py with the network split across ranks: a Grid of
tensor x pipeline x data ranks, a ShardedModel holding this rank's part, and the same
DistributedOptimizer, which now averages gradients among the replicas of each part only.

    mpirun -n 2 python examples/own_loop_model_parallel.py                  # tensor 2
    mpirun -n 4 python examples/own_loop_model_parallel.py --pipeline 2     # tensor 2 x pipeline 2
"""

import argparse

import numpy as np

import mpidl
from mpidl import nn, optim
from mpidl.data import ShardedSampler, load_dataset

ap = argparse.ArgumentParser()
ap.add_argument("--tensor", type=int, default=2)
ap.add_argument("--pipeline", type=int, default=1)
args = ap.parse_args()

comm = mpidl.world()
grid = mpidl.Grid(comm, tensor=args.tensor, pipeline=args.pipeline)  # the data-parallel degree is the rest
digits = load_dataset("digits")
x, y = digits.x_train.reshape(-1, 64).astype(np.float32) / 16, digits.y_train

net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
# allocate=False: no rank ever holds the whole model; each draws its shard of the same initial weights
model = mpidl.ShardedModel(mpidl.Model(net, loss="cross_entropy", seed=0, allocate=False), grid, micro_batches=4)
dopt = mpidl.DistributedOptimizer(optim.Adam(model, lr=2e-3), model)  # reduces among this part's replicas
sampler = ShardedSampler(len(x), 64, grid.data.rank, grid.data.size, seed=0)  # one slice per replica
for epoch in range(20):
    for step in sampler.epoch(epoch):
        dopt.zero_grad()
        model.loss_and_backward(x[step.indices], y[step.indices], step.weight)
        dopt.step()

scores = model.predict(digits.x_val.reshape(-1, 64) / 16)  # every rank gets the last stage's outputs
accuracy = (scores.argmax(axis=1) == digits.y_val).mean()
if comm.rank == 0:
    print(f"own_loop_model_parallel: {grid.describe()}, {model.store.size} of {model.whole_size} parameters "
          f"on rank 0, validation accuracy {accuracy:.3f}")
