"""The classic small networks: XOR, the MLP, logistic and linear regression, the linear SVM."""

from __future__ import annotations

import numpy as np

from mpidl import init as initializers
from mpidl.models.base import ModelSpec, register
from mpidl.nn import Flatten, Linear, ReLU, Sequential, Sigmoid


def _flat_features(shape) -> int:
    return int(np.prod(shape))


def build_xor(shape, n_out, options):
    # 2-2-1 with sigmoids, the classic network that shows why hidden layers matter. It has
    # local minima: with U(-1, 1) weights 35 of 40 seeds reach 100% here (Xavier: 32 of 40),
    # so its recipe fixes seed 1, one that does.
    return Sequential({"flatten": Flatten(),
                       "hidden": Linear(_flat_features(shape), 2, init=initializers.uniform(1.0)),
                       "sigmoid1": Sigmoid(),
                       "out": Linear(2, 1, init=initializers.uniform(1.0)), "sigmoid2": Sigmoid()})


def build_mlp(shape, n_out, options):
    sizes = [_flat_features(shape), *options.get("hidden", (64, 64))]
    layers = {"flatten": Flatten()}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers[f"fc{i + 1}"] = Linear(a, b, init="he")
        layers[f"relu{i + 1}"] = ReLU()
    layers[f"fc{len(sizes)}"] = Linear(sizes[-1], n_out, init="xavier")
    return Sequential(layers)


def build_linear(shape, n_out, options):
    """One dense layer: logistic regression, linear regression and the SVM differ only in the loss."""
    return Sequential({"flatten": Flatten(), "linear": Linear(_flat_features(shape), n_out, init="xavier")})


register("xor", ModelSpec(build_xor, "bce", "binary",
                          dict(dataset="xor", epochs=2000, batch_size=4, optimizer="sgd", lr=0.5, momentum=0.9,
                               seed=1),
                          "2-2-1 sigmoid network on the four XOR points"))
register("mlp", ModelSpec(build_mlp, "cross_entropy", "classification",
                          dict(dataset="digits", epochs=40, batch_size=64, optimizer="adam", lr=2e-3),
                          "multilayer perceptron, ReLU, hidden sizes from --hidden (default 64,64)",
                          options=("hidden",)))
register("logreg", ModelSpec(build_linear, "cross_entropy", "classification",
                             dict(dataset="digits", epochs=30, batch_size=64, optimizer="sgd", lr=0.1,
                                  momentum=0.9),
                             "multinomial logistic regression"))
register("linreg", ModelSpec(build_linear, "mse", "regression",
                             dict(dataset="regression", epochs=20, batch_size=64, optimizer="sgd", lr=0.02,
                                  momentum=0.9),
                             "linear regression, mean squared error"))
register("svm", ModelSpec(build_linear, "hinge", "classification",
                          dict(dataset="digits", epochs=30, batch_size=64, optimizer="sgd", lr=0.01,
                               momentum=0.9, weight_decay=1e-4),
                          "linear multiclass SVM (Weston-Watkins hinge loss)"))
