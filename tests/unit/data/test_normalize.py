"""--normalize: the statistics of the whole training set, exactly, fitted from shards."""

import numpy as np
import pytest

from mpidl.data import files
from mpidl.data.normalize import Normalizer, feature_axis, fit_normalizer
from mpidl.errors import DataError


class ShardComm:
    """Rank `rank` of `size`: sums are collected, then replaced by the total of every rank's."""

    def __init__(self, rank, size, totals=None):
        self.rank, self.size, self.totals, self.sent = rank, size, totals, []

    def allreduce_sum_(self, buf, what=""):
        self.sent.append(buf.copy())
        if self.totals is not None:
            buf[...] = self.totals.pop(0)
        return buf

    def allreduce_min_max(self, values):
        self.sent.append(values.copy())
        if self.totals is not None:
            return self.totals.pop(0)
        return values, values


def _fit_like_n_ranks(kind, x, scale, n):
    """fit_normalizer as n ranks would run it, each on its share, the sums reduced by hand."""
    # pass 1 on every rank, then pass 2 with the reduced pass-1 results
    sent = []
    for r in range(n):
        c = ShardComm(r, n)
        try:
            fit_normalizer(kind, x, scale, c)
        except Exception:
            pass
        sent.append(c.sent)
    sums = sum(s[0] for s in sent)
    both = np.stack([s[1] for s in sent])
    f = x.shape[1 + feature_axis(x.ndim - 1)]
    mins, maxs = both.min(axis=0), both.max(axis=0)
    first = [sums, (mins, maxs)]
    if kind == "scale":
        return fit_normalizer(kind, x, scale, ShardComm(0, n, list(first)))
    squares = []
    for r in range(n):
        c = ShardComm(r, n, list(first) + [np.zeros(f)])
        fit_normalizer(kind, x, scale, c)
        squares.append(c.sent[2])
    return fit_normalizer(kind, x, scale, ShardComm(0, n, list(first) + [sum(squares)]))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_standard_statistics_are_exact_from_shards(n):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(101, 4)) * [1, 10, 100, 0.1] + [5, -3, 1e4, 0]).astype(np.float32)
    norm = _fit_like_n_ranks("standard", x, 1.0, n)
    np.testing.assert_allclose(norm.shift, x.astype(np.float64).mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(norm.divisor, x.astype(np.float64).std(axis=0), rtol=1e-12)
    out = norm.apply_(x.astype(np.float64))
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), 1, rtol=1e-10)


def test_images_are_normalised_per_channel_after_the_stored_scale():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30, 3, 4, 4), dtype=np.uint8)
    norm = fit_normalizer("standard", x, 1 / 255, None)
    scaled = x.astype(np.float64) / 255
    np.testing.assert_allclose(norm.shift, scaled.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(norm.divisor, scaled.std(axis=(0, 2, 3)), rtol=1e-12)
    assert norm.axis == 0


def test_sequences_normalise_their_features_and_scale_maps_to_unit_range():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 7, 3)) * [1, 5, 50]
    norm = fit_normalizer("scale", x, 1.0, None)
    assert norm.axis == 1
    out = norm.apply_(x.copy())
    np.testing.assert_allclose(out.min(axis=(0, 1)), 0, atol=1e-15)
    np.testing.assert_allclose(out.max(axis=(0, 1)), 1, rtol=1e-15)


def test_a_constant_feature_stays_finite_and_round_trips_through_json():
    import json
    x = np.ones((10, 2))
    x[:, 1] = np.arange(10)
    norm = fit_normalizer("standard", x, 1.0, None)
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    out32 = back.apply_(x.astype(np.float32))
    assert np.isfinite(out32).all() and out32.dtype == np.float32
    np.testing.assert_array_equal(back.shift, norm.shift)
    np.testing.assert_array_equal(back.divisor, norm.divisor)


def test_large_arrays_are_summed_in_bounded_chunks(monkeypatch):
    monkeypatch.setattr(files, "CHUNK_BYTES", 256)
    x = np.random.default_rng(3).normal(size=(500, 4))
    norm = fit_normalizer("standard", x, 1.0, None)
    np.testing.assert_allclose(norm.shift, x.mean(axis=0), rtol=1e-12)


def test_unknown_kind_is_refused():
    with pytest.raises(DataError, match="--normalize max"):
        fit_normalizer("max", np.zeros((2, 2)), 1.0, None)
