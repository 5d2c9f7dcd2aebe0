"""Convolution and pooling layers; images are NCHW."""

from __future__ import annotations

import time

import numpy as np

from mpidl.nn.base import Module
from mpidl.ops import pool
from mpidl.ops.chunks import channels_last
from mpidl.ops.conv import pair, conv2d_backward, conv2d_forward
from mpidl.ops.convpool import conv2d_pool_relu_backward, conv2d_pool_relu_forward
from mpidl.ops.scratch import Scratch
from mpidl.ops.winograd import (winograd_applies, winograd_conv2d_backward, winograd_conv2d_forward,
                                 winograd_conv2d_pool_relu_forward, winograd_pool_applies)

# Which kernel is faster depends on the layer and on the machine: on one Xeon Winograd
# F(2x2,3x3) beat im2col 1.26-1.70x on resnet20's layers, on an AMD EPYC (and against im2col
# with its input gradient by correlation) it lost on all three (0.67-0.94x). So "auto" measures:
# a layer where Winograd applies times both kernels on its first batch, in the pass it is asked
# for (training: forward and backward; evaluation: forward), and keeps the faster. Each is run
# MEASURE_ROUNDS times, after one untimed call, on up to MEASURE_SAMPLES of the batch's samples.
MEASURE_SAMPLES = 32
MEASURE_ROUNDS = 2
# Below this many input channels there is no channel sum for Winograd to save on: never measured.
WINOGRAD_MIN_CHANNELS = 4
ALGORITHMS = ("auto", "direct", "winograd")
MODES = ("train", "eval")
# What a Winograd layer keeps for its weight gradient: the transformed input (4x the input's
# size, no work in backward) or only the input it already has (transformed again in backward).
# "auto" transforms again where that is cheap against the layer's products: the transform costs
# the same per input channel whatever the output channels F, the products grow with F. From
# RECOMPUTE_FROM_CHANNELS up no slowdown was measurable on resnet20 (its 32 and 64-channel layers:
# 0.99-1.00x the step time, 38 MB less at batch 64); on all its layers, 16 included, 6-13% slower.
WINOGRAD_KEEPS = ("auto", "transform", "input")
RECOMPUTE_FROM_CHANNELS = 32


class Conv2d(Module):
    """algorithm: 'auto' (3x3 stride-1 layers with at least WINOGRAD_MIN_CHANNELS input channels
    measure Winograd against im2col on their first batch and keep the faster, see MEASURE_SAMPLES;
    im2col + GEMM elsewhere), 'direct' (always im2col, or mpidl.ops.shifted's rows at 8-16
    channels), 'winograd' (where it applies).
    winograd_keeps: 'auto', 'transform' or 'input' (see WINOGRAD_KEEPS)."""

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
        if not fits or name == "direct" or (name == "auto" and self.W.shape[1] < WINOGRAD_MIN_CHANNELS):
            fixed = "direct"
        else:
            fixed = None if name == "auto" else "winograd"
        # The kernel each pass runs; None: still to be measured on the first batch of that pass.
        self.chosen = {mode: fixed for mode in MODES}
        self.measures = fixed is None

    @property
    def uses_winograd(self) -> bool:
        """Whether training runs Winograd (where the input's shape allows), as chosen or measured."""
        return self.chosen["train"] == "winograd"

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

    def _winograd_kernel(self, x_shape):
        """The Winograd forward kernel for this input, or None where it does not apply."""
        return winograd_conv2d_forward

    def _run_forward(self, x, winograd, train, scratch):
        b = None if self.b is None else self.b.data
        if winograd is not None:
            keep = (True if self.keeps_transform else "input") if train else False
            return winograd(x, self.W.data, b, self.padding, scratch=scratch, keep_cache=keep)
        return self._forward(x, self.W.data, b, self.stride, self.padding, self.dilation, keep_cols=train,
                             scratch=scratch)

    def _run_backward(self, dy, cache, winograd, scratch):
        backward = winograd_conv2d_backward if winograd else self._backward
        return backward(dy, cache, need_dx=self.need_input_grad, need_db=self.b is not None, scratch=scratch)

    def _measure(self, x, winograd, train) -> str:
        """'winograd' or 'direct', whichever ran this pass faster on (part of) x."""
        part = x[:MEASURE_SAMPLES]
        scratch = Scratch()  # the loser's working arrays go with it
        seconds = {"direct": [], "winograd": []}
        for round_ in range(MEASURE_ROUNDS + 1):
            for name, kernel in (("direct", None), ("winograd", winograd)):
                start = time.perf_counter()
                y, cache = self._run_forward(part, kernel, train, scratch)
                if train:
                    self._run_backward(np.ones_like(y), cache, kernel, scratch)
                if round_:  # the first round allocates the working arrays
                    seconds[name].append(time.perf_counter() - start)
        return min(seconds, key=lambda name: min(seconds[name]))

    def forward(self, x, train=True):
        winograd = self._winograd_kernel(x.shape)
        mode = "train" if train else "eval"
        if winograd is not None and self.chosen[mode] is None:
            self.chosen[mode] = self._measure(x, winograd, train)
        if self.chosen[mode] != "winograd":
            winograd = None
        y, cache = self._run_forward(x, winograd, train, self._scratch)
        self._cache = cache if train else None
        self._cache_is_winograd = winograd is not None
        return y

    def backward(self, dy):
        dx, dW, db = self._run_backward(dy, self._cache, self._cache_is_winograd, self._scratch)
        self.W.grad += dW
        if self.b is not None:
            self.b.grad += db
        self._cache = None
        return dx


