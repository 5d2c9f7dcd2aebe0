"""Embedding lookup: rows of a (vocabulary, dim) table picked by integer ids."""

from __future__ import annotations

import numpy as np


def embedding_forward(ids, table):
    ids = np.asarray(ids)
    return table[ids], (ids, table.shape)


def embedding_backward(dy, cache):
    """Returns dtable. Repeated ids add up (np.add.at does not drop duplicates as += would)."""
    ids, shape = cache
    dtable = np.zeros(shape, dtype=dy.dtype)
    np.add.at(dtable, ids.reshape(-1), dy.reshape(-1, shape[1]))
    return dtable
