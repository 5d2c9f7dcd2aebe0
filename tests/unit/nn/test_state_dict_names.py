"""Parameter names follow the module path like PyTorch state_dict keys, so a model of your own
loads into the same PyTorch network by name and computes the same outputs."""

import numpy as np
import pytest

import mpidl
from mpidl import nn


def test_user_model_weights_load_into_torch_by_name():
    torch = pytest.importorskip("torch")
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    model = mpidl.Model(net, dtype="float64", seed=3)
    twin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()
    state = {p.name: torch.from_numpy(p.data.copy()) for p in model.store.params}
    twin.load_state_dict(state)  # strict: every key and shape must match
    x = np.random.default_rng(0).normal(size=(5, 3, 4))
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), theirs, rtol=1e-12, atol=1e-12)
