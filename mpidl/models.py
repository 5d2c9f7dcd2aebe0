"""Model builders, selectable by name, and their default training recipes.

A builder declares its layers' parameters in a ParamStore and returns the network;
the trainer allocates the flat buffers afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mpidl import losses
from mpidl.layers import Flatten, Linear, ReLU, Sequential, Sigmoid
from mpidl.params import ParamStore


@dataclass
class ModelSpec:
    # (store, sample_shape, n_out, options) -> Layer. options: "hidden" (tuple of ints),
    # "rng" (this rank's Generator for dropout/noise), "comm" (for synchronised layers).
    build: Callable
    loss: str                  # key of losses.BY_NAME
    task: str                  # classification | binary | regression
    defaults: dict = field(default_factory=dict)   # recipe: dataset, epochs, batch_size, optimizer, lr ...
    help: str = ""


def _flat_features(shape) -> int:
    return int(np.prod(shape))


def build_xor(store, shape, n_out, options):
    # 2-2-1 with sigmoids, the classic network that shows why hidden layers matter.
    return Sequential(Flatten(), Linear(store, "hidden", _flat_features(shape), 2, init="xavier"), Sigmoid(),
                      Linear(store, "out", 2, 1, init="xavier"), Sigmoid())


def build_mlp(store, shape, n_out, options):
    sizes = [_flat_features(shape), *options.get("hidden", (64, 64))]
    layers = [Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [Linear(store, f"fc{i + 1}", a, b, init="he"), ReLU()]
    layers.append(Linear(store, f"fc{len(sizes)}", sizes[-1], n_out, init="xavier"))
    return Sequential(*layers)


def build_linear(store, shape, n_out, options):
    return Sequential(Flatten(), Linear(store, "linear", _flat_features(shape), n_out, init="xavier"))


MODELS: dict[str, ModelSpec] = {
    "xor": ModelSpec(build_xor, "bce", "binary",
                     dict(dataset="xor", epochs=2000, batch_size=4, optimizer="sgd", lr=2.0, momentum=0.9),
                     "2-2-1 sigmoid network on the four XOR points"),
    "mlp": ModelSpec(build_mlp, "cross_entropy", "classification",
                     dict(dataset="digits", epochs=40, batch_size=64, optimizer="adam", lr=2e-3),
                     "multilayer perceptron, ReLU, hidden sizes from --hidden (default 64,64)"),
    "logreg": ModelSpec(build_linear, "cross_entropy", "classification",
                        dict(dataset="digits", epochs=30, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9),
                        "multinomial logistic regression"),
    "linreg": ModelSpec(build_linear, "mse", "regression",
                        dict(dataset="regression", epochs=20, batch_size=64, optimizer="sgd", lr=0.02,
                             momentum=0.9),
                        "linear regression, mean squared error"),
}


class Model:
    """A network with its parameter store and loss: what the training loop talks to."""

    def __init__(self, name: str, sample_shape, n_out: int, options: dict | None = None):
        if name not in MODELS:
            raise KeyError(name)
        self.name = name
        self.spec = MODELS[name]
        self.store = ParamStore()
        self.net = self.spec.build(self.store, tuple(sample_shape), n_out, options or {})
        self.loss_fn = losses.BY_NAME[self.spec.loss]
        self.task = self.spec.task
        # The input gradient of the first parameterised layer is never needed.
        for layer in self.net.layers:
            if hasattr(layer, "need_input_grad"):
                layer.need_input_grad = False
                break

    def allocate(self, dtype, seed: int) -> None:
        self.store.allocate(dtype, np.random.default_rng(seed))

    def forward(self, x, train: bool = True):
        return self.net.forward(x, train)

    def train_step_grads(self, x, y, weight: float = 1.0, lap=None) -> float:
        """Forward, loss, backward: adds this batch's gradient (times `weight`) into the grad buffer.
        lap: the step clock's lap, told when the forward pass (with the loss) is done."""
        out = self.net.forward(x, True)
        loss, dout = self.loss_fn(out, y)
        if lap is not None:
            lap("forward")
        if weight != 1.0:
            dout *= weight
        self.net.backward(dout)
        return loss

    def evaluate_sums(self, x, y) -> tuple[float, float]:
        """(sum of per-sample losses, number correct) for this batch, in evaluation mode."""
        out = self.net.forward(x, False)
        n = len(x)
        loss, _ = self.loss_fn(out, y)
        if self.task == "classification":
            correct = float((out.argmax(axis=1) == y).sum())
        elif self.task == "binary":
            correct = float(((out.reshape(-1) > 0.5) == (y.reshape(-1) > 0.5)).sum())
        else:
            correct = float("nan")
        return loss * n, correct
