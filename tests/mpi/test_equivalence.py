"""The core promise of data parallelism: N ranks on the same global batch end with the same
weights as one process. Checked in float64 so that only summation order differs."""

import numpy as np
import pytest

from mpidl.parallel.comm import SerialComm, world
from mpidl.cli import parse_config
from mpidl.trainer import Trainer

REL_TOL = 1e-10


def _train(args, comm):
    cfg = parse_config(args)
    t = Trainer.from_config(cfg, comm)
    t.train()
    return t.store.data.copy()


@pytest.mark.mpi
@pytest.mark.parametrize("args", [
    # 20 steps of Adam on the MLP, global batch 64 (divides by 1, 2 and 4)
    ["--model", "mlp", "--max-steps", "20", "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01"],
    # a batch that does not divide by 4 (uneven shares are weighted) and SGD with Nesterov
    ["--model", "mlp", "--max-steps", "20", "--batch-size", "30", "--optimizer", "sgd", "--lr", "0.1",
     "--momentum", "0.9", "--nesterov", "--weight-decay", "1e-4"],
    ["--model", "logreg", "--max-steps", "20", "--batch-size", "50", "--optimizer", "adamw",
     "--lr", "0.01", "--weight-decay", "0.01", "--schedule", "cosine", "--warmup-steps", "5"],
])
def test_n_ranks_equal_one_process(args):
    args = [*args, "--dtype", "float64", "--seed", "3"]
    comm = world()
    distributed = _train(args, comm)
    reference = _train(args, SerialComm())  # one process, same global batch
    scale = np.abs(reference).max()
    err = np.abs(distributed - reference).max() / scale
    assert err <= REL_TOL, f"{comm.size} ranks differ from 1 process by {err:.2e} (relative)"
    # and training really moved the weights
    cfg = parse_config(args)
    from mpidl.models import build_model
    m = build_model(cfg.model, (1, 8, 8), 10, {"hidden": cfg.hidden_sizes()}, dtype=np.float64, seed=cfg.seed)
    assert np.abs(m.store.data - reference).max() > 1e-3


@pytest.mark.mpi
@pytest.mark.parametrize("keeps", ["transform", "input"])
def test_n_ranks_equal_one_process_with_winograd_in_the_fused_cnn_layer(keeps):
    """The cnn's second layer (32->64, 4x4 input on the 8x8 digits) runs Winograd fused with
    pooling; keeping its input instead of the transform gives the same weights too."""
    args = ["--model", "cnn", "--dataset", "digits", "--max-steps", "6", "--batch-size", "16", "--optimizer", "sgd",
            "--lr", "0.05", "--momentum", "0.9", "--conv-algorithm", "winograd", "--winograd-keeps", keeps, "--dtype", "float64", "--seed", "3"]
    trainers = []
    for comm in (world(), SerialComm()):
        t = Trainer.from_config(parse_config(args), comm)
        t.train()
        trainers.append(t)
    conv2 = trainers[0].model.net.layers[1]
    assert type(conv2).__name__ == "Conv2dPoolReLU" and conv2._cache_is_winograd
    distributed, reference = (t.store.data for t in trainers)
    err = np.abs(distributed - reference).max() / np.abs(reference).max()
    assert err <= REL_TOL, f"{world().size} ranks differ from 1 process by {err:.2e} (relative)"


@pytest.mark.mpi
def test_every_rank_takes_rank_0s_measured_kernels_after_the_first_step(monkeypatch):
    """Each rank measures its convolutions on its first batch and then runs rank 0's choice:
    here rank 0 finds im2col slow and every other rank finds Winograd slow, and all end on
    Winograd for training. The weights still equal one process's on im2col (float64)."""
    import time
    from mpidl import nn
    from mpidl.nn import conv as conv_layers

    def slowed(kernel):
        def slow(*args, **kwargs):
            time.sleep(0.01)
            return kernel(*args, **kwargs)
        return slow

    comm = world()
    if comm.rank == 0:
        monkeypatch.setattr(nn.Conv2dPoolReLU, "_forward", staticmethod(slowed(conv_layers.conv2d_pool_relu_forward)))
    else:
        monkeypatch.setattr(conv_layers, "winograd_conv2d_pool_relu_forward",
                            slowed(conv_layers.winograd_conv2d_pool_relu_forward))
    # The cnn: its second layer (32->64, fused with pooling) is measured, the first (1 channel) is not.
    args = ["--model", "cnn", "--dataset", "digits", "--max-steps", "4", "--batch-size", "16",
            "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--dtype", "float64", "--seed", "3"]
    trainer = Trainer.from_config(parse_config(args), comm)
    trainer.train()
    conv1, conv2 = trainer.model.net.layers[:2]
    assert conv1.chosen["train"] == "direct" and conv2.chosen["train"] == "winograd"
    monkeypatch.undo()
    reference = Trainer.from_config(parse_config([*args, "--conv-algorithm", "direct"]), SerialComm())
    reference.train()
    err = np.abs(trainer.store.data - reference.store.data).max() / np.abs(reference.store.data).max()
    assert err <= REL_TOL, f"{comm.size} ranks differ from 1 process by {err:.2e} (relative)"
