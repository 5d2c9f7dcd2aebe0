"""The VAE end to end under mpiexec: the CLI prints and records both loss terms and rank 0
writes the PNG of inputs, reconstructions and samples."""

import json
import os

import pytest

from support import run_train


def test_vae_cli_on_two_ranks_writes_terms_and_png(tmp_path):
    plt_image = pytest.importorskip("matplotlib.image")
    out = tmp_path / "vae"
    proc = run_train(2, ["--model", "vae", "--epochs", "2", "--batch-size", "64", "--progress", "log",
                         "--out", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recon_bce" in proc.stdout and " kl " in proc.stdout
    epochs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(epochs) == 2 and epochs[1]["val_loss"] < epochs[0]["val_loss"]
    assert set(epochs[-1]["val_terms"]) == {"recon_bce", "kl"}
    summary = json.load(open(out / "summary.json"))
    assert summary["world_size"] == 2 and summary["val_accuracy"] is None
    image = plt_image.imread(os.fspath(out / "vae_samples.png"))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 500  # 3 rows x 10 columns
    assert image[..., :3].std() > 0.05  # not a blank canvas
