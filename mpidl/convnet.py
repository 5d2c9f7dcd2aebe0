"""Layers for convolutional networks: Conv2d, pooling, Dropout, BatchNorm (plain and synchronised).

Same protocol as mpidl.layers: ``forward(x, train)`` keeps what backward needs,
``backward(dy)`` adds parameter gradients into the ParamStore's grad views and returns
the input gradient. Images are NCHW.
"""

from __future__ import annotations

import numpy as np

from mpidl import init as initializers
from mpidl.layers import Layer
from mpidl.ops import pool, regularize as reg
from mpidl.ops.conv import _pair, conv2d_backward, conv2d_forward
from mpidl.ops.scratch import Scratch
from mpidl.ops.convpool import conv2d_pool_relu_backward, conv2d_pool_relu_forward
from mpidl.params import ParamStore


class Conv2d(Layer):
    def __init__(self, store: ParamStore, name: str, in_channels: int, out_channels: int, kernel_size,
                 stride=1, padding=0, dilation=1, bias: bool = True, init="he"):
        kh, kw = _pair(kernel_size)
        init_fn = initializers.BY_NAME[init] if isinstance(init, str) else init
        self.W = store.add(f"{name}.weight", (out_channels, in_channels, kh, kw), init_fn)
        self.b = store.add(f"{name}.bias", (out_channels,), initializers.zeros, decay=False) if bias else None
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.need_input_grad = True  # the Model turns this off for the first layer
        self._cache = None
        self._scratch = Scratch()    # working arrays reused from step to step

    _forward, _backward = staticmethod(conv2d_forward), staticmethod(conv2d_backward)

    def forward(self, x, train=True):
        y, cache = self._forward(x, self.W.data, None if self.b is None else self.b.data,
                                 self.stride, self.padding, self.dilation, keep_cols=train, scratch=self._scratch)
        self._cache = cache if train else None
        return y

    def backward(self, dy):
        dx, dW, db = self._backward(dy, self._cache, need_dx=self.need_input_grad, need_db=self.b is not None,
                                    scratch=self._scratch)
        self.W.grad += dW
        if self.b is not None:
            self.b.grad += db
        self._cache = None
        return dx


class Conv2dPoolReLU(Conv2d):
    """Conv2d, then 2x2 max-pooling, then ReLU, computed in one pass (mpidl.ops.convpool):
    the same function and parameters as the three layers, without ever storing the
    full-resolution convolution output."""

    _forward, _backward = staticmethod(conv2d_pool_relu_forward), staticmethod(conv2d_pool_relu_backward)


class MaxPool2d(Layer):
    """``relu=True``: max-pooling followed by ReLU in one layer (see pool.maxpool2d_forward)."""

    def __init__(self, kernel_size=2, stride=None, relu=False):
        self.kernel, self.stride, self.relu = kernel_size, stride, bool(relu)

    def forward(self, x, train=True):
        y, cache = pool.maxpool2d_forward(x, self.kernel, self.stride, relu=self.relu)
        self._cache = cache if train else None
        return y

    def backward(self, dy):
        dx = pool.maxpool2d_backward(dy, self._cache)
        self._cache = None
        return dx


class AvgPool2d(Layer):
    def __init__(self, kernel_size=2, stride=None):
        self.kernel, self.stride = kernel_size, stride

    def forward(self, x, train=True):
        y, self._cache = pool.avgpool2d_forward(x, self.kernel, self.stride)
        return y

    def backward(self, dy):
        return pool.avgpool2d_backward(dy, self._cache)


class GlobalAvgPool2d(Layer):
    """(N, C, H, W) -> (N, C)."""

    def forward(self, x, train=True):
        y, self._shape = pool.global_avgpool_forward(x)
        return y

    def backward(self, dy):
        return pool.global_avgpool_backward(dy, self._shape)


class Dropout(Layer):
    """Inverted dropout; masks come from this rank's Generator, evaluation passes x through."""

    def __init__(self, p: float, rng: np.random.Generator):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        self.p, self.rng = float(p), rng
        self._mask = None

    def forward(self, x, train=True):
        if not train:
            self._mask = None
            return x
        y, self._mask = reg.dropout_forward(x, self.p, self.rng)
        return y

    def backward(self, dy):
        return reg.dropout_backward(dy, self._mask)


class BatchNorm(Layer):
    """Batch normalisation over axis 1 of (N, C) or (N, C, H, W) inputs (Ioffe & Szegedy, 2015).

    Training normalises with the batch's statistics and updates running ones (PyTorch's
    convention: running = (1-m)*running + m*batch, unbiased variance); evaluation uses the
    running statistics. With ``comm`` given the batch is the GLOBAL batch: one Allreduce
    of [sum, sum of squares, count] in forward and one of [sum dy, sum dy*xhat] in backward,
    so N ranks compute what one process would on the whole batch.

    The running statistics live in the ParamStore (decay=False, gradient always zero, so
    no optimiser moves them): the start-up broadcast and checkpoints carry them. Without
    synchronisation each rank updates them from its own slice.
    """

    def __init__(self, store: ParamStore, name: str, num_features: int, eps: float = 1e-5,
                 momentum: float = 0.1, comm=None):
        self.gamma = store.add(f"{name}.weight", (num_features,), initializers.ones, decay=False)
        self.beta = store.add(f"{name}.bias", (num_features,), initializers.zeros, decay=False)
        self.running_mean = store.add(f"{name}.running_mean", (num_features,), initializers.zeros, decay=False)
        self.running_var = store.add(f"{name}.running_var", (num_features,), initializers.ones, decay=False)
        self.eps, self.momentum, self.comm = float(eps), float(momentum), comm
        self.num_features = num_features
        self._cache = None

    def _check(self, x):
        if x.ndim != self.expected_ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got input of shape {x.shape}")

    def forward(self, x, train=True):
        self._check(x)
        if not train:
            return reg.batchnorm_eval(x, self.gamma.data, self.beta.data, self.running_mean.data,
                                      self.running_var.data, self.eps)
        sums = reg.batchnorm_sums(x)
        if self.comm is not None:
            self.comm.allreduce_sum_(sums)
        mean, var, count = reg.stats_from_sums(sums)
        y, cache = reg.batchnorm_forward(x, self.gamma.data, self.beta.data, mean, var, self.eps)
        self._cache, self._count = cache, count
        m = self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.data[...] = (1 - m) * self.running_mean.data + m * mean
        self.running_var.data[...] = (1 - m) * self.running_var.data + m * unbiased
        return y

    def backward(self, dy):
        local = reg.batchnorm_grad_sums(dy, self._cache)
        total = local
        if self.comm is not None:
            total = self.comm.allreduce_sum_(local.copy())
        dx, dgamma, dbeta = reg.batchnorm_backward(dy, self._cache, local, total, self._count)
        self.gamma.grad += dgamma
        self.beta.grad += dbeta
        self._cache = None
        return dx


class BatchNorm1d(BatchNorm):
    expected_ndim = 2


class BatchNorm2d(BatchNorm):
    expected_ndim = 4


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm2d whose statistics are those of the global batch across all ranks."""

    def __init__(self, store, name, num_features, comm, eps=1e-5, momentum=0.1):
        super().__init__(store, name, num_features, eps, momentum, comm=comm)


class SyncBatchNorm1d(BatchNorm1d):
    def __init__(self, store, name, num_features, comm, eps=1e-5, momentum=0.1):
        super().__init__(store, name, num_features, eps, momentum, comm=comm)
