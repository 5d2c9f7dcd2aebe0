"""Convolution and pooling layers; images are NCHW."""

from __future__ import annotations

from mpidl.nn.base import Module
from mpidl.ops import pool
from mpidl.ops.conv import pair, conv2d_backward, conv2d_forward
from mpidl.ops.convpool import conv2d_pool_relu_backward, conv2d_pool_relu_forward
from mpidl.ops.scratch import Scratch


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, init="he"):
        kh, kw = pair(kernel_size)
        self.W = self.param("weight", (out_channels, in_channels, kh, kw), init)
        self.b = self.param("bias", (out_channels,), "zeros", decay=False) if bias else None
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
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


class MaxPool2d(Module):
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


class AvgPool2d(Module):
    def __init__(self, kernel_size=2, stride=None):
        self.kernel, self.stride = kernel_size, stride

    def forward(self, x, train=True):
        y, self._cache = pool.avgpool2d_forward(x, self.kernel, self.stride)
        return y

    def backward(self, dy):
        return pool.avgpool2d_backward(dy, self._cache)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C)."""

    def forward(self, x, train=True):
        y, self._shape = pool.global_avgpool_forward(x)
        return y

    def backward(self, dy):
        return pool.global_avgpool_backward(dy, self._shape)
