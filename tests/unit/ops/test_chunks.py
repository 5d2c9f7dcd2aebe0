"""The chunked element-wise kernels (mpidl.ops.chunks) give NumPy's plain results in every
memory layout they meet, and keep the layout they were given."""

import numpy as np
import pytest

from mpidl.ops import activations as act
from mpidl.ops import chunks


def layouts(rng):
    x = rng.normal(size=(5, 3, 7, 6))
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    padded = np.zeros((5, 9, 8, 3))
    padded[:, 1:8, 1:7] = x.transpose(0, 2, 3, 1)
    return {"nchw": x, "nhwc": nhwc, "sliced": padded[:, 1:8, 1:7].transpose(0, 3, 1, 2), "2d": x.reshape(5, -1)}


@pytest.mark.parametrize("chunk", [None, 50])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "sliced", "2d"])
def test_relu_forward_equals_numpy_in_every_layout(layout, chunk, monkeypatch):
    if chunk is not None:   # chunks that do not divide the array
        monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", chunk)
    x = layouts(np.random.default_rng(0))[layout]
    y, mask = act.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(mask, x > 0)
    assert mask.dtype == bool and 0 < mask.sum() < mask.size
    if layout == "nhwc":
        assert chunks.channels_last(y) and chunks.channels_last(mask)
    np.testing.assert_array_equal(act.relu_backward(np.ones_like(x), mask), (x > 0).astype(x.dtype))


def test_flat_views_follow_memory_order_and_empty_like_keeps_it():
    arrays = layouts(np.random.default_rng(1))
    for name in ("nchw", "nhwc", "2d"):   # relu_forward flattens x and its empty_like alike
        twin = np.empty_like(arrays[name])
        assert chunks.channels_last(twin) == chunks.channels_last(arrays[name])
        assert chunks.flat_in_memory_order(twin) is not None
    assert chunks.flat_in_memory_order(arrays["sliced"]) is None
    flat = chunks.flat_in_memory_order(arrays["nhwc"])
    assert np.shares_memory(flat, arrays["nhwc"])
    np.testing.assert_array_equal(flat, arrays["nchw"].transpose(0, 2, 3, 1).reshape(-1))
