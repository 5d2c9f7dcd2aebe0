"""Samples/s of one full training step (forward, loss, backward, SGD-momentum update),
mpidl's NumPy kernels against the same model in PyTorch eager, one process, one BLAS thread.

    pip install torch==2.13.0          # CPU build; never a runtime dependency of mpidl
    python benchmarks/kernels_vs_pytorch.py [--repeats 9] [--quick]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/kernels_vs_pytorch.py   # numpy's own kernel

The BLAS kernel that ran (threadpoolctl) is printed and saved with the figures.

Both frameworks run in the same process, alternating timed blocks so that a busy machine
slows both alike; each figure is the median over the blocks. They share the process's malloc
setting too (--allocator, default keep: what mpidl.world sets), so the ratio is the kernels'.
Also printed: the achieved
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpidl import allocator  # noqa: E402
from mpidl.nn import Conv2d, Conv2dPoolReLU  # noqa: E402
from mpidl.nn import Linear  # noqa: E402
from mpidl.models import Model, build_model  # noqa: E402
from mpidl.optim import SGD  # noqa: E402
from common import blas_kernel  # noqa: E402

CASES = [  # (label, model, sample shape, batch)
    ("mlp 784-64-64-10, batch 64", "mlp", (1, 28, 28), 64),
    ("mlp 784-64-64-10, batch 256", "mlp", (1, 28, 28), 256),
    ("mlp 784-256-256-10, batch 256", "mlp", (1, 28, 28), 256),
    ("cnn 28x28x1, batch 64", "cnn", (1, 28, 28), 64),
    ("cnn 32x32x3, batch 100", "cnn", (3, 32, 32), 100),
    ("resnet20 28x28x1, batch 64", "resnet20", (1, 28, 28), 64),
    ("resnet20 32x32x3, batch 128", "resnet20", (3, 32, 32), 128),
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
    """2 x multiply-adds of every Linear/Conv GEMM, wherever it sits in the network: forward,
    weight gradient, input gradient (skipped for the first layer, as both frameworks do)."""
    total = 0.0
    layers = [m for m in model.net.modules() if isinstance(m, (Linear, Conv2d))]
    for layer in layers:  # count each layer's outputs during one forward pass
        def counting(x, train=False, layer=layer, forward=layer.forward):
            nonlocal total
            y = forward(x, train)
            # The fused block computes the convolution at four times its pooled output size.
            outputs = y.size * (4 if isinstance(layer, Conv2dPoolReLU) else 1)
            total += outputs * int(np.prod(layer.W.shape[1:])) * (3 if layer.need_input_grad else 2)
            return y
        layer.forward = counting
    try:
        model.net.forward(np.zeros((1, *shape), dtype=np.float32), False)
    finally:
        for layer in layers:
            del layer.forward
    return 2.0 * total * batch


def hidden_of(label) -> tuple:
    """The mlp's hidden sizes from its label ("mlp 784-256-256-10"): (256, 256)."""
    sizes = label.split()[1].split("-") if label.startswith("mlp") else ["", "64", "64", ""]
    return tuple(int(h) for h in sizes[1:-1])


