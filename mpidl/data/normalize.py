"""--normalize: per-feature (or per-channel) statistics of the whole training set, exactly.

Each rank sums its share of the training rows in bounded chunks; the sums are reduced
across ranks, so every rank ends with the same statistics whatever its share, and no rank
reads more than 1/N of the file. The variance takes a second pass over centred values
(stable where E[x^2] - mean^2 is not).

    scale      x -> (x - min) / (max - min)       each feature into [0, 1]
    standard   x -> (x - mean) / std              zero mean, unit variance

The fitted shift and divisor travel with the weights (model.json, checkpoints): mpidl.load
applies exactly what training applied.
"""

from __future__ import annotations

import numpy as np

from mpidl.data.files import row_bytes, row_chunks
from mpidl.errors import DataError

KINDS = ("none", "scale", "standard")


def feature_axis(sample_ndim: int) -> int:
    """Which axis of a sample holds the features: a table's columns (F,), an image's
    channels (C, H, W), a sequence's features (T, F)."""
    return 1 if sample_ndim == 2 else 0


class Normalizer:
    def __init__(self, kind: str, axis: int, shift, divisor):
        self.kind, self.axis = kind, int(axis)
        self.shift = np.asarray(shift, dtype=np.float64)
        self.divisor = np.asarray(divisor, dtype=np.float64)
        self._cast = {}

    def _for(self, x: np.ndarray):
        key = (x.dtype.str, x.ndim)
        if key not in self._cast:
            shape = [1] * x.ndim
            shape[1 + self.axis] = len(self.shift)
            self._cast[key] = (self.shift.astype(x.dtype).reshape(shape),
                               self.divisor.astype(x.dtype).reshape(shape))
        return self._cast[key]

    def apply_(self, x: np.ndarray) -> np.ndarray:
        """In place on a batch (batch, *sample) of model inputs."""
        shift, divisor = self._for(x)
        x -= shift
        x /= divisor
        return x

    def to_dict(self) -> dict:
        return {"kind": self.kind, "axis": self.axis, "shift": self.shift.tolist(),
                "divisor": self.divisor.tolist()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Normalizer | None":
        if not d:
            return None
        return cls(d["kind"], d["axis"], d["shift"], d["divisor"])


def _per_feature(block: np.ndarray, axis: int) -> np.ndarray:
    """(rows, *sample) -> (rows*other, features) with features last."""
    moved = np.moveaxis(block, 1 + axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def fit_normalizer(kind: str, x, scale: float, comm, name: str = "dataset") -> Normalizer | None:
    """Statistics of the model inputs (stored x times `scale`) over every training sample.
    Collective: every rank calls it with the same arrays."""
    if kind not in KINDS:
        raise DataError(f"--normalize {kind}: choose from {', '.join(KINDS)}")
    if kind == "none":
        return None
    axis = feature_axis(x.ndim - 1)
    features = x.shape[1 + axis]
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    mine = np.array_split(np.arange(len(x)), size)[rank]
    chunks = [] if not len(mine) else list(row_chunks(len(x), row_bytes(x) * 8 // max(1, np.dtype(x.dtype).itemsize),
                                                      int(mine[0]), int(mine[-1]) + 1))

    def blocks():
        for rows in chunks:
            yield _per_feature(np.asarray(x[rows], dtype=np.float64) * scale, axis)

    sums = np.zeros(features + 1)          # per-feature sum, then the value count
    low, high = np.full(features, np.inf), np.full(features, -np.inf)
    for b in blocks():
        sums[:features] += b.sum(axis=0)
        sums[features] += len(b)
        low, high = np.minimum(low, b.min(axis=0)), np.maximum(high, b.max(axis=0))
    if comm is not None:
        comm.allreduce_sum_(sums)
        mins, maxs = comm.allreduce_min_max(np.concatenate([low, high]))
        low, high = mins[:features], maxs[features:]
    if not np.isfinite(sums).all():
        raise DataError(f"{name}: the training inputs hold NaN or infinite values")
    if kind == "scale":
        span = high - low
        return Normalizer(kind, axis, low, np.where(span > 0, span, 1.0))
    mean = sums[:features] / sums[features]
    squares = np.zeros(features)
    for b in blocks():
        squares += ((b - mean) ** 2).sum(axis=0)
    if comm is not None:
        comm.allreduce_sum_(squares)
    std = np.sqrt(squares / sums[features])
    return Normalizer(kind, axis, mean, np.where(std > 0, std, 1.0))  # a constant feature stays 0
