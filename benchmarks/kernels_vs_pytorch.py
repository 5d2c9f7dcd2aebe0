"""Samples/s of one full training step (forward, loss, backward, SGD-momentum update),
mpidl's NumPy kernels against the same model in PyTorch eager, one process, one BLAS thread.

    pip install torch==2.13.0          # CPU build; never a runtime dependency of mpidl
    python benchmarks/kernels_vs_pytorch.py [--repeats 9] [--quick]

Both frameworks run in the same process, alternating timed blocks so that a busy machine
slows both alike; each figure is the median over the blocks. Also printed: the achieved
GFLOP/s (multiply-adds of the GEMMs in forward and backward, x2) against this machine's
single-thread float32 GEMM rate measured in the same run. Results go to
benchmarks/results/kernels_vs_pytorch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpidl.convnet import Conv2d  # noqa: E402
from mpidl.layers import Linear  # noqa: E402
from mpidl.models import Model  # noqa: E402
from mpidl.optim import SGD  # noqa: E402

CASES = [  # (label, model, sample shape, batch, mlp hidden sizes)
    ("mlp 784-64-64-10, batch 64", "mlp", (1, 28, 28), 64),
    ("mlp 784-64-64-10, batch 256", "mlp", (1, 28, 28), 256),
    ("cnn 28x28x1, batch 64", "cnn", (1, 28, 28), 64),
    ("cnn 32x32x3, batch 100", "cnn", (3, 32, 32), 100),
]
LR, MOMENTUM = 0.01, 0.9


def gemm_gflops(n=1024, repeats=7) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(times) / 1e9


def step_flops(model: Model, shape, batch) -> float:
    """2 x multiply-adds of every Linear/Conv GEMM: forward, weight gradient, input gradient
    (skipped for the first layer, as both frameworks do)."""
    x = np.zeros((1, *shape), dtype=np.float32)
    total = 0.0
    for layer in model.net.layers:
        y = layer.forward(x, train=False)
        if isinstance(layer, (Linear, Conv2d)):
            macs = y.size * int(np.prod(layer.W.shape[1:]))
            total += macs * (3 if layer.need_input_grad else 2)
        x = y
    return 2.0 * total * batch


def torch_model(name, shape, n_out=10):
    import torch.nn as nn
    C, H, W = shape
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(C * H * W, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, n_out))
    return nn.Sequential(nn.Conv2d(C, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * (H // 4) * (W // 4), 512), nn.ReLU(), nn.Linear(512, n_out))


def make_steps(name, shape, batch):
    import torch
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch)

    model = Model(name, shape, 10, {"hidden": (64, 64)})
    model.allocate(np.float32, 0)
    opt = SGD(model.store.data, momentum=MOMENTUM)

    def mpidl_step():
        model.store.zero_grad()
        model.train_step_grads(x, y)
        opt.step(model.store.data, model.store.grad, LR)

    net = torch_model(name, shape)
    topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss_fn(net(tx), ty).backward()
        topt.step()

    return model, mpidl_step, torch_step


def time_block(step, n) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per step."""
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9, help="timed blocks per framework (median taken)")
    ap.add_argument("--block-seconds", type=float, default=0.5, help="rough length of one timed block")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    threadpool_limits(1)
    gemm = gemm_gflops()
    print(f"single-thread float32 GEMM (1024^3, NumPy/OpenBLAS): {gemm:.1f} GFLOP/s")
    rows = []
    for label, name, shape, batch in CASES:
        model, mpidl_step, torch_step = make_steps(name, shape, batch)
        flops = step_flops(model, shape, batch)
        for step in (mpidl_step, torch_step):  # warm-up: first-touch allocations, caches
            for _ in range(5):
                step()
        probe = time_block(mpidl_step, 3)[0]
        n = max(3, int(args.block_seconds / probe))
        times = {"mpidl": [], "pytorch": []}
        cpu = {"mpidl": [], "pytorch": []}
        for r in range(args.repeats):  # alternate, and alternate who goes first
            order = (("mpidl", mpidl_step), ("pytorch", torch_step))
            for key, step in (order if r % 2 == 0 else order[::-1]):
                wall, used = time_block(step, n)
                times[key].append(wall)
                cpu[key].append(used)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        row = dict(case=label, batch=batch, steps_per_block=n, blocks=args.repeats,
                   mpidl_samples_per_s=batch / med["mpidl"], pytorch_samples_per_s=batch / med["pytorch"],
                   ratio=med["pytorch"] / med["mpidl"],
                   cpu_ratio=med_cpu["pytorch"] / med_cpu["mpidl"],
                   mpidl_cpu_samples_per_s=batch / med_cpu["mpidl"],
                   pytorch_cpu_samples_per_s=batch / med_cpu["pytorch"],
                   mpidl_spread=[batch / max(times["mpidl"]), batch / min(times["mpidl"])],
                   pytorch_spread=[batch / max(times["pytorch"]), batch / min(times["pytorch"])],
                   gflop_per_step=flops / 1e9,
                   mpidl_gflops=flops / med["mpidl"] / 1e9, pytorch_gflops=flops / med["pytorch"] / 1e9)
        rows.append(row)
        print(f"{label:30s} mpidl {row['mpidl_samples_per_s']:9.0f}/s  pytorch {row['pytorch_samples_per_s']:9.0f}/s"
              f"  ratio {row['ratio']:.2f}x (CPU time {row['cpu_ratio']:.2f}x)  GFLOP/s {row['mpidl_gflops']:5.1f} vs {row['pytorch_gflops']:5.1f}"
              f" ({100 * row['mpidl_gflops'] / gemm:.0f}% / {100 * row['pytorch_gflops'] / gemm:.0f}% of GEMM)",
              flush=True)

    meta = dict(numpy=np.__version__, torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), cpu_count=os.cpu_count(), load_average=os.getloadavg(),
                gemm_gflops_1thread=gemm, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels_vs_pytorch.json"), "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=2)
    with open(os.path.join(args.out, "kernels_vs_pytorch.md"), "w") as f:
        f.write(f"# One training step, mpidl vs PyTorch eager (1 thread)\n\n"
                f"numpy {meta['numpy']}, torch {meta['torch']}, {meta['time']}, load average "
                f"{meta['load_average'][0]:.1f}; single-thread float32 GEMM {gemm:.1f} GFLOP/s\n\n"
                "| case | mpidl samples/s | PyTorch samples/s | ratio | mpidl GFLOP/s | PyTorch GFLOP/s |\n"
                "|---|---:|---:|---:|---:|---:|\n")
        for r in rows:
            f.write(f"| {r['case']} | {r['mpidl_samples_per_s']:.0f} | {r['pytorch_samples_per_s']:.0f} | "
                    f"{r['ratio']:.2f}x | {r['mpidl_gflops']:.1f} | {r['pytorch_gflops']:.1f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
