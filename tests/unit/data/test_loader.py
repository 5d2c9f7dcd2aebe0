"""The sharded sampler and evaluation shards (mpidl.data.loader): equal steps on every rank for
many data set sizes and rank counts, shuffles from the shared seed, resume mid-epoch."""

import numpy as np
import pytest

from mpidl.data.loader import ShardedSampler, eval_shard


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n,batch", [(100, 10), (101, 10), (9, 9), (50, 7), (13, 5)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_every_rank_takes_the_same_number_of_steps_and_shares_cover_the_batch(size, n, batch, drop_last):
    samplers = [ShardedSampler(n, batch, r, size, seed=3, drop_last=drop_last) for r in range(size)]
    epochs = [list(s.epoch(1)) for s in samplers]
    assert len({len(e) for e in epochs}) == 1
    assert len(epochs[0]) == (n // batch if drop_last else -(-n // batch))
    seen = []
    for steps in zip(*epochs):
        together = np.concatenate([s.indices for s in steps])
        assert len(together) == steps[0].global_count == len(set(together.tolist()))
        assert max(len(s.indices) for s in steps) - min(len(s.indices) for s in steps) <= 1
        assert sum(s.weight for s in steps) == pytest.approx(size)
        seen.extend(together.tolist())
    assert len(seen) == len(set(seen))
    if not drop_last:
        assert sorted(seen) == list(range(n))


def test_reshuffle_per_epoch_from_shared_seed():
    a, b = ShardedSampler(100, 10, 0, 1, seed=1), ShardedSampler(100, 10, 0, 1, seed=1)
    assert np.array_equal(a.order(0), b.order(0))
    assert not np.array_equal(a.order(0), a.order(1))
    assert not np.array_equal(a.order(0), ShardedSampler(100, 10, 0, 1, seed=2).order(0))


def test_resume_mid_epoch_gives_the_remaining_steps():
    s = ShardedSampler(100, 10, 1, 2, seed=0)
    full = list(s.epoch(2))
    rest = list(s.epoch(2, start=4))
    assert [x.index for x in rest] == list(range(4, 10))
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(full[4:], rest))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n", [1, 3, 10, 360])
def test_eval_shards_cover_each_sample_once(size, n):
    parts = [eval_shard(n, r, size) for r in range(size)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))


def test_block_shuffle_draws_each_batch_from_few_contiguous_runs():
    n, batch, block = 1000, 64, 16
    s = ShardedSampler(n, batch, 0, 1, seed=5, shuffle="blocks", block=block)
    order = s.order(0)
    assert sorted(order) == list(range(n))  # every sample once
    assert not np.array_equal(order, s.order(1))  # reshuffled every epoch
    for step in s.epoch(0):
        runs = 1 + int(np.sum(np.diff(step.indices) != 1))
        assert runs <= batch // block + 1
    full = ShardedSampler(n, batch, 0, 1, seed=5)
    assert 1 + int(np.sum(np.diff(next(full.epoch(0)).indices) != 1)) > 40


def test_block_shuffle_keeps_equal_steps_and_disjoint_slices_on_every_rank():
    n, batch, size = 997, 60, 4
    samplers = [ShardedSampler(n, batch, r, size, seed=1, shuffle="blocks", block=15) for r in range(size)]
    steps = [list(s.epoch(2)) for s in samplers]
    assert len({len(s) for s in steps}) == 1
    for k in range(len(steps[0])):
        parts = [steps[r][k].indices for r in range(size)]
        assert sum(len(p) for p in parts) == batch
        assert len(set(np.concatenate(parts))) == batch


def test_default_block_is_about_a_mebibyte_but_leaves_blocks_to_permute():
    from mpidl.data.loader import default_block
    assert default_block(640_000, 3136) == 334      # float32 28x28: 1 MiB of samples
    assert default_block(1437, 64) == 22            # small data: at least 64 blocks
    assert default_block(10, 10**7) == 1


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_each_rank_takes_the_part_np_array_split_would_give_it(size):
    """The shares are np.array_split's (the first batch % size ranks one longer), which every
    checkpoint and equivalence test before the arithmetic replaced it assumed."""
    for n, batch in ((100, 10), (101, 13), (9, 9), (5, 7)):
        for rank in range(size):
            sampler = ShardedSampler(n, batch, rank, size, seed=5)
            order = sampler.order(0)
            for step in sampler.epoch(0):
                whole = order[step.index * batch:(step.index + 1) * batch]
                assert np.array_equal(step.indices, np.array_split(whole, size)[rank])
