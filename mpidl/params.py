"""ParamStore: every parameter and gradient is a view into one flat buffer.

One contiguous buffer means one Allreduce per step, one optimiser pass over a flat
array, and one array to checkpoint. Modules declare parameters when they are built
(``Module.param``); ``ParamStore(net)`` collects them from the module tree, named by their
path, and :meth:`ParamStore.allocate` creates the two buffers and hands each parameter
its views.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Initializer = Callable[[np.random.Generator, tuple], np.ndarray]


@dataclass
class Param:
    """A named slice of the flat buffers. ``data`` and ``grad`` are views, never copies."""

    name: str                # full path once collected into a store ("block1.conv.weight")
    shape: tuple
    init: Initializer
    offset: int = -1
    data: np.ndarray | None = field(default=None, repr=False)
    grad: np.ndarray | None = field(default=None, repr=False)
    decay: bool = True  # weight decay applies (False for biases and norm scales)
    # A buffer is state that no optimiser moves (BatchNorm's running statistics): its
    # gradient stays zero, and each rank may update it from its own data (see DistributedOptimizer).
    buffer: bool = False
    # Set by ParamStore.zero_grad (and mark_grads_zero): the gradient is all zeros, so a layer's
    # first contribution may be written in place instead of added (see Linear.backward).
    grad_is_zero: bool = field(default=False, repr=False)
    local_name: str = field(default="", repr=False)  # the name its module declared ("weight")

    def __post_init__(self):
        if not self.local_name:
            self.local_name = self.name

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class ParamStore:
    """ParamStore(module) collects every parameter of a module tree, in the tree's order and
    named by path; ParamStore() starts empty for :meth:`add`."""

    def __init__(self, module=None) -> None:
        self.params: list[Param] = []
        self._names: set[str] = set()
        self.data: np.ndarray | None = None
        self.grad: np.ndarray | None = None
        self.padded_data: np.ndarray | None = None
        self.padded_grad: np.ndarray | None = None
        if module is not None:
            for path, p in module.named_parameters():
                if p.data is not None:
                    raise ValueError(f"parameter {path} already belongs to another model's buffers")
                if path in self._names:
                    raise ValueError(f"duplicate parameter name {path!r}")
                p.name = path
                self._names.add(path)
                self.params.append(p)

    def add(self, name: str, shape, init: Initializer, decay: bool = True) -> Param:
        if self.data is not None:
            raise RuntimeError("ParamStore already allocated; declare parameters before allocate()")
        if name in self._names:
            raise ValueError(f"duplicate parameter name {name!r}")
        self._names.add(name)
        p = Param(name, tuple(int(s) for s in shape), init, decay=decay)
        self.params.append(p)
        return p

    @property
    def size(self) -> int:
        return sum(p.size for p in self.params)

    def allocate(self, dtype=np.float32, rng: np.random.Generator | None = None, pad_to: int = 1,
                 initialise: bool = True) -> None:
        """Create the flat buffers, point every parameter at its views, run the initialisers
        (with initialise=False the buffers stay zero, for the caller to fill).

        With pad_to > 1 the buffers underneath (``padded_data``, ``padded_grad``) are rounded up
        to a multiple of it with zeros, so they cut into equal shards (ZeRO); ``data`` and
        ``grad`` stay the exact-size views."""
        rng = rng if rng is not None else np.random.default_rng(0)
        padded = -(-self.size // pad_to) * pad_to
        self.padded_data = np.zeros(padded, dtype=dtype)
        self.padded_grad = np.zeros(padded, dtype=dtype)
        self.data = self.padded_data[:self.size]
        self.grad = self.padded_grad[:self.size]
        offset = 0
        for p in self.params:
            p.offset = offset
            p.data = self.data[offset:offset + p.size].reshape(p.shape)
            p.grad = self.grad[offset:offset + p.size].reshape(p.shape)
            if initialise:
                p.data[...] = p.init(rng, p.shape)
            offset += p.size

    def pad(self, pad_to: int) -> None:
        """Round the buffers underneath up to a multiple of `pad_to` (ZeRO's equal shards),
        keeping the values; every parameter's views move to the new buffers."""
        if len(self.padded_data) % pad_to == 0:
            return
        data = self.data.copy()
        padded = -(-self.size // pad_to) * pad_to
        self.padded_data = np.zeros(padded, dtype=data.dtype)
        self.padded_grad = np.zeros(padded, dtype=data.dtype)
        self.data = self.padded_data[:self.size]
        self.grad = self.padded_grad[:self.size]
        self.data[...] = data
        for p in self.params:
            p.data = self.data[p.offset:p.offset + p.size].reshape(p.shape)
            p.grad = self.grad[p.offset:p.offset + p.size].reshape(p.shape)

    def zero_grad(self) -> None:
        self.grad.fill(0)
        self.mark_grads_zero()

    def mark_grads_zero(self) -> None:
        """Tell the layers that every gradient is zero (after the optimiser zeroed them)."""
        for p in self.params:
            p.grad_is_zero = True

    def decay_mask(self) -> np.ndarray:
        """1 where weight decay applies, 0 elsewhere, as a flat array like ``data``."""
        mask = np.zeros(self.size, dtype=self.data.dtype)
        for p in self.params:
            if p.decay:
                mask[p.offset:p.offset + p.size] = 1
        return mask

    def buffer_mask(self) -> np.ndarray:
        """True where the flat buffer holds buffers (running statistics), False at weights."""
        mask = np.zeros(self.size, dtype=bool)
        for p in self.params:
            if p.buffer:
                mask[p.offset:p.offset + p.size] = True
        return mask

    def layout(self) -> dict:
        """Names, shapes and offsets: enough to cut the flat vector back into arrays."""
        return {
            "names": [p.name for p in self.params],
            "shapes": [list(p.shape) for p in self.params],
            "offsets": [p.offset for p in self.params],
        }

    def layout_digest(self) -> bytes:
        text = repr((self.layout(), str(self.data.dtype) if self.data is not None else None))
        return hashlib.sha256(text.encode()).digest()

    def named(self) -> dict[str, np.ndarray]:
        return {p.name: p.data for p in self.params}
