import numpy as np
import pytest

from mpidl.models import build_model
from mpidl.params import ParamStore


def test_every_parameter_and_gradient_is_a_view_of_the_flat_buffers():
    m = build_model("mlp", (1, 28, 28), 10, dtype=np.float32, seed=0)
    store = m.store
    assert store.size == 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert store.data.flags.c_contiguous and store.grad.flags.c_contiguous
    offset = 0
    for p in store.params:
        # a view at exactly this offset of the flat buffers (which may themselves be views of
        # zero-padded buffers, for ZeRO)
        item = store.data.itemsize
        assert p.data.ctypes.data == store.data.ctypes.data + offset * item
        assert p.grad.ctypes.data == store.grad.ctypes.data + offset * item
        assert np.shares_memory(p.data, store.data) and np.shares_memory(p.grad, store.grad)
        assert p.offset == offset
        np.testing.assert_array_equal(store.data[offset:offset + p.size], p.data.reshape(-1))
        offset += p.size
    # writing through a view changes the flat buffer and vice versa
    store.params[0].grad[0, 0] = 7.0
    assert store.grad[0] == 7.0
    store.data[-1] = 3.0
    assert store.params[-1].data[-1] == 3.0
    store.zero_grad()
    assert not store.grad.any()


def test_float64_selectable_and_biases_excluded_from_decay():
    m = build_model("mlp", (64,), 10, {"hidden": (8,)}, dtype=np.float64, seed=0)
    assert m.store.data.dtype == np.float64 and m.store.grad.dtype == np.float64
    mask = m.store.decay_mask()
    for p in m.store.params:
        assert (mask[p.offset:p.offset + p.size] == (0 if p.name.endswith("bias") else 1)).all()


def test_backward_writes_into_the_grad_views():
    m = build_model("mlp", (64,), 10, {"hidden": (16,)}, dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    m.store.zero_grad()
    m.loss_and_backward(rng.normal(size=(5, 64)), rng.integers(0, 10, 5))
    for p in m.store.params:
        assert np.abs(p.grad).sum() > 0, p.name


def test_declaring_twice_or_after_allocation_is_an_error():
    s = ParamStore()
    s.add("w", (2, 2), lambda rng, shape: np.ones(shape))
    with pytest.raises(ValueError, match="duplicate"):
        s.add("w", (2,), lambda rng, shape: np.ones(shape))
    s.allocate()
    with pytest.raises(RuntimeError):
        s.add("v", (2,), lambda rng, shape: np.ones(shape))


def test_same_seed_same_weights_different_seed_different():
    a, b = (build_model("mlp", (64,), 10, seed=5) for _ in range(2))
    c = build_model("mlp", (64,), 10, seed=6)
    np.testing.assert_array_equal(a.store.data, b.store.data)
    assert not np.array_equal(a.store.data, c.store.data)
