"""Model: a network bound to its flat buffers, with its loss; ModelSpec: how a named
model is built and trained by default; the registry that the CLI reads."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mpidl import losses
from mpidl.errors import ConfigError
from mpidl.nn.base import Module, Sequential
from mpidl.params import ParamStore

# Which task a loss trains, so that a user's model needs to name only its loss.
TASK_OF_LOSS = {"cross_entropy": "classification", "hinge": "classification", "bce": "binary",
                "bce_logits": "binary", "mse": "regression"}
# ... and the loss a model of your own gets on data of each task when it names none.
DEFAULT_LOSS = {"classification": "cross_entropy", "binary": "bce", "regression": "mse"}


@dataclass
class ModelSpec:
    # (sample_shape, n_out, options) -> Module. options: "hidden" (tuple of ints) and any a
    # factory of your own reads.
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
    options: tuple = ()        # the options build() reads, e.g. ("hidden",): others are refused


MODELS: dict[str, ModelSpec] = {}


def register(name: str, spec: ModelSpec) -> ModelSpec:
    """Make a model selectable by name (``--model NAME``); the built-in ones register this way."""
    MODELS[name] = spec
    return spec


def _first_parameterised(module):
    """The first layer with parameters in forward order, looking inside Sequentials (a stem
    block's convolution); None when that is some other container (a Residual needs its input
    gradient for the skip path)."""
    if not isinstance(module, Sequential):
        return module
    for layer in module.layers:
        if next(iter(layer.parameters()), None) is not None:
            return _first_parameterised(layer)
    return None


class Model:
    """A network, its parameters in one flat buffer, and its loss: what the training loop talks to.

    ``Model(net, loss="cross_entropy")`` collects net's parameters (named by module path),
    allocates the flat data and gradient buffers in `dtype` and initialises them from `seed`.
    `loss` is a name in mpidl.losses.BY_NAME or a function (out, target) -> (mean loss, d/d out).
    allocate=False names the parameters but creates no buffers: for a model that
    mpidl.parallel.ShardedModel splits across ranks, so that no rank holds it whole.
    """

    # Multiplied into every loss gradient; DistributedOptimizer sets it to 1/ranks on the plain
    # path, where the mean's division is folded into backward (see there).
    loss_scale = 1.0
    finish = None  # a built-in model's extra output after training (the VAE's picture)

    def __init__(self, net: Module, loss="cross_entropy", task: str | None = None, *, dtype="float32",
                 seed: int = 0, objective: Callable | None = None, terms: tuple = (), name: str = "custom",
                 recipe: dict | None = None, allocate: bool = True):
        if not isinstance(net, Module):
            raise TypeError(f"Model: net must be an mpidl.nn.Module, got {type(net).__name__}")
        if isinstance(loss, str):
            if loss not in losses.BY_NAME:
                raise ConfigError(f"unknown loss {loss!r}; choose from {', '.join(losses.BY_NAME)}")
            self.loss_name, self.loss_fn = loss, losses.BY_NAME[loss]
        else:
            self.loss_name, self.loss_fn = getattr(loss, "__name__", "custom"), loss
        self.task = task or TASK_OF_LOSS.get(self.loss_name)
        if self.task is None:
            raise ConfigError(f"Model: say task= (classification, binary, regression) for loss {self.loss_name}")
        self.net, self.name = net, name
        self.objective, self.term_names = objective, tuple(terms)
        self.recipe = recipe        # how mpidl.load rebuilds the network (a factory and its arguments)
        self.dtype, self.seed = np.dtype(dtype), seed
        self.store = ParamStore(net)
        if allocate:
            self.store.allocate(self.dtype, np.random.default_rng(seed))
            self.attach(np.random.default_rng([seed, 0, 1]), None)
        # The input gradient of the first parameterised layer is never needed.
        first = _first_parameterised(net)
        if first is not None and hasattr(first, "need_input_grad"):
            first.need_input_grad = False

    def attach(self, rng: np.random.Generator, comm) -> None:
        """Give every module this rank's random generator and the communicator."""
        for module in self.net.modules():
            module.attach(rng, comm)

    def forward(self, x, train: bool = True):
        return self.net.forward(x, train)

    def predict(self, x, batch_size: int = 1000, scale: float = 1.0) -> np.ndarray:
        """Outputs in evaluation mode, batch by batch (class scores, probabilities or values);
        `scale` multiplies each batch first (the input scaling of training, for raw images)."""
        x = np.asarray(x)
        dtype = self.store.data.dtype
        outs = []
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size].astype(dtype, copy=scale != 1.0)
            if scale != 1.0:
                batch *= scale
            outs.append(self.net.forward(batch, False))
        return np.concatenate(outs) if outs else np.zeros((0,))

    def loss_and_backward(self, x, y, weight: float = 1.0, lap=None) -> float:
        """Forward, loss, backward: adds this batch's gradient (times `weight` and loss_scale) into
        the grad buffer. lap: the step clock's lap, told when the forward pass (with the loss) is done."""
        weight = weight * self.loss_scale
        out = self.net.forward(x, True)
        if self.objective is not None:
            loss, dout, _ = self.objective(self.net, out, x, y, weight)
        else:
            loss, dout = self.loss_fn(out, y)
            if weight != 1.0:
                dout *= weight
        if lap is not None:
            lap("forward")
        self.net.backward(dout)
        return loss

    def evaluate_sums(self, x, y) -> tuple[float, ...]:
        """(sum of per-sample losses, number correct, *sums of the objective's terms) for this
        batch, in evaluation mode."""
        return sums_of_outputs(self, self.net.forward(x, False), x, y)


