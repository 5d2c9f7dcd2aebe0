"""Convolution and pooling layers; images are NCHW."""

from __future__ import annotations

from mpidl.nn.base import Module
from mpidl.ops import pool
from mpidl.ops.chunks import channels_last
from mpidl.ops.conv import pair, conv2d_backward, conv2d_forward
from mpidl.ops.convpool import conv2d_pool_relu_backward, conv2d_pool_relu_forward
from mpidl.ops.scratch import Scratch
from mpidl.ops.winograd import (winograd_applies, winograd_conv2d_backward, winograd_conv2d_forward,
                                 winograd_conv2d_pool_relu_forward, winograd_pool_applies)

# Winograd F(2x2,3x3) beat im2col, forward + backward at batch 64, one thread, on 32->64
# channels (1.5-1.6x, benchmarks/winograd_layers.py) and on resnet20's 16, 32 and 64-channel
# layers (1.26x, 1.70x, 1.12x), and lost on 1-3 input channels, where there is no channel sum
# to save on: "auto" takes it from this many input channels up.
WINOGRAD_MIN_CHANNELS = 16
ALGORITHMS = ("auto", "direct", "winograd")
# What a Winograd layer keeps for its weight gradient: the transformed input (4x the input's
# size, no work in backward) or only the input it already has (transformed again in backward).
# "auto" transforms again where that is cheap against the layer's products: the transform costs
# the same per input channel whatever the output channels F, the products grow with F. From
# RECOMPUTE_FROM_CHANNELS up no slowdown was measurable on resnet20 (its 32 and 64-channel layers:
# 0.99-1.00x the step time, 38 MB less at batch 64); on all its layers, 16 included, 6-13% slower.
WINOGRAD_KEEPS = ("auto", "transform", "input")
RECOMPUTE_FROM_CHANNELS = 32


class Conv2d(Module):
    """algorithm: 'auto' (Winograd for 3x3 stride-1 layers with at least WINOGRAD_MIN_CHANNELS
    input channels, im2col + GEMM elsewhere), 'direct' (always im2col), 'winograd' (where it
    applies). winograd_keeps: 'auto', 'transform' or 'input' (see WINOGRAD_KEEPS)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, init="he", algorithm: str = "auto", winograd_keeps: str = "auto"):
        kh, kw = pair(kernel_size)
        self.W = self.param("weight", (out_channels, in_channels, kh, kw), init)
        self.b = self.param("bias", (out_channels,), "zeros", decay=False) if bias else None
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
        self.need_input_grad = True  # the Model turns this off for the first layer
        self._cache = None
        self._cache_is_winograd = False    # which kernel the last forward ran, for its backward
        self._scratch = Scratch()    # working arrays reused from step to step
        self.algorithm = algorithm
        self.winograd_keeps = winograd_keeps

    _forward, _backward = staticmethod(conv2d_forward), staticmethod(conv2d_backward)

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @algorithm.setter
    def algorithm(self, name: str) -> None:
        if name not in ALGORITHMS:
            raise ValueError(f"Conv2d algorithm {name!r}: choose from {', '.join(ALGORITHMS)}")
        self._algorithm = name
        fits = winograd_applies(self.W.shape, self.stride, self.padding, self.dilation)
        self.uses_winograd = fits and (name == "winograd" or
                                       (name == "auto" and self.W.shape[1] >= WINOGRAD_MIN_CHANNELS))

    @property
    def winograd_keeps(self) -> str:
        return self._winograd_keeps

    @winograd_keeps.setter
    def winograd_keeps(self, what: str) -> None:
        if what not in WINOGRAD_KEEPS:
            raise ValueError(f"Conv2d winograd_keeps {what!r}: choose from {', '.join(WINOGRAD_KEEPS)}")
        self._winograd_keeps = what

    @property
    def keeps_transform(self) -> bool:
        """Whether a Winograd forward keeps the transformed input (else the input itself)."""
        if self._winograd_keeps == "auto":
            return self.W.shape[0] < RECOMPUTE_FROM_CHANNELS
        return self._winograd_keeps == "transform"

    def _winograd_forward(self, x_shape):
        """The Winograd kernel for this input, or None for im2col."""
        return winograd_conv2d_forward if self.uses_winograd else None

    def forward(self, x, train=True):
        b = None if self.b is None else self.b.data
        winograd = self._winograd_forward(x.shape)
        if winograd is not None:
            keep = (True if self.keeps_transform else "input") if train else False
            y, cache = winograd(x, self.W.data, b, self.padding, scratch=self._scratch, keep_cache=keep)
        else:
            y, cache = self._forward(x, self.W.data, b, self.stride, self.padding, self.dilation,
                                     keep_cols=train, scratch=self._scratch)
        self._cache = cache if train else None
        self._cache_is_winograd = winograd is not None
        return y

    def backward(self, dy):
        backward = winograd_conv2d_backward if self._cache_is_winograd else self._backward
        dx, dW, db = backward(dy, self._cache, need_dx=self.need_input_grad, need_db=self.b is not None,
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

    def _winograd_forward(self, x_shape):
        # By Winograd only where each 2x2 output tile is one pooling window (even output sizes).
        if self.uses_winograd and winograd_pool_applies(x_shape, self.W.shape, self.padding):
            return winograd_conv2d_pool_relu_forward
        return None


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
        self._channels_last = channels_last(x)
        return y

    def backward(self, dy):
        return pool.global_avgpool_backward(dy, self._shape, self._channels_last)
