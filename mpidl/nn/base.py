"""Modules: the base class, the containers, and the layers that only reshape.

A module is built from sizes alone (``Linear(784, 256)``) and declares its parameters with
:meth:`Module.param`. Nothing is allocated then: when a model is built,
``ParamStore(net)`` walks the module tree, names every parameter by its path
(``0.weight``, ``block1.conv.bias``, like PyTorch ``state_dict`` keys) and points it at its
slice of the ONE flat data buffer and the ONE flat gradient buffer.

Protocol of every module:

- ``forward(x, train=True) -> y`` keeps on the module what backward needs;
- ``backward(dy) -> dx`` ADDS each parameter's gradient into ``param.grad`` (the buffer is
  zeroed once per step by the optimiser or :meth:`ParamStore.zero_grad`) and returns the
  input gradient.

Two optional protocols:

- ``need_input_grad``: a layer that has this attribute may skip computing its input gradient
  when the model sets it to False (the first layer of a network, whose input is data);
  it then returns None from backward, and ``Sequential`` stops there.
- ``attach(rng, comm)``: called once when the model is built, with this rank's random
  generator (dropout masks, noise) and the communicator (synchronised batch norm).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mpidl import init as initializers
from mpidl.params import Param


class Module:
    """Base of every layer and container; subclass it for your own layer.

    Declare parameters in ``__init__`` with ``self.W = self.param("weight", shape, init)``, then
    write ``forward`` and ``backward``. Check the backward with ``mpidl.testing.check_module``."""

    def param(self, name: str, shape, init="zeros", decay: bool = True) -> Param:
        """A parameter of this module: `name` is its local name (the path is prefixed when the
        model is built); `init` is a name in mpidl.init.BY_NAME ('he', 'xavier', 'zeros',
        'ones', ...) or a function (rng, shape) -> array; decay=False exempts it from weight decay
        (biases, norm scales)."""
        init_fn = initializers.BY_NAME[init] if isinstance(init, str) else init
        return Param(name, tuple(int(s) for s in shape), init_fn, decay=decay)

    def buffer(self, name: str, shape, init="zeros") -> Param:
        """State saved with the weights that no optimiser moves (running statistics): it lives
        in the flat buffer, so broadcasts and checkpoints carry it."""
        p = self.param(name, shape, init, decay=False)
        p.buffer = True
        return p

    def forward(self, x, train: bool = True):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x, train: bool = True):
        return self.forward(x, train)

    def attach(self, rng: np.random.Generator, comm) -> None:
        """Called once per module when the model is built; override to keep what you need."""

    # -- the module tree -----------------------------------------------------------
    def named_members(self, prefix: str = "") -> Iterator[tuple[str, object]]:
        """(path, Param or Module) for this module's own attributes, in declaration order.
        Lists and tuples of modules count as children numbered from 0."""
        for key, value in vars(self).items():
            if isinstance(value, (Param, Module)):
                yield prefix + (value.local_name if isinstance(value, Param) else key), value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{prefix}{key}.{i}", item

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Param]]:
        """Every parameter below this module with its path, in the order of the flat buffer;
        a parameter shared by two modules appears once."""
        found, seen = [], set()

        def walk(module, pre):
            for path, member in module.named_members(pre):
                if isinstance(member, Param):
                    if id(member) not in seen:
                        seen.add(id(member))
                        found.append((path, member))
                elif id(member) not in seen:
                    seen.add(id(member))
                    walk(member, path + ".")

        walk(self, prefix)
        return found

    def parameters(self) -> list[Param]:
        return [p for _, p in self.named_parameters()]

    def modules(self) -> list["Module"]:
        """This module and every module below it, each once."""
        out, seen = [], set()

        def walk(module):
            if id(module) in seen:
                return
            seen.add(id(module))
            out.append(module)
            for _, member in module.named_members():
                if isinstance(member, Module):
                    walk(member)

        walk(self)
        return out

    def __repr__(self) -> str:
        children = [f"  ({path}): {member!r}".replace("\n", "\n  ")
                    for path, member in self.named_members() if isinstance(member, Module)]
        name = type(self).__name__ + self.extra_repr()
        return name if not children else name + "(\n" + "\n".join(children) + "\n)"

    def extra_repr(self) -> str:
        shapes = [f"{p.local_name}={'x'.join(map(str, p.shape))}" for _, p in self.named_members() if isinstance(p, Param)]
        return f"({', '.join(shapes)})" if shapes else "()"


Layer = Module  # the name earlier versions used


class Sequential(Module):
    """Modules applied in order. Children are named 0, 1, 2, ... or, given one dict,
    by its keys: ``Sequential({"fc1": Linear(784, 64), "relu": ReLU(), ...})``."""

    # Called as backward_hook(i) right after layers[i].backward, so that gradient
    # reduction can start on the layers already done (mpidl.parallel.sync); None when unused.
    backward_hook = None

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], dict):
            self.names = [str(k) for k in layers[0]]
            self.layers = list(layers[0].values())
        else:
            self.names = [str(i) for i in range(len(layers))]
            self.layers = list(layers)
        for name, layer in zip(self.names, self.layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {name} is a {type(layer).__name__}, not an mpidl.nn.Module")

    def named_members(self, prefix=""):
        for name, layer in zip(self.names, self.layers):
            yield prefix + name, layer

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def forward(self, x, train=True):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy):
        hook = self.backward_hook
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy)
            if hook is not None:
                hook(i)
            if dy is None:  # the layers below need no input gradient
                break
        return dy


class Residual(Module):
    """x + inner(x), or shortcut(x) + inner(x) with a projection shortcut (a 1x1 convolution
    when the channel count or the resolution changes, as in He et al. 2016)."""

    def __init__(self, inner: Module, shortcut: Module | None = None):
        self.inner = inner
        self.shortcut = shortcut

    def forward(self, x, train=True):
        skip = x if self.shortcut is None else self.shortcut.forward(x, train)
        return skip + self.inner.forward(x, train)

    def backward(self, dy):
        dx = self.inner.backward(dy)
        skip = dy if self.shortcut is None else self.shortcut.backward(dy)
        return skip if dx is None else dx + skip


class Flatten(Module):
    """(N, ...) -> (N, features)."""

    def forward(self, x, train=True):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class ImageRows(Module):
    """(batch, channels, rows, cols) -> (batch, rows, channels*cols): an image read row by row.
    A sequence (batch, time, features) passes through unchanged."""

    def forward(self, x, train=True):
        self._shape = x.shape
        if x.ndim == 3:
            return x
        b, c, h, w = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, h, c * w)

    def backward(self, dy):
        if len(self._shape) == 3:
            return dy
        b, c, h, w = self._shape
        return dy.reshape(b, h, c, w).transpose(0, 2, 1, 3)


class MeanOverTime(Module):
    """(batch, time, features) -> (batch, features)."""

    def forward(self, x, train=True):
        self._steps = x.shape[1]
        return x.mean(axis=1)

    def backward(self, dy):
        return np.repeat(dy[:, None, :] / self._steps, self._steps, axis=1)