def sums_of_outputs(model, out, x, y) -> tuple[float, ...]:
    """Model.evaluate_sums from the network's outputs `out` (shared with ShardedModel)."""
    n = len(x) if x is not None else len(y)
    if model.objective is not None:
        loss, _, terms = model.objective(model.net, out, x, y, 1.0)
        return (loss * n, float("nan"), *(terms[t] * n for t in model.term_names))
    loss, _ = model.loss_fn(out, y)
    if model.task == "classification":
        correct = float((out.argmax(axis=1) == y).sum())
    elif model.task == "binary":
        threshold = 0.0 if model.loss_name == "bce_logits" else 0.5
        correct = float(((out.reshape(-1) > threshold) == (y.reshape(-1) > 0.5)).sum())
    else:
        correct = float("nan")
    return loss * n, correct


def load_factory(path: str) -> Callable:
    """'file.py:build' or 'package.module:build' -> the function. Raises ConfigError."""
    where, sep, attr = path.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"--model {path}: expected a built-in name ({', '.join(MODELS)}) "
                          "or FILE.py:FUNCTION or MODULE:FUNCTION")
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise ConfigError(f"--model {path}: no such file {where}")
            name = "mpidl_user_" + os.path.splitext(os.path.basename(where))[0]
            spec = importlib.util.spec_from_file_location(name, where)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"--model {path}: cannot import {where} ({exc})")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--model {path}: {where} has no function {attr}")
    return fn


def is_factory_path(name: str) -> bool:
    return ":" in name


def spec_for(name: str, loss: str | None = None, task: str | None = None) -> ModelSpec:
    """The registered spec of a built-in name, or one made for a factory path; `task` is the
    dataset's (a factory's loss follows it unless `loss` is given)."""
    if not is_factory_path(name):
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; choose from {', '.join(MODELS)} or give FILE.py:FUNCTION")
        return MODELS[name]
    build = load_factory(name)
    loss = loss or DEFAULT_LOSS.get(task or "classification", "cross_entropy")
    return ModelSpec(build, loss, TASK_OF_LOSS.get(loss, task or "classification"),
                     help=f"your factory {name}")


def build_model(name: str, sample_shape, n_out: int, options: dict | None = None, *, dtype="float32",
                seed: int = 0, loss: str | None = None, task: str | None = None, allocate: bool = True) -> Model:
    """A registered model (or a factory 'file.py:build') built for data of this shape
    (allocate=False: named but without buffers, for mpidl.parallel.ShardedModel)."""
    spec = spec_for(name, loss, task)
    options = dict(options or {})
    net = spec.build(tuple(sample_shape), int(n_out), options)
    if not isinstance(net, Module):
        raise ConfigError(f"--model {name}: the factory returned {type(net).__name__}, not an mpidl.nn.Module")
    where, _, attr = name.rpartition(":")
    if where.endswith(".py"):  # so that mpidl.load finds the file from anywhere
        name = f"{os.path.abspath(where)}:{attr}"
    recipe = {"model": name, "sample_shape": [int(s) for s in sample_shape], "n_out": int(n_out),
              "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
              "loss": spec.loss}
    model = Model(net, spec.loss, spec.task, dtype=dtype, seed=seed, objective=spec.objective,
                  terms=spec.terms, name=name, recipe=recipe, allocate=allocate)
    model.finish = spec.finish
    return model
