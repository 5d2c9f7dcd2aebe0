"""Your own layer: a residual block of two 3x3 convolutions, checked against finite
differences with mpidl.testing, then trained inside a small CNN.

    mpirun -n 2 python examples/own_layer.py
"""

import numpy as np

import mpidl
from mpidl import nn
from mpidl.data import load_dataset
from mpidl.ops import activations


class ResidualBlock(nn.Module):
    """relu(x + conv2(relu(conv1(x)))), channels and size unchanged."""

    def __init__(self, channels):
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.scale = self.param("scale", (1,), "ones", decay=False)  # a parameter of its own

    def forward(self, x, train=True):
        h, self._relu1 = activations.relu_forward(self.conv1.forward(x, train))
        y = x + self.scale.data * self.conv2.forward(h, train)
        out, self._relu2 = activations.relu_forward(y)
        self._branch = (y - x) / self.scale.data
        return out

    def backward(self, dout):
        dy = activations.relu_backward(dout, self._relu2)
        self.scale.grad += (dy * self._branch).sum()
        dh = self.conv2.backward(dy * self.scale.data)
        return dy + self.conv1.backward(activations.relu_backward(dh, self._relu1))


comm = mpidl.world()
report = mpidl.testing.check_module(ResidualBlock(2), np.random.default_rng(0).normal(size=(2, 2, 5, 5)))
if comm.rank == 0:
    print(f"ResidualBlock backward vs finite differences: {report}")
assert report.worst < 1e-6, report

digits = load_dataset("digits")
net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), ResidualBlock(8), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Linear(8 * 4 * 4, 10, init="xavier"))
history = mpidl.Trainer(net, train=(digits.x_train / 16.0, digits.y_train), val=(digits.x_val / 16.0, digits.y_val),
                        optimizer="adam", lr=3e-3, batch_size=64, epochs=8).fit()
if comm.rank == 0:
    print(f"own_layer: validation accuracy {history[-1].val_accuracy:.3f}")
