"""Element-wise activations and softmax. Each backward uses what its forward kept: the output,
or for ReLU only the 0/1 mask."""

from __future__ import annotations

import numpy as np

from mpidl.ops.chunks import flat_in_memory_order, spans


def relu(x):
    return np.maximum(x, 0)


def relu_forward(x):
    """(max(x, 0), mask). Keeps a boolean mask, not y: a quarter of y's memory, and y can be
    freed as soon as the next layer is done with it (a Winograd convolution keeps its own
    transform instead)."""
    xf = flat_in_memory_order(x)
    if xf is None:   # a slice with gaps: NumPy's own strided loops
        y = np.maximum(x, 0)
        return y, y > 0
    y = np.empty_like(x)                 # empty_like keeps x's layout, so these flatten alike
    mask = np.empty_like(x, dtype=bool)
    yf, mf = flat_in_memory_order(y), flat_in_memory_order(mask)
    for s in spans(xf.size):   # the mask taken from y while it is in cache (mpidl.ops.chunks)
        np.maximum(xf[s], 0, out=yf[s])
        np.greater(yf[s], 0, out=mf[s])
    return y, mask


def relu_backward(dy, mask):
    # Multiplying by the 0/1 mask is several times faster than np.where on large arrays.
    return dy * mask


def sigmoid_forward(x):
    # exp of a non-positive number only, so nothing overflows.
    e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
    return y, y


def sigmoid(x):
    return sigmoid_forward(x)[0]


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh_forward(x):
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def softmax_forward(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    y = e / e.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dy, cache):
    y, axis = cache
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
