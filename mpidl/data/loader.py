"""Which samples each rank uses at each step.

Every rank draws the same permutation (seeded by run seed and epoch), cuts it into
the same global batches, and takes its own contiguous slice of each. Steps per epoch
are therefore identical on every rank for any dataset size and rank count, so no rank
waits at the end of an epoch for a collective the others never enter.

When the global batch does not divide by the rank count, slices differ by at most one
sample (``numpy.array_split``) and the trainer weights each rank's gradient by its
share, so the update equals the single-process one on the same global batch.

``shuffle="blocks"`` permutes contiguous blocks of samples instead of samples ("careful
storage I/O"): a global batch is then a few contiguous runs of the file, and each rank's
slice about one run, which a slow parallel file system serves with a few large reads
instead of one small read per sample. The blocks' order is fresh every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Step:
    epoch: int
    index: int               # step within the epoch
    indices: np.ndarray      # this rank's sample indices
    global_count: int        # samples in the whole global batch
    weight: float            # this rank's share x world size (1.0 when the split is even)


class ShardedSampler:
    def __init__(self, n_samples: int, global_batch: int, rank: int, size: int, seed: int,
                 drop_last: bool = True, shuffle: bool | str = True, block: int = 64):
        if global_batch < 1:
            raise ValueError("global batch must be at least 1")
        if shuffle not in (True, False, "full", "blocks", "none"):
            raise ValueError(f"shuffle={shuffle!r}: choose full, blocks or none")
        shuffle = {True: "full", False: "none"}.get(shuffle, shuffle)
        self.block = max(1, int(block))
        self.n = int(n_samples)
        self.batch = int(global_batch)
        self.rank, self.size = rank, size
        self.seed = int(seed)
        self.drop_last = drop_last
        self.shuffle = shuffle

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return self.n // self.batch
        return -(-self.n // self.batch)

    def order(self, epoch: int) -> np.ndarray:
        if self.shuffle == "none":
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle == "full":
            return rng.permutation(self.n)
        starts = rng.permutation(-(-self.n // self.block)) * self.block
        order = (starts[:, None] + np.arange(self.block)).reshape(-1)
        return order[order < self.n]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Step]:
        order = self.order(epoch)
        for s in range(start, self.steps_per_epoch):
            batch = order[s * self.batch:(s + 1) * self.batch]
            mine = batch[_share(len(batch), self.rank, self.size)]
            yield Step(epoch, s, mine, len(batch), len(mine) * self.size / len(batch))


def _share(n: int, rank: int, size: int) -> slice:
    """This rank's contiguous part of n items, as np.array_split cuts them (the first n % size
    parts one longer), without its per-call cost (~25 us, a step of a small model is ~1 ms)."""
    q, extra = divmod(n, size)
    start = rank * q + min(rank, extra)
    return slice(start, start + q + (rank < extra))


def default_block(n_samples: int, sample_bytes: int) -> int:
    """--shuffle blocks without --shuffle-block: about 1 MiB of consecutive samples per block
    (where reads got faster, benchmarks/data_at_scale.py), but at least 64 blocks to permute."""
    return max(1, min((1 << 20) // max(sample_bytes, 1), n_samples // 64))


def eval_shard(n_samples: int, rank: int, size: int) -> np.ndarray:
    """This rank's part of an evaluation set: disjoint, together covering every sample once."""
    return np.array_split(np.arange(n_samples), size)[rank]
