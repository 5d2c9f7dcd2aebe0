"""Dense layers, embeddings, activations and dropout."""

from __future__ import annotations

import numpy as np

from mpidl import init as initializers
from mpidl.nn.base import Module
from mpidl.ops import activations as act
from mpidl.ops import regularize as reg
from mpidl.ops.embedding import embedding_backward, embedding_forward
from mpidl.ops.gelu import gelu_backward, gelu_forward
from mpidl.ops.linear import linear_backward, linear_forward


class Linear(Module):
    """y = x W^T + b over the last axis; W is (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="he"):
        self.W = self.param("weight", (out_features, in_features), init)
        self.b = self.param("bias", (out_features,), "zeros", decay=False) if bias else None
        self._cache = None
        # The first layer's input gradient is never used; skipping it saves a GEMM.
        self.need_input_grad = True

    def forward(self, x, train=True):
        y, self._cache = linear_forward(x, self.W.data, None if self.b is None else self.b.data)
        return y

    def backward(self, dy):
        # The step's first contribution to a zeroed gradient is written by the GEMM itself:
        # no temporary, no pass to add it (about 0.5 ms a step for the CNN's fc 4096->512).
        into = self.W.grad if self.W.grad_is_zero else None
        dx, dW, db = linear_backward(dy, self._cache, need_dx=self.need_input_grad, dW_out=into)
        if into is None:
            self.W.grad += dW
        self.W.grad_is_zero = False
        if self.b is not None:
            self.b.grad += db
        self._cache = None
        return dx


class Embedding(Module):
    """Integer ids (any shape) -> rows of a (vocab, dim) table."""

    def __init__(self, vocab: int, dim: int):
        self.table = self.param("weight", (vocab, dim), initializers.normal(1.0))

    def forward(self, ids, train=True):
        y, self._cache = embedding_forward(ids, self.table.data)
        return y

    def backward(self, dy):
        self.table.grad += embedding_backward(dy, self._cache)
        return None  # integer ids have no gradient


class _Elementwise(Module):
    _fwd = None
    _bwd = None
    _eval = None  # the output alone, where that is cheaper than _fwd (nothing kept for backward)

    def forward(self, x, train=True):
        if not train and type(self)._eval is not None:
            self._cache = None
            return type(self)._eval(x)
        y, self._cache = type(self)._fwd(x)
        return y

    def backward(self, dy):
        return type(self)._bwd(dy, self._cache)


class ReLU(_Elementwise):
    _fwd = staticmethod(act.relu_forward)
    _bwd = staticmethod(act.relu_backward)
    _eval = staticmethod(act.relu)


class Sigmoid(_Elementwise):
    _fwd = staticmethod(act.sigmoid_forward)
    _bwd = staticmethod(act.sigmoid_backward)


class Tanh(_Elementwise):
    _fwd = staticmethod(act.tanh_forward)
    _bwd = staticmethod(act.tanh_backward)


class Softmax(_Elementwise):
    _fwd = staticmethod(act.softmax_forward)
    _bwd = staticmethod(act.softmax_backward)


class GELU(_Elementwise):
    """Tanh approximation (torch: F.gelu(x, approximate="tanh"))."""
    _fwd = staticmethod(gelu_forward)
    _bwd = staticmethod(gelu_backward)


class Dropout(Module):
    """Inverted dropout; masks come from this rank's generator (given when the model is
    built, or as `rng`); evaluation passes x through."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        self.p, self.rng = float(p), rng
        self._mask = None

    def attach(self, rng, comm):
        if self.rng is None:
            self.rng = rng

    def forward(self, x, train=True):
        if not train or self.p == 0:
            self._mask = None
            return x
        if self.rng is None:
            raise RuntimeError("Dropout has no random generator: build the model with mpidl.Model "
                               "(or pass rng=) before training")
        y, self._mask = reg.dropout_forward(x, self.p, self.rng)
        return y

    def backward(self, dy):
        return dy if self._mask is None else reg.dropout_backward(dy, self._mask)

    def extra_repr(self):
        return f"(p={self.p})"
