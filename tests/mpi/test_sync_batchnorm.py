"""Synchronised batch norm: with N ranks each holding a slice of one global batch, statistics,
outputs, running statistics and gradients equal those of one process on the whole batch.
Float64, so only summation order differs."""

import numpy as np
import pytest

from mpidl.parallel.comm import world
from mpidl.nn import BatchNorm1d, BatchNorm2d, SyncBatchNorm1d, SyncBatchNorm2d
from mpidl.params import ParamStore


def _layer(cls, C, comm=None):
    layer = cls(C)
    store = ParamStore(layer)
    store.allocate(np.float64)
    layer.attach(None, comm)
    rng = np.random.default_rng(1)  # same affine parameters everywhere
    layer.gamma.data[...] = rng.normal(size=C)
    layer.beta.data[...] = rng.normal(size=C)
    return layer


@pytest.mark.mpi
@pytest.mark.parametrize("global_batch", [12, 10])  # 10 splits unevenly over 4 ranks
@pytest.mark.parametrize("shape,sync_cls,plain_cls", [((3, 4, 5), SyncBatchNorm2d, BatchNorm2d),
                                                      ((6,), SyncBatchNorm1d, BatchNorm1d)])
def test_sync_batchnorm_equals_one_process_on_the_global_batch(global_batch, shape, sync_cls, plain_cls):
    comm = world()
    C = shape[0]
    rng = np.random.default_rng(0)  # the same global batch on every rank
    x = rng.normal(size=(global_batch, *shape)) * 2 + 0.5
    dy = rng.normal(size=x.shape)
    mine = np.array_split(np.arange(global_batch), comm.size)[comm.rank]

    synced, whole = _layer(sync_cls, C, comm), _layer(plain_cls, C)
    for _ in range(2):  # running statistics over two steps
        y_mine = synced.forward(x[mine], train=True)
        y_all = whole.forward(x, train=True)
        np.testing.assert_allclose(y_mine, y_all[mine], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(synced.running_mean.data, whole.running_mean.data, rtol=1e-12)
    np.testing.assert_allclose(synced.running_var.data, whole.running_var.data, rtol=1e-12)
    # the batch really was normalised with global statistics
    axes = (0,) + tuple(range(2, x.ndim))
    assert np.abs(y_all.mean(axis=axes) - whole.beta.data).max() < 1e-10

    dx_mine = synced.backward(dy[mine])
    dx_all = whole.backward(dy)
    np.testing.assert_allclose(dx_mine, dx_all[mine], rtol=1e-10, atol=1e-12)
    # parameter gradients: the ranks' local parts add up to the whole batch's
    grads = np.concatenate([synced.gamma.grad, synced.beta.grad])
    comm.allreduce_sum_(grads)
    np.testing.assert_allclose(grads, np.concatenate([whole.gamma.grad, whole.beta.grad]), rtol=1e-10)

    out = synced.forward(x[mine], train=False)  # evaluation uses the (identical) running statistics
    np.testing.assert_allclose(out, whole.forward(x, train=False)[mine], rtol=1e-12, atol=1e-12)


@pytest.mark.mpi
def test_plain_batchnorm_uses_only_local_statistics():
    comm = world()
    x = np.random.default_rng(2).normal(size=(8, 3, 2, 2)) + np.arange(8)[:, None, None, None]
    mine = np.array_split(np.arange(8), comm.size)[comm.rank]
    layer = _layer(BatchNorm2d, 3)
    y = layer.forward(x[mine], train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), layer.beta.data, atol=1e-10)
