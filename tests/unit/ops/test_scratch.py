"""Working arrays: a layer's own outlive a call, temporaries are shared by every layer of a
thread. Networks whose layers take turns with the same temporaries give the numbers that
fresh arrays give, and threads never share them."""

import threading

import numpy as np
import pytest

from mpidl import nn
from mpidl.ops.scratch import FRESH, Scratch
from mpidl.params import ParamStore


def test_temporaries_are_shared_between_scratches_and_own_arrays_are_not():
    a, b = Scratch(), Scratch()
    assert a.temp("t", (3, 4), np.float32) is b.temp("t", (3, 4), np.float32)
    assert a.temp("t", (3, 4), np.float32) is not a.temp("t", (3, 5), np.float32)      # by shape
    assert a.temp("t", (3, 4), np.float32) is not a.temp("t", (3, 4), np.float64)      # by dtype
    assert a.empty("own", (3, 4), np.float32) is not b.empty("own", (3, 4), np.float32)
    assert FRESH.temp("t", (3, 4), np.float32) is not FRESH.temp("t", (3, 4), np.float32)


def test_each_thread_has_its_own_pool():
    mine = Scratch().temp("t", (8,), np.float64)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(Scratch().temp("t", (8,), np.float64)))
    worker.start()
    worker.join()
    assert seen[0] is not mine


def stack(algorithm, channels=16, layers=4):
    """Convolutions whose temporaries have the same shapes, all forwards before any backward."""
    mods = {}
    for i in range(layers):
        mods[f"conv{i}"] = nn.Conv2d(channels, channels, 3, padding=1, algorithm=algorithm)
        mods[f"bn{i}"] = nn.BatchNorm2d(channels)
        mods[f"relu{i}"] = nn.ReLU()
    mods["pool"] = nn.Conv2dPoolReLU(channels, 8, 3, padding=1, algorithm=algorithm)
    return nn.Sequential(mods)


@pytest.mark.parametrize("algorithm", ["winograd", "direct"])
def test_layers_taking_turns_with_shared_temporaries_equal_fresh_arrays(algorithm, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 16, 10, 10))
    results = []
    for fresh in (False, True):
        net = stack(algorithm)
        store = ParamStore(net)
        store.allocate(np.float64, np.random.default_rng(0))
        if fresh:
            for m in net.modules():
                if hasattr(m, "_scratch"):
                    monkeypatch.setattr(m, "_scratch", FRESH)
        outs = []
        for step in range(2):                   # the second step reuses what the first left
            y = net.forward(x + step, True)
            dx = net.backward(np.cos(y))
            outs += [y.copy(), dx.copy(), store.grad.copy()]
            store.grad[...] = 0
        results.append(outs)
    for ours, ref in zip(*results):
        np.testing.assert_array_equal(ours, ref)


def test_the_pool_keeps_a_bounded_number_of_shapes_per_name():
    from mpidl.ops import scratch as module
    s = Scratch()
    first = s.temp("bounded", (1,), np.float32)
    for n in range(2, 2 + 3 * module.SHAPES_PER_NAME):       # batches of ever new sizes
        s.temp("bounded", (n,), np.float32)
        assert len(module._shared_pool()["bounded"]) <= module.SHAPES_PER_NAME
    assert s.temp("bounded", (1,), np.float32) is not first       # the oldest was dropped
    recent = s.temp("bounded", (5 + 3 * module.SHAPES_PER_NAME,), np.float32)
    s.temp("bounded", (1000,), np.float32)
    assert s.temp("bounded", (5 + 3 * module.SHAPES_PER_NAME,), np.float32) is recent   # used lately: kept
