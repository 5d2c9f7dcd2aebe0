"""The convolution layer (mpidl.nn.Conv2d): need_input_grad and accumulation into the grad views."""

import numpy as np


def test_conv_layer_honours_need_input_grad_and_accumulates():
    from mpidl.nn import Conv2d
    from mpidl.params import ParamStore
    conv = Conv2d(3, 4, 3, padding=1)
    store = ParamStore(conv)
    store.allocate(np.float64)
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    dy = np.ones((2, 4, 5, 5))
    conv.forward(x)
    assert conv.backward(dy).shape == x.shape
    once = store.grad.copy()
    conv.need_input_grad = False
    conv.forward(x)
    assert conv.backward(dy) is None
    np.testing.assert_allclose(store.grad, 2 * once)       # backward adds into the grad views
