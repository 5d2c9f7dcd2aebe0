"""Peak resident memory of one training process, evaluation included: mpidl against PyTorch 2.13
eager on the same model, data and batch, each in a fresh process, side by side in one run.

Models: cnn (conv 1->32->64, pooling, fc 3136->512->10) and resnet20, Fashion-MNIST 28x28,
training batch 64, SGD with momentum, 30 steps, then the 10,000 test images evaluated; one
thread. Each side's process loads Fashion-MNIST through mpidl.data (the same arrays, the same
cost), so the difference is the framework, the model and their working arrays. mpidl runs with
its defaults (--eval-batch-size and --winograd-keeps auto included), and again with
--winograd-keeps transform and input; PyTorch evaluates under no_grad in batches of 1000,
as a DataLoader loop would.

    python benchmarks/memory_vs_pytorch.py        # about a minute

Writes benchmarks/results/memory_vs_pytorch.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 30

MPIDL_CHILD = """
import resource, sys
from mpidl import allocator
from mpidl.cli import parse_config
from mpidl.parallel.comm import SerialComm
from mpidl.trainer import Trainer
from threadpoolctl import threadpool_limits
threadpool_limits(1)
cfg = parse_config(["--model", sys.argv[1], "--dataset", "fashion-mnist", "--batch-size", "64", "--max-steps", "%d",
                    "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--progress", "none", *sys.argv[2:]])
allocator.configure(cfg.allocator)   # as mpidl.world does
t = Trainer.from_config(cfg, SerialComm())
t.train()
loss, acc = t.evaluate()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, acc)
""" % STEPS

TORCH_CHILD = """
import resource, sys
sys.path.insert(0, %r)
import numpy as np, torch
from mpidl.data import load_dataset
from kernels_vs_pytorch import torch_model
torch.set_num_threads(1)
d = load_dataset("fashion-mnist")
net = torch_model(sys.argv[1], (1, 28, 28))
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
x_all, y_all = d.x_train, d.y_train
rng = np.random.default_rng(0)
for step in range(%d):
    idx = rng.integers(0, len(x_all), 64)
    x = torch.from_numpy(d.inputs(x_all[idx], np.float32))
    y = torch.from_numpy(np.asarray(y_all[idx], dtype=np.int64))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
net.eval()
correct = 0
with torch.no_grad():
    for i in range(0, len(d.x_val), 1000):
        x = torch.from_numpy(d.inputs(d.x_val[i:i + 1000], np.float32))
        correct += int((net(x).argmax(1).numpy() == d.y_val[i:i + 1000]).sum())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, correct / len(d.x_val))
""" % (HERE, STEPS)


def peak(code: str, model: str, *flags: str) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, model, *flags], capture_output=True, text=True, env=env,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    mb, acc = proc.stdout.split()[-2:]
    return float(mb), float(acc)


def main():
    rows = []
    for model in ("cnn", "resnet20"):
        ours, our_acc = peak(MPIDL_CHILD, model)
        fat, _ = peak(MPIDL_CHILD, model, "--winograd-keeps", "transform")
        lean, _ = peak(MPIDL_CHILD, model, "--winograd-keeps", "input")
        theirs, their_acc = peak(TORCH_CHILD, model)
        rows.append({"model": model, "mpidl_peak_mb": ours, "torch_peak_mb": theirs, "ratio": ours / theirs,
                     "mpidl_keeps_transform_peak_mb": fat, "keeps_transform_ratio": fat / theirs,
                     "mpidl_keeps_input_peak_mb": lean, "keeps_input_ratio": lean / theirs,
                     "mpidl_accuracy": our_acc, "torch_accuracy": their_acc})
        print(f"{model:9s} peak RSS mpidl {ours:7.0f} MB, PyTorch {theirs:7.0f} MB: {ours / theirs:.2f}x; "
              f"--winograd-keeps transform {fat:7.0f} MB: {fat / theirs:.2f}x, input {lean:7.0f} MB: "
              f"{lean / theirs:.2f}x (test accuracy after {STEPS} steps {our_acc:.3f} / {their_acc:.3f})", flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "memory_vs_pytorch.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
