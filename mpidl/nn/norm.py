"""Normalisation layers: batch norm (plain and synchronised across ranks) and layer norm."""

from __future__ import annotations

from mpidl.nn.base import Module
from mpidl.ops import regularize as reg
from mpidl.ops.chunks import SampleRows
from mpidl.ops.layernorm import layernorm_backward, layernorm_forward


class BatchNorm(Module):
    """Batch normalisation over axis 1 of (N, C) or (N, C, H, W) inputs (Ioffe & Szegedy, 2015).

    Training normalises with the batch's statistics and updates running ones (PyTorch's
    convention: running = (1-m)*running + m*batch, unbiased variance); evaluation uses the
    running statistics. The synchronised variants normalise over the GLOBAL batch: in forward
    an Allreduce of [sum, count] and one of the squares about that mean (two passes, stable
    for any mean/std), in backward one of [sum dy, sum dy*xhat], so N ranks compute what one
    process would on the whole batch.

    The running statistics are buffers in the flat parameter buffer (gradient always zero, so
    no optimiser moves them): the start-up broadcast and checkpoints carry them. Without
    synchronisation each rank updates them from its own slice; they are then averaged over
    the ranks before every evaluation and checkpoint (DistributedOptimizer.sync_buffers), and
    the replica check leaves them out.
    """

    expected_ndim = None
    synchronised = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        self.gamma = self.param("weight", (num_features,), "ones", decay=False)
        self.beta = self.param("bias", (num_features,), "zeros", decay=False)
        self.running_mean = self.buffer("running_mean", (num_features,), "zeros")
        self.running_var = self.buffer("running_var", (num_features,), "ones")
        self.eps, self.momentum = float(eps), float(momentum)
        self.num_features = num_features
        self.comm = None
        self._cache = None

    def attach(self, rng, comm):
        if self.synchronised:
            self.comm = comm

    def _check(self, x):
        if x.ndim != self.expected_ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got input of shape {x.shape}")

    def forward(self, x, train=True):
        self._check(x)
        if not train:
            return reg.batchnorm_eval(x, self.gamma.data, self.beta.data, self.running_mean.data,
                                      self.running_var.data, self.eps)
        rows = SampleRows(x)   # x laid out as rows once for the three passes below
        sums = reg.batchnorm_sums(rows)
        if self.comm is not None:
            self.comm.allreduce_sum_(sums)
        mean, count = reg.mean_from_sums(sums)
        squares = reg.centred_square_sums(rows, mean)
        if self.comm is not None:
            self.comm.allreduce_sum_(squares)
        var = squares / count
        y, cache = reg.batchnorm_forward(rows, self.gamma.data, self.beta.data, mean, var, self.eps)
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


class SyncBatchNorm1d(BatchNorm1d):
    """BatchNorm1d whose statistics are those of the global batch across all ranks."""
    synchronised = True


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm2d whose statistics are those of the global batch across all ranks."""
    synchronised = True


class LayerNorm(Module):
    """Normalises the last axis (Ba et al. 2016)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.gamma = self.param("weight", (dim,), "ones", decay=False)
        self.beta = self.param("bias", (dim,), "zeros", decay=False)
        self.eps = eps

    def forward(self, x, train=True):
        y, self._cache = layernorm_forward(x, self.gamma.data, self.beta.data, self.eps)
        return y

    def backward(self, dy):
        dx, dg, db = layernorm_backward(dy, self._cache)
        self.gamma.grad += dg
        self.beta.grad += db
        self._cache = None
        return dx
