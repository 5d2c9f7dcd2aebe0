"""The pieces of model parallelism that need no second rank: how parameters are cut, how
stages are balanced, the schedules and their bubble, the grid's coordinates and its errors."""

import numpy as np
import pytest

from mpidl import nn
from mpidl.errors import ConfigError
from mpidl.parallel.grid import grid_shape
from mpidl.parallel.pipeline import balanced_stages, bubble_fraction, peak_in_flight, schedule_ops, stage_layers
from mpidl.parallel.tensor import COLUMNS, QKV_ROWS, ROWS, dense_pairs


@pytest.mark.parametrize("split,shape", [(ROWS, (8, 6)), (COLUMNS, (6, 8)), (QKV_ROWS, (12, 4)), (ROWS, (8,))])
def test_shards_put_back_together_are_the_whole(split, shape):
    whole = np.arange(np.prod(shape), dtype=float).reshape(shape)
    for T in (1, 2, 4):
        rebuilt = np.full_like(whole, -1)
        pieces = [split.take(whole, t, T) for t in range(T)]
        for t, piece in enumerate(pieces):
            assert piece.shape == split.shard_shape(shape, T)
            split.put(rebuilt, t, T, piece)
        assert np.array_equal(rebuilt, whole)
        assert sum(p.size for p in pieces) == whole.size


def test_qkv_shards_hold_the_same_heads_of_query_key_and_value():
    dim, T = 4, 2
    W = np.repeat(np.arange(3 * dim)[:, None], 2, axis=1)   # row i holds i
    shard = QKV_ROWS.take(W, 1, T)[:, 0]
    assert shard.tolist() == [2, 3, 6, 7, 10, 11]           # the second half of q, of k and of v


def test_dense_pairs_cross_element_wise_layers_only():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 6), nn.Dropout(0.1),
                        nn.Linear(6, 2), nn.Linear(2, 4), nn.GELU(), nn.Tanh(), nn.Linear(4, 3))
    assert dense_pairs(seq) == [(0, 2), (5, 6)]  # Dropout breaks a pair; nothing is left for the last


def test_stages_balance_the_largest_part():
    assert balanced_stages([10, 1, 1, 1, 10], 2) == [0, 2]
    assert balanced_stages([1, 1, 1, 1], 4) == [0, 1, 2, 3]
    starts = balanced_stages([5, 5, 5, 5, 5, 5], 3)
    assert starts == [0, 2, 4]
    with pytest.raises(ConfigError, match="only 2 top-level layers"):
        balanced_stages([1, 1], 3)
    with pytest.raises(ConfigError, match="splits a Sequential"):
        stage_layers(nn.Residual(nn.Linear(2, 2)), 2, [1])


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
@pytest.mark.parametrize("stages,micro", [(2, 1), (2, 4), (4, 4), (4, 8), (3, 5)])
def test_schedules_run_every_micro_batch_once_each_way(name, stages, micro):
    for s in range(stages):
        ops = schedule_ops(name, s, stages, micro)
        assert sorted(i for op, i in ops if op == "F") == list(range(micro))
        assert [i for op, i in ops if op == "B"] == list(range(micro))  # backwards in order: same sums
        done = set()
        for op, i in ops:
            if op == "B":
                assert i in done  # a backward follows its forward
            done.add(i)
    # 1F1B holds at most S - s micro-batches on stage s; GPipe holds all of them
    assert peak_in_flight("1f1b", 0, 4, 8) == 4 and peak_in_flight("1f1b", 3, 4, 8) == 1
    assert peak_in_flight("gpipe", 0, 4, 8) == 8


def test_bubble_fraction():
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(2, 2) == pytest.approx(1 / 3)
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)


def test_grid_coordinates_and_errors():
    g = grid_shape(8, tensor=2, pipeline=2)
    assert (g.tensor, g.pipeline, g.data) == (2, 2, 2)
    seen = {g.coords(r) for r in range(8)}
    assert len(seen) == 8
    assert all(g.rank_of(*g.coords(r)) == r for r in range(8))
    assert g.coords(1) == (1, 0, 0) and g.coords(2) == (0, 1, 0) and g.coords(4) == (0, 0, 1)
    with pytest.raises(ConfigError, match="does not divide the 6 ranks"):
        grid_shape(6, tensor=4)
    with pytest.raises(ConfigError, match="at least 1"):
        grid_shape(4, tensor=0)
