"""The prefetching loader: same batches in the same order as preparing inline, errors
raised in the training thread, and a clean stop when training ends early."""

import threading

import numpy as np
import pytest

from mpidl.parallel.comm import SerialComm
from mpidl.cli import parse_config
from mpidl.data.prefetch import InlineBatches, Prefetcher
from mpidl.trainer import Trainer


def test_prefetcher_yields_every_item_in_order():
    with Prefetcher(range(50), lambda i: i * i, depth=3) as feed:
        assert list(feed) == [(i, i * i) for i in range(50)]
    assert list(InlineBatches(range(5), lambda i: -i)) == [(i, -i) for i in range(5)]


def test_prefetcher_raises_the_loader_error_in_the_caller():
    def prepare(i):
        if i == 3:
            raise ValueError("bad sample 3")
        return i

    feed = Prefetcher(range(10), prepare, depth=2)
    got = [next(feed)[0] for _ in range(3)]
    with pytest.raises(ValueError, match="bad sample 3"):
        next(feed)
    feed.close()
    assert got == [0, 1, 2]


def test_close_stops_a_thread_blocked_on_a_full_queue():
    before = threading.active_count()
    feed = Prefetcher(iter(range(10**9)), lambda i: i, depth=1)
    next(feed)
    feed.close()
    assert threading.active_count() == before


def _train(prefetch, augment):
    cfg = parse_config(["--model", "mlp", "--max-steps", "30", "--batch-size", "32", "--seed", "5",
                        "--dtype", "float64", "--prefetch", str(prefetch)])
    t = Trainer.from_config(cfg, SerialComm())
    if augment:
        # Draws from the data stream: prefetching must not change which numbers each batch gets.
        t.data.augment = lambda x, rng: x + rng.normal(scale=0.1, size=x.shape)
    t.train()
    return t.store.data.copy()


@pytest.mark.parametrize("augment", [False, True])
def test_prefetching_gives_bitwise_the_same_weights(augment):
    inline = _train(0, augment)
    np.testing.assert_array_equal(_train(3, augment), inline)
    assert not np.array_equal(inline, _train(0, not augment))  # augmentation did change the run
