"""The public module API: construction from sizes, parameter names by path, the flat buffer,
and the layers no built-in model uses (checked with mpidl.testing)."""

import numpy as np
import pytest

import mpidl
from mpidl import nn
from mpidl.params import ParamStore


def test_parameters_are_named_by_module_path_and_live_in_one_buffer():
    block = nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    net = nn.Sequential({"stem": nn.Linear(3, 4), "block1": block, "head": nn.Linear(4, 2, bias=False)})
    model = mpidl.Model(net, dtype="float64", seed=1)
    names = [p.name for p in model.store.params]
    assert names == ["stem.weight", "stem.bias", "block1.inner.0.weight", "block1.inner.0.bias", "head.weight"]
    assert model.store.data.size == 3 * 4 + 4 + 16 + 4 + 8
    for p in model.store.params:
        assert np.shares_memory(p.data, model.store.data) and np.shares_memory(p.grad, model.store.grad)


def test_a_shared_parameter_is_stored_once_and_a_module_cannot_join_two_models():
    lin = nn.Linear(3, 3)
    net = nn.Sequential(lin, nn.Tanh(), lin)
    model = mpidl.Model(net, loss="mse")
    assert [p.name for p in model.store.params] == ["0.weight", "0.bias"]
    with pytest.raises(ValueError, match="already belongs"):
        mpidl.Model(net, loss="mse")


def test_sequential_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="not an mpidl.nn.Module"):
        nn.Sequential(nn.Linear(2, 2), np.tanh)


@pytest.mark.parametrize("layer,shape", [(nn.AvgPool2d(2), (2, 3, 6, 4)), (nn.GlobalAvgPool2d(), (2, 3, 5, 5)),
                                         (nn.LayerNorm(6), (4, 6)), (nn.GELU(), (3, 7)),
                                         (nn.Residual(nn.Linear(5, 5), nn.Linear(5, 5)), (3, 5))])
def test_layers_without_a_built_in_model_have_right_gradients(layer, shape):
    report = mpidl.testing.check_module(layer, np.random.default_rng(1).normal(size=shape))
    assert report.worst < 1e-6, report


def test_embedding_gradient_reaches_the_table():
    emb = nn.Embedding(10, 4)
    ids = np.array([[1, 2, 2], [9, 0, 1]])
    report = mpidl.testing.check_module(emb, ids)
    assert report.worst < 1e-6 and "weight" in report.errors


def test_dropout_gets_its_generator_from_the_model_and_is_identity_in_evaluation():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model = mpidl.Model(net, loss="mse")
    x = np.ones((8, 4), dtype=np.float32)
    assert not np.array_equal(net.forward(x, True), net.forward(x, True))
    np.testing.assert_array_equal(net.forward(x, False), net.forward(x, False))
    assert model.predict(x).shape == (8, 4)


def test_store_collects_a_bare_layer():
    lin = nn.Linear(2, 3)
    store = ParamStore(lin)
    store.allocate(np.float64, np.random.default_rng(0))
    assert [p.name for p in store.params] == ["weight", "bias"] and store.size == 9


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (64, 3)), (nn.BatchNorm2d, (8, 3, 5, 5))])
def test_batchnorm_variance_is_stable_for_a_large_mean(cls, shape):
    """mean/std = 1e4: E[x^2] - mean^2 loses about 8 digits there; the two-pass variance does not."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = 1e4 + rng.normal(size=shape)
    layer = cls(shape[1])
    ParamStore(layer).allocate(np.float64)
    y = layer.forward(x, True)
    ref = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True, eps=1e-5).numpy()
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-10
    axes = (0,) + tuple(range(2, x.ndim))
    np.testing.assert_allclose(layer.running_var.data, 0.9 + 0.1 * x.var(axis=axes, ddof=1), rtol=1e-12)
