"""The convolutional models (cnn, lenet): the variant picked from the sample shape, and the fused
conv + pool + ReLU layers against the same network unfused."""

import numpy as np
import pytest


@pytest.mark.parametrize("name,shape,fc_in", [("cnn", (1, 28, 28), 3136), ("cnn", (3, 32, 32), 4096),
                                              ("lenet", (1, 28, 28), 400), ("lenet", (3, 32, 32), 400)])
def test_conv_models_pick_their_variant_from_the_sample_shape(name, shape, fc_in):
    from mpidl.models import build_model
    model = build_model(name, shape, 10, dtype=np.float32, seed=0)
    assert model.store.named()["fc1.weight"].shape[1] == fc_in
    assert model.net.layers[0].need_input_grad is False    # the first conv skips its input gradient
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    out = model.forward(x, train=False)
    assert out.shape == (3, 10) and out.dtype == np.float32
    model.store.zero_grad()
    loss = model.loss_and_backward(x, np.array([1, 2, 3]))
    assert np.isfinite(loss) and np.abs(model.store.grad).sum() > 0


@pytest.mark.parametrize("name", ["cnn", "lenet"])
def test_conv_builders_fuse_conv_pool_relu_and_match_the_unfused_network(name):
    from mpidl.nn import Conv2d, Conv2dPoolReLU, MaxPool2d
    from mpidl.nn import ReLU, Sequential
    from mpidl.models import build_model
    model = build_model(name, (1, 12, 12), 10, dtype=np.float64, seed=0)
    fused = [layer for layer in model.net.layers if isinstance(layer, Conv2dPoolReLU)]
    assert len(fused) == 2
    # The same parameters in separate Conv2d, MaxPool2d and ReLU layers give the same outputs and gradients.
    unfused = []
    for layer in model.net.layers:
        if isinstance(layer, Conv2dPoolReLU):
            conv = Conv2d.__new__(Conv2d)
            conv.__dict__.update(layer.__dict__)
            conv._scratch = type(layer._scratch)()
            unfused += [conv, MaxPool2d(2), ReLU()]
        else:
            unfused.append(layer)
    reference = Sequential(*unfused)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 1, 12, 12))
    x[:, :, :6, :6] = 0.5   # flat regions: ties in the pooling windows
    for step in range(2):   # twice, so the second step runs on reused working arrays
        out = model.net.forward(x + step)
        dout = rng.normal(size=out.shape)
        model.store.zero_grad()
        model.net.backward(dout)
        fused_grad = model.store.grad.copy()
        np.testing.assert_allclose(reference.forward(x + step), out, rtol=1e-12, atol=1e-12)
        model.store.zero_grad()
        reference.backward(dout)
        np.testing.assert_allclose(model.store.grad, fused_grad, rtol=1e-12, atol=1e-12)
