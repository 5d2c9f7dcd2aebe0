"""Weight initialisers: each takes (rng, shape) and returns a float64 array.

fan_in/fan_out follow the (out, in, *kernel) layout of Linear and Conv weights.
"""

from __future__ import annotations

import numpy as np

# Per-rank random streams, seeded [run seed, rank, stream]: dropout masks and noise (MODEL),
# augmentation (DATA). The trainer and the checkpoints use these ids.
MODEL_STREAM, DATA_STREAM = 1, 2


def _fans(shape) -> tuple[int, int]:
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_out = shape[0] * receptive
    fan_in = (shape[1] if len(shape) > 1 else shape[0]) * receptive
    return fan_in, fan_out


def zeros(rng, shape):
    return np.zeros(shape)


def ones(rng, shape):
    return np.ones(shape)


def he_normal(rng, shape):
    """He et al. (2015): N(0, 2/fan_in), for ReLU networks."""
    fan_in, _ = _fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def he_uniform(rng, shape):
    fan_in, _ = _fans(shape)
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape)


def xavier_uniform(rng, shape):
    """Glorot & Bengio (2010): U(-a, a), a = sqrt(6/(fan_in+fan_out)), for tanh/sigmoid."""
    fan_in, fan_out = _fans(shape)
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)


def xavier_normal(rng, shape):
    fan_in, fan_out = _fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def uniform(bound: float):
    def init(rng, shape):
        return rng.uniform(-bound, bound, size=shape)
    return init


def normal(std: float):
    def init(rng, shape):
        return rng.normal(0.0, std, size=shape)
    return init


BY_NAME = {
    "zeros": zeros,
    "ones": ones,
    "he": he_normal,
    "he_uniform": he_uniform,
    "xavier": xavier_uniform,
    "xavier_normal": xavier_normal,
}
