"""Your own data on N ranks equals one process: every file format, --normalize and block
shuffling give the single-process weights within 1e-10 (float64), with equal steps on
every rank."""

import os

import numpy as np
import pytest

from support import shared_tmpdir

from mpidl.cli import parse_config
from mpidl.parallel.comm import SerialComm, world
from mpidl.trainer import Trainer

REL_TOL = 1e-10


def _write_formats(folder):
    """The same 3-class problem as .npz, .npy folder, .csv, .h5 and a PNG folder."""
    rng = np.random.default_rng(11)
    n = 120
    images = rng.integers(0, 256, size=(n, 1, 6, 6), dtype=np.uint8)
    brightness = images[:, 0, :3].mean(axis=(1, 2))
    labels = np.digitize(brightness, np.quantile(brightness, [1 / 3, 2 / 3])).astype(np.int64)
    x = images.reshape(n, -1).astype(np.float32)
    np.savez(os.path.join(folder, "d.npz"), x_train=x[:96], y_train=labels[:96], x_val=x[96:], y_val=labels[96:])
    np.savez_compressed(os.path.join(folder, "c.npz"), x=x, y=labels)
    os.mkdir(os.path.join(folder, "npy"))
    np.save(os.path.join(folder, "npy", "x.npy"), x)
    np.save(os.path.join(folder, "npy", "y.npy"), labels)
    names = np.array(["dark", "grey", "light"])
    with open(os.path.join(folder, "d.csv"), "w") as f:
        f.write(",".join(f"p{i}" for i in range(36)) + ",shade\n")
        for row, t in zip(x, labels):
            f.write(",".join(str(int(v)) for v in row) + f",{names[t]}\n")
    os.mkdir(os.path.join(folder, "seq"))  # sequences (N, T, F): 6 time steps of 6 features
    np.save(os.path.join(folder, "seq", "x.npy"), x.reshape(n, 6, 6))
    np.save(os.path.join(folder, "seq", "y.npy"), labels)
    import h5py
    with h5py.File(os.path.join(folder, "d.h5"), "w") as h:
        h.create_dataset("x_train", data=x[:96], chunks=(8, 36), compression="gzip")
        h.create_dataset("y_train", data=labels[:96])
        h.create_dataset("x_val", data=x[96:])
        h.create_dataset("y_val", data=labels[96:])
    from PIL import Image
    for i, (img, t) in enumerate(zip(images, labels)):
        split = "train" if i < 96 else "val"
        d = os.path.join(folder, "img", split, str(names[t]))
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img[0]).save(os.path.join(d, f"{i:03d}.png"))


@pytest.fixture(scope="module")
def data_folder():
    comm = world()
    folder = shared_tmpdir(comm)
    if comm.rank == 0:
        _write_formats(folder)
    comm.barrier()
    return folder


CASES = {
    "npz": ["--dataset", "d.npz", "--normalize", "standard"],
    "compressed npz": ["--dataset", "c.npz", "--val-fraction", "0.2", "--normalize", "scale"],
    "npy folder": ["--dataset", "npy", "--val-fraction", "0.25", "--shuffle", "blocks"],
    "csv": ["--dataset", "d.csv", "--target", "shade", "--val-fraction", "0.2", "--normalize", "standard"],
    "hdf5": ["--dataset", "d.h5", "--normalize", "standard", "--shuffle", "blocks", "--shuffle-block", "5"],
    "images": ["--dataset", "img", "--normalize", "standard", "--model", "cnn"],
    "sequences gru": ["--dataset", "seq", "--val-fraction", "0.2", "--normalize", "standard", "--model", "gru"],
    "sequences transformer": ["--dataset", "seq", "--val-fraction", "0.2", "--model", "transformer"],
}


@pytest.mark.mpi
@pytest.mark.parametrize("case", list(CASES))
def test_every_format_on_n_ranks_equals_one_process(data_folder, case):
    comm = world()
    args = list(CASES[case])
    args[1] = os.path.join(data_folder, args[1])
    if "--model" not in args:
        args += ["--model", "mlp"]
    args += ["--dtype", "float64", "--batch-size", "24", "--max-steps", "12", "--progress", "none",
             "--cache-dir", os.path.join(data_folder, "cache"), "--optimizer", "adam", "--lr", "0.01"]
    cfg = parse_config(args)
    distributed = Trainer.from_config(cfg, comm)
    history = distributed.train()
    single = Trainer.from_config(parse_config(args), SerialComm())
    single.train()
    ref = single.store.data
    assert np.abs(distributed.store.data - ref).max() <= REL_TOL * np.abs(ref).max()
    assert distributed.global_step == 12 and history
    if "--normalize" in args:
        np.testing.assert_allclose(distributed.data.normalizer.shift, single.data.normalizer.shift, rtol=1e-12)
    assert distributed.data.num_classes == 3
