"""A hand-written training loop, the Horovod/ChainerMN way: a sampler gives each rank its
slice, DistributedOptimizer reduces the gradients and updates every replica alike.

    mpirun -n 2 python examples/own_loop.py
"""

import numpy as np

import mpidl
from mpidl import nn, optim
from mpidl.data import ShardedSampler, load_dataset

comm = mpidl.world()
digits = load_dataset("digits")
x, y = digits.x_train.reshape(-1, 64).astype(np.float32) / 16, digits.y_train

model = mpidl.Model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), loss="cross_entropy", seed=0)
dopt = mpidl.DistributedOptimizer(optim.Adam(model, lr=2e-3), model, comm)  # broadcasts rank 0's weights
sampler = ShardedSampler(len(x), 64, comm.rank, comm.size, seed=0)  # every rank: same steps, own slice
for epoch in range(20):
    for step in sampler.epoch(epoch):
        dopt.zero_grad()
        model.loss_and_backward(x[step.indices], y[step.indices], step.weight)
        dopt.step()

accuracy = (model.predict(digits.x_val.reshape(-1, 64) / 16).argmax(axis=1) == digits.y_val).mean()
if comm.rank == 0:
    print(f"own_loop: validation accuracy {accuracy:.3f}")
