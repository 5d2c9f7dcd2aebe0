"""GELU in its tanh approximation (Hendrycks & Gimpel 2016), as torch's F.gelu(x, approximate="tanh").

The tanh form needs no erf (NumPy has none) and is what GPT-2 and BERT used.
"""

from __future__ import annotations

import numpy as np

_C = np.sqrt(2.0 / np.pi)
_A = 0.044715


def gelu_forward(x):
    inner = _C * (x + _A * x * x * x)
    t = np.tanh(inner)
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy, cache):
    x, t = cache
    dinner = _C * (1.0 + 3.0 * _A * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)
