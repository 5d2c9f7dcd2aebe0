"""--model resnet20 from the command line on 2 ranks, fast version: a 3,000-image
Fashion-MNIST subset for 2 epochs learns (the documented full run reaches 92%)."""

import json
import re

import numpy as np

from support import run_train


def test_resnet20_learns_on_two_ranks(tmp_path):
    from mpidl.data import load_dataset
    fm = load_dataset("fashion-mnist")
    np.savez(tmp_path / "subset.npz", x_train=np.asarray(fm.x_train[:3000]), y_train=np.asarray(fm.y_train[:3000]),
             x_test=np.asarray(fm.x_val[:500]), y_test=np.asarray(fm.y_val[:500]))
    run = tmp_path / "run"
    proc = run_train(2, ["--model", "resnet20", "--dataset", str(tmp_path / "subset.npz"), "--normalize", "scale",
                         "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--warmup-steps", "10",
                         "--out", str(run), "--progress", "log"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_accuracy"] >= 0.7, summary["val_accuracy"]
    assert summary["steps"] == 2 * (3000 // 64)
    # The 16 3x3 stride-1 layers from 16 channels up measured Winograd against im2col on step 1.
    told = re.search(r"convolutions: Winograd in (\d+) and the direct GEMMs in (\d+) of the 16 layers", proc.stdout)
    assert told and int(told[1]) + int(told[2]) == 16, proc.stdout[-2000:]
