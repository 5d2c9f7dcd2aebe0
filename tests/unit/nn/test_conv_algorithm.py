"""Conv2d picks Winograd F(2x2,3x3) only where it applies and measured faster, computes the
same function as im2col either way, and --conv-algorithm direct turns it off everywhere."""

import numpy as np
import pytest

from mpidl import nn
from mpidl.cli import parse_config
from mpidl.parallel.comm import SerialComm
from mpidl.trainer import Trainer


def _conv(c_in, algorithm, **kw):
    conv = nn.Conv2d(c_in, 8, 3, algorithm=algorithm, **kw)
    return conv


@pytest.mark.parametrize("c_in, kw, expected", [
    (16, dict(padding=1), True), (32, dict(padding=0), True),
    (3, dict(padding=1), False),            # too few input channels to gain
    (16, dict(padding=1, stride=2), False), (16, dict(padding=2), False), (16, dict(dilation=2), False),
])
def test_auto_uses_winograd_only_where_it_applies_and_pays(c_in, kw, expected):
    assert _conv(c_in, "auto", **kw).uses_winograd is expected
    assert _conv(c_in, "direct", **kw).uses_winograd is False


def test_winograd_and_direct_layers_agree_in_float64():
    from mpidl.models.base import Model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 16, 9, 11))
    grads = {}
    for algorithm in ("direct", "winograd"):
        net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1, algorithm=algorithm))
        net.layers[0].algorithm = algorithm
        model = Model(net, "mse", dtype="float64", seed=1)
        model.store.zero_grad()
        model.loss_and_backward(x, np.zeros((3, 4, 9, 11)))
        grads[algorithm] = (model.predict(x), model.store.grad.copy())
    np.testing.assert_allclose(grads["winograd"][0], grads["direct"][0], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grads["winograd"][1], grads["direct"][1], rtol=1e-10, atol=1e-12)


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="choose from auto, direct, winograd"):
        nn.Conv2d(16, 8, 3, algorithm="fft")


@pytest.mark.parametrize("flag, winograd_layers", [("auto", 16), ("direct", 0)])
def test_the_flag_sets_every_convolution(flag, winograd_layers):
    cfg = parse_config(["--model", "resnet20", "--dataset", "digits", "--max-steps", "1", "--batch-size", "8",
                        "--conv-algorithm", flag])
    trainer = Trainer.from_config(cfg, SerialComm())
    convs = [m for m in trainer.model.net.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.uses_winograd for c in convs) == winograd_layers and len(convs) == 21


@pytest.mark.parametrize("size", [(10, 12), (9, 12)])      # an odd input height goes to im2col
def test_fused_conv_pool_relu_by_winograd_equals_direct_in_float64(size):
    from mpidl.models.base import Model
    x = np.random.default_rng(2).normal(size=(3, 16, *size))
    results = {}
    for algorithm in ("direct", "winograd"):
        net = nn.Sequential(nn.Conv2dPoolReLU(16, 16, 3, padding=1, algorithm=algorithm),
                            nn.Conv2dPoolReLU(16, 8, 3, padding=1, algorithm=algorithm), nn.Flatten())
        model = Model(net, "mse", dtype="float64", seed=1)
        model.store.zero_grad()
        model.loss_and_backward(x, np.zeros((3, 8 * (size[0] // 4) * (size[1] // 4))))
        results[algorithm] = (model.predict(x), model.store.grad.copy())
        used = [layer._cache_is_winograd for layer in net.layers[:2]]
        expected = [size[0] % 2 == 0, (size[0] // 2) % 2 == 0] if algorithm == "winograd" else [False, False]
        assert used == expected
    np.testing.assert_allclose(results["winograd"][0], results["direct"][0], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(results["winograd"][1], results["direct"][1], rtol=1e-10, atol=1e-12)


def test_winograd_keeps_flag_sets_every_convolution_and_bad_values_are_refused():
    cfg = parse_config(["--model", "resnet20", "--dataset", "digits", "--max-steps", "1", "--batch-size", "8",
                        "--winograd-keeps", "input"])
    trainer = Trainer.from_config(cfg, SerialComm())
    convs = [m for m in trainer.model.net.modules() if isinstance(m, nn.Conv2d)]
    assert {c.winograd_keeps for c in convs} == {"input"}
    with pytest.raises(ValueError, match="choose from auto, transform, input"):
        nn.Conv2d(16, 8, 3, winograd_keeps="both")


def test_winograd_keeps_auto_transforms_again_from_32_output_channels():
    """By default a Winograd layer keeps its transform below 32 output channels and only its
    input from there up; the cache it leaves says which it kept."""
    rng = np.random.default_rng(0)
    kept = {}
    for out_channels in (16, 31, 32, 64):
        conv = nn.Conv2d(16, out_channels, 3, padding=1, bias=False)
        conv.W.data = rng.normal(size=conv.W.shape).astype(np.float32)
        x = rng.normal(size=(2, 16, 6, 6)).astype(np.float32)
        conv.forward(x)
        assert conv._cache_is_winograd
        keeps_transform = conv._cache[1]                  # True: V kept; False: x kept
        assert keeps_transform == conv.keeps_transform
        kept[out_channels] = keeps_transform
    assert kept == {16: True, 31: True, 32: False, 64: False}
    conv.winograd_keeps = "transform"
    assert conv.keeps_transform
