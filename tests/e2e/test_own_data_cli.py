"""Your own data from the command line, as a user would: each format made from Fashion-MNIST
trains on 2 ranks, mpidl.predict reproduces the reported accuracy exactly, bad data is one
line and exit 2 with nothing written, and step records, plots and timelines land in the run."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from support import REPO, child_env, run_train

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]
N_TRAIN, N_VAL = 3000, 600


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """A Fashion-MNIST subset in every format --dataset reads."""
    from mpidl.data import load_dataset
    full = load_dataset("fashion-mnist")
    x, y = np.asarray(full.x_train[:N_TRAIN, 0]), np.asarray(full.y_train[:N_TRAIN])
    xv, yv = np.asarray(full.x_val[:N_VAL, 0]), np.asarray(full.y_val[:N_VAL])
    root = tmp_path_factory.mktemp("fashion")
    np.savez(root / "fashion.npz", x_train=x[:, None], y_train=y, x_test=xv[:, None], y_test=yv)
    (root / "npy").mkdir()
    np.save(root / "npy" / "x.npy", np.concatenate([x, xv]).reshape(-1, 784))
    np.save(root / "npy" / "y.npy", np.concatenate([y, yv]))
    with open(root / "fashion.csv", "w") as f:
        f.write(",".join(f"px{i}" for i in range(784)) + ",item\n")
        for row, label in zip(np.concatenate([x, xv]).reshape(-1, 784), np.concatenate([y, yv])):
            f.write(",".join(map(str, row)) + f",{CLASSES[label]}\n")
    import h5py
    with h5py.File(root / "fashion.h5", "w") as h:
        h.create_dataset("images/train", data=x[:, None], chunks=(64, 1, 28, 28), compression="gzip")
        h.create_dataset("labels/train", data=y)
    from PIL import Image
    for split, images, labels in (("train", x, y), ("val", xv, yv)):
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = root / "images" / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return root


FORMATS = {
    "npz": (["--dataset", "fashion.npz", "--model", "mlp", "--normalize", "scale"], "fashion.npz", 0.75),
    "npy folder": (["--dataset", "npy", "--val-fraction", "0.2", "--normalize", "standard"], "npy", 0.75),
    "csv": (["--dataset", "fashion.csv", "--target", "item", "--val-fraction", "0.2", "--normalize", "scale"],
            "fashion.csv", 0.75),
    "hdf5": (["--dataset", "fashion.h5", "--x-key", "images/train", "--y-key", "labels/train",
              "--val-fraction", "0.2", "--normalize", "standard", "--shuffle", "blocks"], "fashion.h5", 0.7),
    "images": (["--dataset", "images", "--model", "cnn", "--normalize", "standard", "--lr", "1e-3"], "images", 0.7),
}


def _predict(run, data, cwd, *extra):
    return subprocess.run([sys.executable, "-m", "mpidl.predict", str(run), str(data), *extra], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=child_env())


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_trains_on_two_ranks_and_predictions_reproduce_the_accuracy(fashion, tmp_path, fmt):
    args, data, floor = FORMATS[fmt]
    args = [a if a != data else str(fashion / data) for a in args]
    run = tmp_path / "run"
    proc = run_train(2, [*args, "--epochs", "2", "--batch-size", "64", "--out", str(run), "--progress", "log",
                         "--cache-dir", str(tmp_path / "cache")], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_accuracy"] >= floor, summary["val_accuracy"]
    model = json.loads((run / "model.json").read_text())
    if fmt in ("csv", "images"):
        assert model["class_names"] == sorted(CLASSES)
    out = tmp_path / "predictions.csv"
    pred = _predict(run, fashion / data, tmp_path, "--out", str(out))
    assert pred.returncode == 0, pred.stderr
    right, total = map(int, re.search(r"accuracy [0-9.]+ \((\d+) of (\d+)\)", pred.stdout).groups())
    assert right / total == summary["val_accuracy"]  # exactly: the same inputs, prepared the same way
    rows = out.read_text().splitlines()
    assert rows[0] == "row,prediction,target" and len(rows) == total + 1
    if fmt == "csv":
        assert rows[1].split(",")[1] in CLASSES
    if fmt == "images":  # unlabelled images: a folder of them, predicted by file name
        import shutil
        loose = tmp_path / "loose"
        loose.mkdir()
        bags = sorted((fashion / "images" / "val" / "Bag").iterdir())[:4]
        for f in bags:
            shutil.copy(f, loose / f.name)
        pred = _predict(run, loose, tmp_path, "--out", str(out))
        assert pred.returncode == 0, pred.stderr
        lines = out.read_text().splitlines()
        assert lines[0] == "row,file,prediction" and [l.split(",")[1] for l in lines[1:]] == [f.name for f in bags]
        assert sum(l.split(",")[2] == "Bag" for l in lines[1:]) >= 2
        wrong = _predict(run, fashion / "npy", tmp_path, "--out", str(tmp_path / "no.csv"))
        assert wrong.returncode == 2 and "samples have shape (784,), the run trained on (1, 28, 28)" in wrong.stderr
        assert not (tmp_path / "no.csv").exists()


def test_mpidl_load_predicts_raw_samples_with_the_training_preprocessing(fashion, tmp_path):
    import mpidl
    run = tmp_path / "run"
    proc = run_train(2, ["--dataset", str(fashion / "fashion.npz"), "--normalize", "standard", "--epochs", "1",
                         "--out", str(run), "--cache-dir", str(tmp_path / "cache")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(fashion / "fashion.npz") as z:
        raw, labels = z["x_test"], z["y_test"]
    predicted = mpidl.load(str(run)).predict(raw)
    summary = json.loads((run / "summary.json").read_text())
    assert np.mean(predicted == labels) == summary["val_accuracy"]
    assert json.loads((run / "model.json").read_text())["normalize"]["kind"] == "standard"


def _bad_files(root):
    cases = {}
    (root / "ragged.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,6\n")
    cases["ragged"] = (["--dataset", "ragged.csv"], "ragged.csv: line 4 has 2 fields but the header has 3")
    (root / "words.csv").write_text("a,b,y\n1,2,0\n3,four,1\n5,6,1\n")
    cases["non-numeric"] = (["--dataset", "words.csv"], "words.csv: line 3, column 'b': 'four' is not a number")
    (root / "notarget.csv").write_text("a,b,c\n1,2,0\n3,4,1\n")
    cases["no target"] = (["--dataset", "notarget.csv", "--target", "label"], "notarget.csv: no column 'label'")
    (root / "nan.csv").write_text("a,b,y\n1,2,0\n3,nan,1\n5,6,1\n")
    cases["nan"] = (["--dataset", "nan.csv"], "nan.csv: line 3, column 'b': NaN or infinite")
    (root / "obj").mkdir()
    np.save(root / "obj" / "x.npy", np.array([[1], [2]], dtype=object), allow_pickle=True)
    np.save(root / "obj" / "y.npy", np.array([0, 1]))
    cases["object array"] = (["--dataset", "obj"], "x.npy: holds Python objects")
    import h5py
    with h5py.File(root / "keys.h5", "w") as h:
        h["x"] = np.zeros((8, 2))
        h["y"] = np.zeros(8, dtype=int)
    cases["hdf5 key"] = (["--dataset", "keys.h5", "--x-key", "inputs"], "keys.h5")
    from PIL import Image
    for i, size in enumerate([(6, 6), (6, 6), (8, 6)]):
        folder = root / "mixed" / "train" / ("ab"[i % 2])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(size[::-1], dtype=np.uint8)).save(folder / f"{i}.png")
    cases["mixed sizes"] = (["--dataset", "mixed"], "--image-size")
    np.savez(root / "floats.npz", x=np.zeros((8, 2)), y=np.linspace(0, 1, 8))
    cases["non-integer labels"] = (["--dataset", "floats.npz", "--task", "classification"], "is not an integer")
    np.savez(root / "tiny.npz", x=np.zeros((1, 2)), y=np.zeros(1, dtype=int))
    cases["fewer samples than ranks"] = (["--dataset", "tiny.npz", "--task", "regression", "--model", "linreg"],
                                         "1 training samples are fewer than the 2 ranks")
    np.savez(root / "shapes.npz", x_train=np.zeros((8, 3)), y_train=np.arange(8) % 2,
             x_val=np.zeros((4, 2)), y_val=np.arange(4) % 2)
    cases["train/val shapes"] = (["--dataset", "shapes.npz"], "training samples have shape (3,) but val samples (2,)")
    return cases


def test_bad_data_is_one_line_exit_2_and_nothing_written(tmp_path):
    cases = _bad_files(tmp_path)
    for name, (args, message) in cases.items():
        args = [str(tmp_path / a) if i == 1 else a for i, a in enumerate(args)]
        run, cache = tmp_path / f"run-{name}", tmp_path / f"cache-{name}"
        proc = run_train(2, [*args, "--epochs", "1", "--batch-size", "2", "--out", str(run),
                             "--cache-dir", str(cache)])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("mpidl: error")]
        assert proc.returncode == 2, (name, proc.stderr[-1500:])
        assert len(errors) == 1 and message in errors[0], (name, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr, name
        assert not run.exists(), name
        assert not cache.exists() or not [e for e in os.listdir(cache) if not e.startswith(".")], name


def test_step_records_plot_and_timeline_land_in_the_run_folder(tmp_path):
    run = tmp_path / "run"
    proc = run_train(2, ["--model", "mlp", "--epochs", "2", "--log-every", "5", "--out", str(run),
                         "--timeline", "trace.json", "--timeline-steps", "10"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and [r["step"] for r in steps] == list(range(5, 45, 5))
    assert all(r["train_loss"] > 0 and r["lr"] > 0 and r["samples_per_sec"] > 0 for r in steps)
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    assert json.loads((run / "trace.json").read_text())["traceEvents"]
    png = tmp_path / "curves.png"
    plot = subprocess.run([sys.executable, "-m", "mpidl.plot", str(run), "-o", str(png)], capture_output=True,
                          text=True, cwd=REPO, env=child_env(), timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