# How kernel_choices encodes each layer's choice per pass, for a broadcast or a checkpoint.
CHOICE_CODES = {None: 0, "direct": 1, "winograd": 2}


def kernel_choices(net) -> np.ndarray:
    """Every Conv2d's kernel per pass (MODES), in module order, as CHOICE_CODES (0: not yet measured)."""
    convs = [m for m in net.modules() if isinstance(m, Conv2d)]
    return np.array([[CHOICE_CODES[c.chosen[mode]] for mode in MODES] for c in convs], dtype=np.int64)


def set_kernel_choices(net, codes) -> None:
    """The inverse of kernel_choices: ranks take rank 0's measured choices (the same kernels make
    the same rounding everywhere), a resumed run those of the run it continues. A layer whose
    algorithm is fixed ('direct', 'winograd') keeps it."""
    names = {code: name for name, code in CHOICE_CODES.items()}
    convs = [m for m in net.modules() if isinstance(m, Conv2d)]
    codes = np.asarray(codes).reshape(len(convs), len(MODES))
    for conv, row in zip(convs, codes):
        if conv.measures:
            conv.chosen = {mode: names[int(code)] for mode, code in zip(MODES, row)}


def describe_kernel_choices(net) -> str | None:
    """What the measured layers chose for training, in words; None when no layer measures."""
    measured = [m for m in net.modules() if isinstance(m, Conv2d) and m.measures]
    chosen = [m.chosen["train"] for m in measured if m.chosen["train"] is not None]
    if not chosen:
        return None
    return (f"Winograd in {chosen.count('winograd')} and the direct GEMMs in {chosen.count('direct')} of the "
            f"{len(measured)} layers that measured both on the first batch")


class Conv2dPoolReLU(Conv2d):
    """Conv2d, then 2x2 max-pooling, then ReLU, computed in one pass (mpidl.ops.convpool):
    the same function and parameters as the three layers, without ever storing the
    full-resolution convolution output."""

    _forward, _backward = staticmethod(conv2d_pool_relu_forward), staticmethod(conv2d_pool_relu_backward)

    def _winograd_kernel(self, x_shape):
        # By Winograd only where each 2x2 output tile is one pooling window (even output sizes).
        if winograd_pool_applies(x_shape, self.W.shape, self.padding):
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
