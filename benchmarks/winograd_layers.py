"""Winograd F(2x2, 3x3) (mpidl.ops.winograd) against the im2col+GEMM convolution (mpidl.ops.conv)
on the 3x3 layers of mpidl's cnn and resnet20, one BLAS thread.

    python benchmarks/winograd_layers.py [--repeats 9] [--batches 64,100] [--only resnet20]

Per layer and pass: median milliseconds of each kernel (after warm-up; direct and Winograd
alternate within every repeat, so a change in machine load hits both), the speed-up, and
"effective GFLOP/s" = the direct convolution's FLOPs / time (2*N*Cout*Ho*Wo*Cin*9 per forward;
backward with dx = 2x forward, backward without dx = 1x), next to this run's single-thread
float32 GEMM rate (median of a 512x512x512 np.matmul). Inputs are laid out as in the network:
the first layer reads an NCHW batch, the second a channels-last activation; dy is channels-last.
"backward, no dx" is what the first layer runs in training (nothing needs its input gradient).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpidl.ops.conv import conv2d_backward, conv2d_forward  # noqa: E402
from mpidl.ops.scratch import Scratch  # noqa: E402
from mpidl.ops.winograd import winograd_conv2d_backward, winograd_conv2d_forward  # noqa: E402

# (name, C_in, C_out, H=W): cnn conv1 (1-channel 28x28 and 3-channel 32x32 inputs), conv2 after a 2x2 pool,
# and resnet20's stride-1 layers of its three stages on 28x28 input.
LAYERS = [("conv1 1->32 28x28", 1, 32, 28), ("conv1 3->32 32x32", 3, 32, 32),
          ("conv2 32->64 14x14", 32, 64, 14), ("conv2 32->64 16x16", 32, 64, 16),
          ("resnet20 16->16 28x28", 16, 16, 28), ("resnet20 32->32 14x14", 32, 32, 14),
          ("resnet20 64->64 7x7", 64, 64, 7)]


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def gemm_rate(repeats):
    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    b, out = a.copy(), np.empty_like(a)
    for _ in range(3):
        np.matmul(a, b, out=out)
    times = []
    for _ in range(max(repeats, 15)):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * 512 ** 3 / np.median(times) / 1e9


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_layer(N, C, F, H, repeats):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    if C >= 8:
        x = channels_last(x)
    W = (rng.standard_normal((F, C, 3, 3), dtype=np.float32) * 0.1)
    b = rng.standard_normal(F, dtype=np.float32)
    dy = channels_last(rng.standard_normal((N, F, H, H), dtype=np.float32))
    s_direct, s_wino = Scratch(), Scratch()
    state = {}

    def direct_fwd():
        state["d"] = conv2d_forward(x, W, b, 1, 1, 1, scratch=s_direct)

    def wino_fwd():
        state["w"] = winograd_conv2d_forward(x, W, b, 1, scratch=s_wino)

    def direct_bwd(need_dx=True):
        return conv2d_backward(dy, state["d"][1], need_dx, True, scratch=s_direct)

    def wino_bwd(need_dx=True):
        return winograd_conv2d_backward(dy, state["w"][1], need_dx, True, scratch=s_wino)

    # Warm-up (scratch arrays, BLAS buffers), and a check that both compute the same thing.
    for _ in range(2):
        direct_fwd(), wino_fwd()
        gd, gw = direct_bwd(), wino_bwd()
        direct_bwd(False), wino_bwd(False)
    scale = max(1.0, float(np.abs(state["d"][0]).max()))
    assert np.abs(state["w"][0] - state["d"][0]).max() <= 1e-4 * scale, "forward differs"
    for a, c in zip(gd, gw):
        assert np.abs(a - c).max() <= 1e-4 * max(1.0, float(np.abs(a).max())), "backward differs"
    t = {k: [] for k in ("df", "wf", "db", "wb", "dbn", "wbn")}
    for _ in range(repeats):
        t["df"].append(timed(direct_fwd))
        t["wf"].append(timed(wino_fwd))
        t["db"].append(timed(direct_bwd))
        t["wb"].append(timed(wino_bwd))
        t["dbn"].append(timed(lambda: direct_bwd(False)))
        t["wbn"].append(timed(lambda: wino_bwd(False)))
    t["ds"] = [f + g for f, g in zip(t["df"], t["db"])]
    t["ws"] = [f + g for f, g in zip(t["wf"], t["wb"])]
    t["dsn"] = [f + g for f, g in zip(t["df"], t["dbn"])]
    t["wsn"] = [f + g for f, g in zip(t["wf"], t["wbn"])]
    return {k: float(np.median(v)) for k, v in t.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batches", default="64,100")
    ap.add_argument("--only", default="", help="only the layers whose name contains this")
    args = ap.parse_args(argv)
    if args.repeats < 7:
        ap.error("--repeats: at least 7")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        load0 = os.getloadavg()[0]
        gemm = gemm_rate(args.repeats)
        print(f"one BLAS thread; float32 GEMM 512^3: {gemm:.1f} GFLOP/s; medians of {args.repeats} repeats; "
              f"load average {load0:.2f} at start")
        head = (f"{'layer':<20} {'N':>4} {'pass':<18} {'direct ms':>10} {'winograd ms':>12} {'speed-up':>9} "
                f"{'direct GF/s':>12} {'winograd GF/s':>14} {'GEMM GF/s':>10}")
        print(head)
        print("-" * len(head))
        verdicts = []
        for N in [int(v) for v in args.batches.split(",")]:
            for name, C, F, H in [layer for layer in LAYERS if args.only in layer[0]]:
                r = bench_layer(N, C, F, H, args.repeats)
                flops = 2 * N * F * H * H * C * 9
                passes = [("forward", "df", "wf", flops), ("backward", "db", "wb", 2 * flops),
                          ("fwd+bwd", "ds", "ws", 3 * flops)]
                if C < 8:
                    passes += [("backward, no dx", "dbn", "wbn", flops), ("fwd+bwd, no dx", "dsn", "wsn", 2 * flops)]
                for label, dk, wk, fl in passes:
                    print(f"{name:<20} {N:>4} {label:<18} {r[dk] * 1e3:>10.2f} {r[wk] * 1e3:>12.2f} "
                          f"{r[dk] / r[wk]:>8.2f}x {fl / r[dk] / 1e9:>12.1f} {fl / r[wk] / 1e9:>14.1f} {gemm:>10.1f}")
                key = ("dsn", "wsn") if C < 8 else ("ds", "ws")
                what = "fwd+bwd without dx (as trained)" if C < 8 else "fwd+bwd"
                faster = "Winograd" if r[key[1]] < r[key[0]] else "direct"
                wins = [label for label, dk, wk, _ in passes if r[wk] < r[dk]]
                verdicts.append(f"{name}, N={N}: {faster} is faster on {what} "
                                f"({r[key[0]] / r[key[1]]:.2f}x); Winograd wins: {', '.join(wins) or 'nothing'}")
        print()
        for v in verdicts:
            print(v)
        print(f"load average {os.getloadavg()[0]:.2f} at end (2 cores: above ~1 other programs shared the machine)")


if __name__ == "__main__":
    main()
