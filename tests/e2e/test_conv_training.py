"""End-to-end: the cnn trains data-parallel on a Fashion-MNIST subset under mpiexec.

The full documented run (all 60,000 images, >= 90% test accuracy) is in the README;
this is its fast version: 3,000 training images, 2 epochs, 2 ranks."""

import gzip
import json
import os

import numpy as np
import pytest

from mpidl.data.datasets import DEBIAN_FASHION_MNIST
from mpidl.data.idx import read_idx
from support import run_train

N_TRAIN, N_TEST = 3000, 1000


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion_subset(tmp_path_factory):
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fashion")
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte"
            write_idx(out / (name + ".gz"), read_idx(os.path.join(DEBIAN_FASHION_MNIST, name + ".gz"))[:n])
    return out


@pytest.mark.slow
def test_cnn_learns_fashion_mnist_subset_on_two_ranks(fashion_subset, tmp_path):
    proc = run_train(2, ["--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", str(fashion_subset),
                         "--epochs", "2", "--batch-size", "32", "--lr", "0.02", "--progress", "none",
                         "--out", str(tmp_path / "run")], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # chance is 10%; two epochs over 3,000 images reach about 75-80%
    assert summary["val_accuracy"] >= 0.70, summary
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
