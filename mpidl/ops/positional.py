"""Positional encodings added to a (batch, time, dim) sequence."""

from __future__ import annotations

import numpy as np


def sinusoidal_table(length, dim, base=10000.0):
    """Vaswani et al. (2017): sin on even channels, cos on odd, wavelengths from 2*pi to base*2*pi."""
    pos = np.arange(length)[:, None]
    freq = base ** (-np.arange(0, dim, 2) / dim)
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table


def add_positions_forward(x, table):
    """x (batch, time, dim) + table[:time]; the same kernel serves fixed and learned tables."""
    t = x.shape[1]
    if t > table.shape[0]:
        raise ValueError(f"sequence of {t} steps is longer than the {table.shape[0]} positions in the table")
    return x + table[:t], (t, table.shape)


def add_positions_backward(dy, cache):
    """Returns (dx, dtable); dtable matters only for a learned table."""
    t, shape = cache
    dtable = np.zeros(shape, dtype=dy.dtype)
    dtable[:t] = dy.sum(axis=0)
    return dy, dtable
