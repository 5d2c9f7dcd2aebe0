"""GELU in its tanh approximation (Hendrycks & Gimpel 2016), as torch's F.gelu(x, approximate="tanh").

The tanh form needs no erf (NumPy has none) and is what GPT-2 and BERT used.
Constants are Python floats: a NumPy float64 scalar would promote float32 arrays.
"""

from __future__ import annotations

import math

import numpy as np

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


def gelu_forward(x):
    x2 = x * x
    t = x2 * (_C * _A)
    t += _C
    t *= x
    np.tanh(t, out=t)
    y = t + 1.0
    y *= x
    y *= 0.5
    return y, (x, x2, t)


def gelu_backward(dy, cache):
    """d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) C (1 + 3 A x^2), t = tanh(C (x + A x^3))."""
    x, x2, t = cache
    inner = x2 * (3.0 * _C * _A)
    inner += _C
    inner *= x
    inner *= 1.0 - t * t
    inner += 1.0
    inner += t
    inner *= 0.5
    inner *= dy
    return inner
