"""Initialisers (mpidl.init)."""

import numpy as np
import pytest

from mpidl.init import he_normal, xavier_uniform


def test_initialisers_have_the_stated_variance():
    rng = np.random.default_rng(0)
    w = he_normal(rng, (400, 300))
    assert w.std() == pytest.approx(np.sqrt(2 / 300), rel=0.02)
    u = xavier_uniform(rng, (400, 300))
    assert np.abs(u).max() <= np.sqrt(6 / 700)
    assert u.std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
