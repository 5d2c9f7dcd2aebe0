"""Model builders, selectable by name, and their default training recipes.

A builder declares its layers' parameters in a ParamStore and returns the network;
the trainer allocates the flat buffers afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mpidl import init as initializers
from mpidl import losses
from mpidl.layers import Flatten, Linear, ReLU, Sequential, Sigmoid
from mpidl.params import ParamStore


@dataclass
class ModelSpec:
    # (store, sample_shape, n_out, options) -> Layer. options: "hidden" (tuple of ints),
    # "rng" (this rank's Generator for dropout/noise), "comm" (for synchronised layers).
    build: Callable
    loss: str                  # key of losses.BY_NAME
    task: str                  # classification | binary | regression | generative (any images, labels unused)
    defaults: dict = field(default_factory=dict)   # recipe: dataset, epochs, batch_size, optimizer, lr ...
    help: str = ""
    # For losses that need the inputs or have several terms (the VAE):
    # objective(net, out, x, y, weight) -> (loss, d loss/d out already times weight, {term: value}).
    objective: Callable | None = None
    terms: tuple = ()          # names of the terms the objective reports, summed in evaluation
    # finish(model, dataset, out_dir) -> path written or None; rank 0 calls it after training.
    finish: Callable | None = None


def _flat_features(shape) -> int:
    return int(np.prod(shape))


def build_xor(store, shape, n_out, options):
    # 2-2-1 with sigmoids, the classic network that shows why hidden layers matter. It has
    # local minima: with U(-1, 1) weights 35 of 40 seeds reach 100% here (Xavier: 32 of 40),
    # so its recipe fixes seed 1, one that does.
    return Sequential(Flatten(), Linear(store, "hidden", _flat_features(shape), 2, init=initializers.uniform(1.0)),
                      Sigmoid(), Linear(store, "out", 2, 1, init=initializers.uniform(1.0)), Sigmoid())


def build_mlp(store, shape, n_out, options):
    sizes = [_flat_features(shape), *options.get("hidden", (64, 64))]
    layers = [Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [Linear(store, f"fc{i + 1}", a, b, init="he"), ReLU()]
    layers.append(Linear(store, f"fc{len(sizes)}", sizes[-1], n_out, init="xavier"))
    return Sequential(*layers)


def build_linear(store, shape, n_out, options):
    return Sequential(Flatten(), Linear(store, "linear", _flat_features(shape), n_out, init="xavier"))


def build_cnn(store, shape, n_out, options):
    """The classic CIFAR-10 network; on 1-channel 28x28 images the same layers give fc 3136->512.

    Each conv-ReLU-maxpool block is one fused layer, Conv2dPoolReLU: max-pooling commutes with
    ReLU (both are monotone), so conv-maxpool-ReLU is the same function, and computing it in
    one pass never stores the full-resolution convolution output (see mpidl.ops.convpool).
    """
    from mpidl.convnet import Conv2dPoolReLU
    channels, height, width = shape
    return Sequential(
        Conv2dPoolReLU(store, "conv1", channels, 32, 3, padding=1),
        Conv2dPoolReLU(store, "conv2", 32, 64, 3, padding=1),
        Flatten(),
        Linear(store, "fc1", 64 * (height // 4) * (width // 4), 512), ReLU(),
        Linear(store, "fc2", 512, n_out, init="xavier"))


def build_lenet(store, shape, n_out, options):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling; 28x28 inputs are padded to 32x32."""
    from mpidl.convnet import Conv2dPoolReLU
    channels, height, width = shape
    pad = max(0, (32 - min(height, width)) // 2)
    h, w = ((height + 2 * pad - 4) // 2 - 4) // 2, ((width + 2 * pad - 4) // 2 - 4) // 2
    return Sequential(
        Conv2dPoolReLU(store, "conv1", channels, 6, 5, padding=pad),  # see build_cnn
        Conv2dPoolReLU(store, "conv2", 6, 16, 5),
        Flatten(),
        Linear(store, "fc1", 16 * h * w, 120), ReLU(),
        Linear(store, "fc2", 120, 84), ReLU(),
        Linear(store, "fc3", 84, n_out, init="xavier"))


MODELS: dict[str, ModelSpec] = {
    "xor": ModelSpec(build_xor, "bce", "binary",
                     dict(dataset="xor", epochs=2000, batch_size=4, optimizer="sgd", lr=0.5, momentum=0.9, seed=1),
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
    "cnn": ModelSpec(build_cnn, "cross_entropy", "classification",
                     dict(dataset="fashion-mnist", epochs=4, batch_size=64, optimizer="sgd", lr=0.02,
                          momentum=0.9, schedule="cosine"),
                     "conv32-pool-conv64-pool-fc512 (CIFAR-10 classic; 1-channel variant for 28x28)"),
    "lenet": ModelSpec(build_lenet, "cross_entropy", "classification",
                       dict(dataset="fashion-mnist", epochs=5, batch_size=64, optimizer="sgd", lr=0.02,
                            momentum=0.9),
                       "LeNet-5: conv6-pool-conv16-pool-fc120-fc84, ReLU"),
}


# The sequence, attention, generative and SVM models live in their own module.
from mpidl.seqmodels import seq_models  # noqa: E402

MODELS.update(seq_models(ModelSpec))


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
        self.term_names = tuple(self.spec.terms)
        # The input gradient of the first parameterised layer is never needed.
        for layer in self.net.layers:
            if hasattr(layer, "need_input_grad"):
                layer.need_input_grad = False
                break

    def allocate(self, dtype, seed: int, pad_to: int = 1) -> None:
        self.store.allocate(dtype, np.random.default_rng(seed), pad_to=pad_to)

    def forward(self, x, train: bool = True):
        return self.net.forward(x, train)

    def train_step_grads(self, x, y, weight: float = 1.0, lap=None) -> float:
        """Forward, loss, backward: adds this batch's gradient (times `weight`) into the grad buffer.
        lap: the step clock's lap, told when the forward pass (with the loss) is done."""
        out = self.net.forward(x, True)
        if self.spec.objective is not None:
            loss, dout, _ = self.spec.objective(self.net, out, x, y, weight)
            if lap is not None:
                lap("forward")
        else:
            loss, dout = self.loss_fn(out, y)
            if lap is not None:
                lap("forward")
            if weight != 1.0:
                dout *= weight
        self.net.backward(dout)
        return loss

    def evaluate_sums(self, x, y) -> tuple[float, ...]:
        """(sum of per-sample losses, number correct, *sums of the spec's terms) for this batch,
        in evaluation mode."""
        out = self.net.forward(x, False)
        n = len(x)
        if self.spec.objective is not None:
            loss, _, terms = self.spec.objective(self.net, out, x, y, 1.0)
            return (loss * n, float("nan"), *(terms[t] * n for t in self.term_names))
        loss, _ = self.loss_fn(out, y)
        if self.task == "classification":
            correct = float((out.argmax(axis=1) == y).sum())
        elif self.task == "binary":
            correct = float(((out.reshape(-1) > 0.5) == (y.reshape(-1) > 0.5)).sum())
        else:
            correct = float("nan")
        return loss * n, correct
