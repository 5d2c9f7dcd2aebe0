"""Layers: own parameter views from a ParamStore and call the stateless kernels in ``mpidl.ops``.

Protocol: ``forward(x, train=True) -> y`` keeps what backward needs on the layer;
``backward(dy) -> dx`` adds parameter gradients into the grad views (so
``ParamStore.zero_grad`` must run once per step) and returns the input gradient.
"""

from __future__ import annotations

from mpidl import init as initializers
from mpidl.ops import activations as act
from mpidl.ops.linear import linear_backward, linear_forward
from mpidl.params import ParamStore


class Layer:
    def forward(self, x, train: bool = True):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x, train: bool = True):
        return self.forward(x, train)


class Linear(Layer):
    def __init__(self, store: ParamStore, name: str, in_features: int, out_features: int,
                 bias: bool = True, init="he"):
        init_fn = initializers.BY_NAME[init] if isinstance(init, str) else init
        self.W = store.add(f"{name}.weight", (out_features, in_features), init_fn)
        self.b = store.add(f"{name}.bias", (out_features,), initializers.zeros, decay=False) if bias else None
        self._cache = None
        # The first layer's input gradient is never used; skipping it saves a GEMM.
        self.need_input_grad = True

    def forward(self, x, train=True):
        y, self._cache = linear_forward(x, self.W.data, None if self.b is None else self.b.data)
        return y

    def backward(self, dy):
        # The step's first contribution to a zeroed gradient is written by the GEMM itself:
        # no temporary, no pass to add it (about 0.5 ms a step for the CNN's fc 4096->512).
        into = self.W.grad if self.W.grad_is_zero else None
        dx, dW, db = linear_backward(dy, self._cache, need_dx=self.need_input_grad, dW_out=into)
        if into is None:
            self.W.grad += dW
        self.W.grad_is_zero = False
        if self.b is not None:
            self.b.grad += db
        self._cache = None
        return dx


class _Elementwise(Layer):
    _fwd = None
    _bwd = None

    def forward(self, x, train=True):
        y, self._cache = type(self)._fwd(x)
        return y

    def backward(self, dy):
        return type(self)._bwd(dy, self._cache)


class ReLU(_Elementwise):
    _fwd = staticmethod(act.relu_forward)
    _bwd = staticmethod(act.relu_backward)


class Sigmoid(_Elementwise):
    _fwd = staticmethod(act.sigmoid_forward)
    _bwd = staticmethod(act.sigmoid_backward)


class Tanh(_Elementwise):
    _fwd = staticmethod(act.tanh_forward)
    _bwd = staticmethod(act.tanh_backward)


class Softmax(_Elementwise):
    _fwd = staticmethod(act.softmax_forward)
    _bwd = staticmethod(act.softmax_backward)


class Flatten(Layer):
    def forward(self, x, train=True):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class Sequential(Layer):
    # Called as backward_hook(i) right after layers[i].backward, so that gradient
    # reduction can start on the layers already done (mpidl.reducer); None when unused.
    backward_hook = None

    def __init__(self, *layers: Layer):
        self.layers = list(layers)

    def forward(self, x, train=True):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy):
        hook = self.backward_hook
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy)
            if hook is not None:
                hook(i)
            if dy is None:  # the layers below need no input gradient
                break
        return dy