def torch_model(name, shape, n_out=10, pool_first=False, hidden=(64, 64)):
    """The same network in PyTorch. pool_first: max-pool before ReLU (the same function; mpidl
    fuses conv, pool and ReLU into one pass); PyTorch is timed both ways and the faster counts."""
    import torch.nn as nn
    C, H, W = shape
    if name == "resnet20":
        from torch_models import torch_resnet20
        return torch_resnet20(C, n_out)
    if name == "mlp":
        sizes, layers = (C * H * W, *hidden), [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], n_out))

    def block(cin, cout):
        conv, act, pool = nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        return [conv, pool, act] if pool_first else [conv, act, pool]

    return nn.Sequential(*block(C, 32), *block(32, 64), nn.Flatten(),
                         nn.Linear(64 * (H // 4) * (W // 4), 512), nn.ReLU(), nn.Linear(512, n_out))


def make_steps(name, shape, batch, hidden=(64, 64)):
    import torch
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch)

    def mpidl_stepper(algorithm):
        model = build_model(name, shape, 10, {"hidden": hidden}, dtype=np.float32, seed=0)
        for m in model.net.modules():
            if isinstance(m, Conv2d):
                m.algorithm = algorithm
        opt = SGD(model, momentum=MOMENTUM, lr=LR)
        model.store.zero_grad()

        def mpidl_step():  # the kernels as the trainer runs them: the update leaves the gradients zeroed
            model.loss_and_backward(x, y)
            opt.step(model.store.data, model.store.grad, zero_grad=True)
            model.store.mark_grads_zero()
        return model, mpidl_step

    model, mpidl_step = mpidl_stepper("auto")
    mpidl_steps = {"mpidl": mpidl_step}
    if any(isinstance(m, Conv2d) for m in model.net.modules()):   # the same model without Winograd
        mpidl_steps["mpidl_direct"] = mpidl_stepper("direct")[1]

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def torch_stepper(pool_first):
        net = torch_model(name, shape, pool_first=pool_first, hidden=hidden)
        topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

        def torch_step():
            topt.zero_grad(set_to_none=True)
            loss_fn(net(tx), ty).backward()
            topt.step()
        return torch_step

    torch_steps = {"pytorch": torch_stepper(False)}
    if name == "cnn":
        torch_steps["pytorch_pool_first"] = torch_stepper(True)
    return model, mpidl_steps, torch_steps


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
    ap.add_argument("--only", default="", help="run only the cases whose label contains this text")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--allocator", default="keep", choices=allocator.CHOICES,
                    help="malloc setting of the process, which PyTorch shares here (mpidl.allocator; "
                         "keep: as mpidl.world sets it)")
    args = ap.parse_args(argv)
    allocator.configure(args.allocator)

    import torch
    torch.set_num_threads(1)
    threadpool_limits(1)
    gemm = gemm_gflops()
    print(f"single-thread float32 GEMM (1024^3, NumPy/OpenBLAS): {gemm:.1f} GFLOP/s; BLAS: {blas_kernel()}")
    rows = []
    for label, name, shape, batch in [c for c in CASES if args.only in c[0]]:
        model, mpidl_steps, torch_steps = make_steps(name, shape, batch, hidden_of(label))
        mpidl_step = mpidl_steps["mpidl"]
        steps = {**mpidl_steps, **torch_steps}
        flops = step_flops(model, shape, batch)
        for step in steps.values():  # warm-up: first-touch allocations, caches
            for _ in range(5):
                step()
        probe = time_block(mpidl_step, 3)[0]
        n = max(3, int(args.block_seconds / probe))
        wall = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        order = list(steps.items())
        for r in range(args.repeats):  # interleave, rotating who goes first
            for key, step in order[r % len(order):] + order[:r % len(order)]:
                w, c = time_block(step, n)
                wall[key].append(w)
                cpu[key].append(c)
        med = {k: statistics.median(v) for k, v in wall.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        best = min(torch_steps, key=lambda k: med[k])  # the faster PyTorch variant
        row = dict(case=label, batch=batch, steps_per_block=n, blocks=args.repeats, pytorch_variant=best,
                   mpidl_samples_per_s=batch / med["mpidl"], pytorch_samples_per_s=batch / med[best],
                   ratio=med[best] / med["mpidl"],
                   cpu_ratio=med_cpu[best] / med_cpu["mpidl"],
                   mpidl_cpu_samples_per_s=batch / med_cpu["mpidl"],
                   pytorch_cpu_samples_per_s=batch / med_cpu[best],
                   all_samples_per_s={k: batch / v for k, v in med.items()},
                   mpidl_spread=[batch / max(wall["mpidl"]), batch / min(wall["mpidl"])],
                   pytorch_spread=[batch / max(wall[best]), batch / min(wall[best])],
                   gflop_per_step=flops / 1e9,
                   mpidl_gflops=flops / med["mpidl"] / 1e9, pytorch_gflops=flops / med[best] / 1e9)
        if "mpidl_direct" in med:   # how much Winograd gave: the same model on im2col alone
            row.update(direct_ratio=med[best] / med["mpidl_direct"], winograd_speedup=med["mpidl_direct"] / med["mpidl"])
        rows.append(row)
        print(f"{label:30s} mpidl {row['mpidl_samples_per_s']:9.0f}/s  pytorch {row['pytorch_samples_per_s']:9.0f}/s"
              f"  ratio {row['ratio']:.2f}x (CPU time {row['cpu_ratio']:.2f}x)  GFLOP/s {row['mpidl_gflops']:5.1f} vs {row['pytorch_gflops']:5.1f}"
              f" ({100 * row['mpidl_gflops'] / gemm:.0f}% / {100 * row['pytorch_gflops'] / gemm:.0f}% of GEMM)"
              + (f"  im2col only: {row['direct_ratio']:.2f}x" if "direct_ratio" in row else ""), flush=True)

    meta = dict(numpy=np.__version__, torch=torch.__version__, python=platform.python_version(),
                machine=platform.machine(), cpu_count=os.cpu_count(), load_average=os.getloadavg(),
                gemm_gflops_1thread=gemm, blas=blas_kernel(), allocator=args.allocator, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels_vs_pytorch.json"), "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=2)
    with open(os.path.join(args.out, "kernels_vs_pytorch.md"), "w") as f:
        f.write(f"# One training step, mpidl vs PyTorch eager (1 thread)\n\n"
                f"numpy {meta['numpy']}, torch {meta['torch']}, {meta['time']}, load average "
                f"{meta['load_average'][0]:.1f}; single-thread float32 GEMM {gemm:.1f} GFLOP/s; BLAS {meta['blas']}; "
                f"malloc: {args.allocator} (both frameworks, one process)\n\n"
                "Medians over interleaved blocks; ratio = mpidl / PyTorch throughput (wall clock, and by "
                "process CPU time, which a busy machine disturbs less). PyTorch: the faster of the two "
                "layer orders.\n\n"
                "GFLOP/s: the direct convolution's multiply-adds x2 over the time (Winograd does fewer, so "
                "it can pass the GEMM rate). 'im2col only': the ratio with every convolution on im2col "
                "(--conv-algorithm direct), timed in the same blocks.\n\n"
                "| case | mpidl samples/s | PyTorch samples/s | ratio | ratio (CPU time) | im2col only | mpidl GFLOP/s "
                "| PyTorch GFLOP/s |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in rows:
            direct = f"{r['direct_ratio']:.2f}x" if "direct_ratio" in r else "-"
            f.write(f"| {r['case']} | {r['mpidl_samples_per_s']:.0f} | {r['pytorch_samples_per_s']:.0f} | "
                    f"{r['ratio']:.2f}x | {r['cpu_ratio']:.2f}x | {direct} | {r['mpidl_gflops']:.1f} | "
                    f"{r['pytorch_gflops']:.1f} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
