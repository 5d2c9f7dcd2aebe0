"""Where one resnet20 training step spends its time, layer type by layer type: mpidl against
PyTorch eager on the same model and batch, one process, one BLAS thread, in one run.

    pip install torch==2.13.0          # CPU build; never a runtime dependency of mpidl
    python benchmarks/resnet_breakdown.py [--shape 3,32,32] [--batch 128] [--steps 4] [--rounds 3]

mpidl: each leaf layer's forward and backward timed inside the step (perf_counter around the
calls). PyTorch: torch.profiler's self CPU time of the operators that do the same work
(mkldnn_convolution and convolution_backward, native_batch_norm and its backward, relu and
threshold_backward). Both are grouped alike: convolutions by weight shape (C_in->C_out, k x k),
batch norm by channels. "The rest" is the instrumented step minus the listed groups:
residual adds, pooling, the dense layer, the loss, the SGD-momentum update, framework overhead
and the timers' own cost (the profiler's is larger: compare the instrumented step with the
plain one). The plain step times (last row) are measured without any timer, the two
frameworks alternating.
Ratio = PyTorch's time / mpidl's, as in kernels_vs_pytorch.py: above 1, mpidl is faster.
Each figure is the median over the rounds. Writes benchmarks/results/resnet_breakdown.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mpidl.models import build_model  # noqa: E402
from mpidl.nn import BatchNorm2d, Conv2d, ReLU  # noqa: E402
from mpidl.optim import SGD  # noqa: E402
from common import HERE, blas_kernel, write_json  # noqa: E402

LR, MOMENTUM = 0.01, 0.9


def conv_group(weight_shape) -> str:
    F, C, kh, kw = weight_shape
    return f"conv {C}->{F} {kh}x{kw}"


def mpidl_side(shape, batch, rng):
    """(plain step, instrumented step returning {(group, 'fwd'|'bwd'): seconds})."""
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    model = build_model("resnet20", shape, 10, {}, dtype=np.float32, seed=0)
    opt = SGD(model, momentum=MOMENTUM, lr=LR)
    model.store.zero_grad()
    times = collections.defaultdict(float)

    def step():
        model.loss_and_backward(x, y)
        opt.step(model.store.data, model.store.grad, zero_grad=True)
        model.store.mark_grads_zero()

    wrapped = []
    for m in model.net.modules():
        if isinstance(m, Conv2d):
            group = conv_group(m.W.shape)
        elif isinstance(m, BatchNorm2d):
            group = f"batch norm {m.num_features}"
        elif isinstance(m, ReLU):
            group = "ReLU"
        else:
            continue
        wrapped.append((m, group))

    def timed(fn, key):
        def call(*args):
            t = time.perf_counter()
            out = fn(*args)
            times[key] += time.perf_counter() - t
            return out
        return call

    def instrumented(steps):
        saved = [(m, m.forward, m.backward) for m, _ in wrapped]
        for m, group in wrapped:
            m.forward, m.backward = timed(m.forward, (group, "fwd")), timed(m.backward, (group, "bwd"))
        times.clear()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t) / steps
        for m, fwd, bwd in saved:
            m.forward, m.backward = fwd, bwd
        return total, {k: v / steps for k, v in times.items()}
    return step, instrumented


def torch_side(shape, batch, rng):
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch_models import torch_resnet20
    net = torch_resnet20(shape[0], 10)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    x = torch.from_numpy(rng.random((batch, *shape), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    def group_of(event):
        name, shapes = event.key, event.input_shapes
        if name == "aten::mkldnn_convolution":
            return conv_group(shapes[1]), "fwd"
        if name == "aten::convolution_backward":
            return conv_group(shapes[2]), "bwd"
        if name == "aten::native_batch_norm":
            return f"batch norm {shapes[0][1]}", "fwd"
        if name == "aten::native_batch_norm_backward":
            return f"batch norm {shapes[0][1]}", "bwd"
        if name in ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_"):
            return "ReLU", "fwd"
        if name == "aten::threshold_backward":
            return "ReLU", "bwd"
        return None

    def instrumented(steps):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                step()
            total = (time.perf_counter() - t) / steps
        times = collections.defaultdict(float)
        for event in prof.key_averages(group_by_input_shape=True):
            key = group_of(event)
            if key is not None:
                times[key] += event.self_cpu_time_total / 1e6 / steps
        return total, dict(times)
    return step, instrumented


def plain_time(step, steps) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def group_order(name: str):
    """Convolutions by (C_in, C_out, kernel), then batch norm by channels, then ReLU."""
    words = name.replace("->", " ").replace("x", " ").split()
    numbers = tuple(int(w) for w in words if w.isdigit())
    return (["conv", "batch", "ReLU"].index(words[0]), numbers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3,32,32", help="one sample's C,H,W")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    import torch
    torch.set_num_threads(1)
    threadpool_limits(1)
    rng = np.random.default_rng(0)
    sides = {"mpidl": mpidl_side(shape, args.batch, rng), "pytorch": torch_side(shape, args.batch, rng)}
    for step, _ in sides.values():   # warm-up: working arrays, first-touch pages, kernels picked
        for _ in range(2):
            step()
    plain = {name: [] for name in sides}
    groups = {name: collections.defaultdict(list) for name in sides}
    instrumented_totals = {name: [] for name in sides}
    for r in range(args.rounds):
        for name, (step, instrumented) in sides.items():
            plain[name].append(plain_time(step, args.steps))
            total, times = instrumented(args.steps)
            instrumented_totals[name].append(total)
            for key, seconds in times.items():
                groups[name][key].append(seconds)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {plain[n][-1] * 1e3:.0f} ms" for n in sides),
              flush=True)
    med = statistics.median
    names = sorted({g for side in groups.values() for g, _ in side}, key=group_order)
    rows = []
    for g in names:
        row = {"group": g}
        for side in sides:
            for pass_ in ("fwd", "bwd"):
                row[f"{side}_{pass_}_ms"] = med(groups[side].get((g, pass_), [0.0])) * 1e3
        rows.append(row)
    listed = {side: sum(r[f"{side}_fwd_ms"] + r[f"{side}_bwd_ms"] for r in rows) for side in sides}
    steps_ms = {side: med(plain[side]) * 1e3 for side in sides}
    timed_ms = {side: med(instrumented_totals[side]) * 1e3 for side in sides}
    rest = {side: timed_ms[side] - listed[side] for side in sides}
    meta = dict(shape=shape, batch=args.batch, steps=args.steps, rounds=args.rounds, blas=blas_kernel(),
                torch=torch.__version__, numpy=np.__version__, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "resnet_breakdown.json"),
               dict(meta=meta, groups=rows, rest_ms=rest, step_ms=steps_ms,
                    instrumented_step_ms=timed_ms))
    label = f"resnet20 {'x'.join(map(str, shape[1:]))}x{shape[0]}, batch {args.batch}"
    lines = [f"# Where a {label} step goes: mpidl vs PyTorch eager (1 thread)", "",
             f"{meta['date']}, numpy {np.__version__}, torch {torch.__version__}; {meta['blas']}. "
             f"Milliseconds per step, medians of {args.rounds} rounds of {args.steps} steps; "
             "ratio = PyTorch's time / mpidl's (above 1: mpidl faster). The rest: the instrumented "
             "step minus the listed layers (see the script's docstring).", "",
             "| layers | mpidl fwd | mpidl bwd | PyTorch fwd | PyTorch bwd | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ours, theirs = r["mpidl_fwd_ms"] + r["mpidl_bwd_ms"], r["pytorch_fwd_ms"] + r["pytorch_bwd_ms"]
        lines.append(f"| {r['group']} | {r['mpidl_fwd_ms']:.1f} | {r['mpidl_bwd_ms']:.1f} | {r['pytorch_fwd_ms']:.1f} "
                     f"| {r['pytorch_bwd_ms']:.1f} | {theirs / ours:.2f}x |" if theirs else
                     f"| {r['group']} | {r['mpidl_fwd_ms']:.1f} | {r['mpidl_bwd_ms']:.1f} | - | - | - |")
    lines.append(f"| the rest (adds, pooling, dense, loss, update, overhead, timers) | {rest['mpidl']:.1f} | | "
                 f"{rest['pytorch']:.1f} | | - |")
    lines.append(f"| whole step, instrumented | {timed_ms['mpidl']:.0f} | | {timed_ms['pytorch']:.0f} | | - |")
    lines.append(f"| **whole step, no timers** | **{steps_ms['mpidl']:.0f}** | | **{steps_ms['pytorch']:.0f}** | | "
                 f"**{steps_ms['pytorch'] / steps_ms['mpidl']:.2f}x** |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "resnet_breakdown.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
