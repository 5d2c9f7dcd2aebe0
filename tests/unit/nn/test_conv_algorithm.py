"""Conv2d measures Winograd F(2x2,3x3) against im2col where it applies and keeps the faster,
computes the same function either way, and --conv-algorithm direct turns it off everywhere."""

import time

import numpy as np
import pytest

from mpidl import nn
from mpidl.cli import parse_config
from mpidl.checkpoint import restore_checkpoint, save_checkpoint, read_checkpoint
from mpidl.nn import conv as conv_layers
from mpidl.nn.conv import kernel_choices, set_kernel_choices
from mpidl.parallel.comm import SerialComm
from mpidl.trainer import Trainer


def _conv(c_in, algorithm, **kw):
    conv = nn.Conv2d(c_in, 8, 3, algorithm=algorithm, **kw)
    return conv


@pytest.mark.parametrize("c_in, kw, measured", [
    (16, dict(padding=1), True), (32, dict(padding=0), True), (4, dict(padding=1), True),
    (3, dict(padding=1), False),            # too few input channels to gain
    (16, dict(padding=1, stride=2), False), (16, dict(padding=2), False), (16, dict(dilation=2), False),
])
def test_auto_measures_only_where_winograd_applies_and_may_pay(c_in, kw, measured):
    """None: measured on the first batch; 'direct': fixed."""
    expected = None if measured else "direct"
    assert _conv(c_in, "auto", **kw).chosen == {"train": expected, "eval": expected}
    assert _conv(c_in, "direct", **kw).chosen == {"train": "direct", "eval": "direct"}
    applies = measured or c_in == 3          # forced, Winograd runs wherever the geometry allows
    assert _conv(c_in, "winograd", **kw).uses_winograd is applies


def _slowed(kernel, seconds=0.02):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return kernel(*args, **kwargs)
    return slow


@pytest.mark.parametrize("slow", ["direct", "winograd"])
def test_auto_keeps_the_kernel_that_measured_faster_in_each_pass(slow, monkeypatch):
    """The slowed kernel loses; training and evaluation are measured separately, each on its
    first batch, and the layer then runs the winner and gives the direct result."""
    if slow == "direct":
        monkeypatch.setattr(nn.Conv2d, "_forward", staticmethod(_slowed(conv_layers.conv2d_forward)))
    else:
        monkeypatch.setattr(conv_layers, "winograd_conv2d_forward", _slowed(conv_layers.winograd_conv2d_forward))
    from mpidl.models.base import Model
    x = np.random.default_rng(0).normal(size=(3, 16, 6, 6))
    results = {}
    for algorithm in ("auto", "direct"):
        model = Model(nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, algorithm=algorithm)), "mse", dtype="float64",
                      seed=1)
        conv = model.net.layers[0]
        model.store.zero_grad()
        model.loss_and_backward(x, np.zeros((3, 8, 6, 6)))
        results[algorithm] = (model.predict(x), model.store.grad.copy())
        if algorithm == "auto":
            winner = "winograd" if slow == "direct" else "direct"
            assert conv.chosen == {"train": winner, "eval": winner}
            assert conv._cache_is_winograd == (winner == "winograd")    # the kernel predict ran
    np.testing.assert_allclose(results["auto"][0], results["direct"][0], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(results["auto"][1], results["direct"][1], rtol=1e-10, atol=1e-12)


def test_training_and_evaluation_are_measured_separately_on_their_first_batch():
    from mpidl.models.base import Model
    model = Model(nn.Sequential(nn.Conv2d(16, 8, 3, padding=1)), "mse", seed=1)
    conv = model.net.layers[0]
    x = np.random.default_rng(0).normal(size=(2, 16, 6, 6)).astype(np.float32)
    model.predict(x)
    assert conv.chosen["train"] is None and conv.chosen["eval"] in ("direct", "winograd")
    model.store.zero_grad()
    model.loss_and_backward(x, np.zeros((2, 8, 6, 6), np.float32))
    assert conv.chosen["train"] in ("direct", "winograd")
    assert conv._cache_is_winograd == conv.uses_winograd


def test_kernel_choices_round_trip_and_fixed_layers_keep_theirs():
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, algorithm="direct"),
                        nn.Conv2d(3, 16, 3, padding=1), nn.Conv2dPoolReLU(16, 8, 3, padding=1))
    assert kernel_choices(net).tolist() == [[0, 0], [1, 1], [1, 1], [0, 0]]
    set_kernel_choices(net, [[2, 1], [2, 2], [2, 2], [1, 2]])
    assert kernel_choices(net).tolist() == [[2, 1], [1, 1], [1, 1], [1, 2]]
    assert net.layers[0].uses_winograd and not net.layers[3].uses_winograd


def test_rank_0s_choice_replaces_what_a_layer_measured_itself_in_both_passes():
    from mpidl.nn.conv import describe_kernel_choices
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(3, 16, 3))
    assert describe_kernel_choices(net) is None                     # nothing measured yet
    set_kernel_choices(net, [[1, 1], [1, 1], [1, 1]])               # both passes measured: im2col
    assert describe_kernel_choices(net) == "Winograd in 0 and the direct GEMMs in 2 of the 2 layers that measured both " \
                                           "on the first batch"
    set_kernel_choices(net, [[2, 2], [1, 2], [2, 2]])               # rank 0's outcome
    assert kernel_choices(net).tolist() == [[2, 2], [1, 2], [1, 1]]
    assert describe_kernel_choices(net).startswith("Winograd in 1 and the direct GEMMs in 1 of the 2 layers")


def test_a_resumed_run_keeps_the_kernels_its_first_batch_chose(tmp_path):
    args = ["--model", "resnet20", "--dataset", "digits", "--max-steps", "2", "--batch-size", "8",
            "--checkpoint-dir", str(tmp_path)]
    first = Trainer.from_config(parse_config(args), SerialComm())
    first.train()
    measured = kernel_choices(first.model.net)
    assert (measured > 0).all()      # training and the final evaluation measured every auto layer
    # A different outcome than the first run's, on every measured layer, then the checkpoint's.
    path = save_checkpoint(first, str(tmp_path))
    resumed = Trainer.from_config(parse_config(args), SerialComm())
    set_kernel_choices(resumed.model.net, np.where(measured > 0, 3 - measured, 0))
    restore_checkpoint(resumed, read_checkpoint(path))
    np.testing.assert_array_equal(kernel_choices(resumed.model.net), measured)


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


@pytest.mark.parametrize("flag, measured, winograd_layers", [("auto", 16, 0), ("direct", 0, 0), ("winograd", 0, 17)])
def test_the_flag_sets_every_convolution(flag, measured, winograd_layers):
    cfg = parse_config(["--model", "resnet20", "--dataset", "digits", "--max-steps", "1", "--batch-size", "8",
                        "--conv-algorithm", flag])
    trainer = Trainer.from_config(cfg, SerialComm())
    convs = [m for m in trainer.model.net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21
    assert sum(c.chosen["train"] is None for c in convs) == measured
    assert sum(c.uses_winograd for c in convs) == winograd_layers


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
        conv = nn.Conv2d(16, out_channels, 3, padding=1, bias=False, algorithm="winograd")
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
