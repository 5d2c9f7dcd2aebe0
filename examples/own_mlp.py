"""Your own MLP with BatchNorm and dropout on your own arrays, trained data-parallel.

    mpirun -n 2 python examples/own_mlp.py

The arrays here are the 8x8 digits that ship with mpidl, flattened and scaled: put yours in
their place (any (N, features) float array and integer labels).
"""

import mpidl
from mpidl import nn
from mpidl.data import load_dataset

comm = mpidl.world()  # MPI starts here: BLAS threads per rank, abort-all-ranks hook, watchdog
digits = load_dataset("digits")
x_train = digits.x_train.reshape(len(digits.x_train), -1) / 16.0
x_val = digits.x_val.reshape(len(digits.x_val), -1) / 16.0

net = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
trainer = mpidl.Trainer(net, train=(x_train, digits.y_train), val=(x_val, digits.y_val), loss="cross_entropy",
                        optimizer="adam", lr=3e-3, batch_size=64, epochs=15, out="runs/own-mlp")
history = trainer.fit()
if comm.rank == 0:
    print(f"own_mlp: validation accuracy {history[-1].val_accuracy:.3f}")
