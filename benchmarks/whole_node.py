"""The whole node: mpidl with one rank per core against PyTorch's best on the same cores, at
the same global batch, side by side in one run.

    pip install torch==2.13.0          # CPU build; never a runtime dependency of mpidl
    python benchmarks/whole_node.py [--rounds 2] [--only cnn] [--quick]

Models (Fashion-MNIST, global batch 128, each with its recipe's optimiser): mlp 784-256-256-10
(Adam), cnn (conv 1->32->64, pooling, fc 3136->512->10; SGD with momentum), resnet20 (SGD with
momentum). On the C cores this process may use (2 here), four ways to train:

    mpidl    C ranks x 1 BLAS thread      (mpiexec -n C python -m mpidl.train --threads 1)
    mpidl    1 rank  x C BLAS threads     (the ranks x threads trade-off)
    mpidl    C ranks x 1 thread, --zero 1 (each rank updates 1/C of the parameters)
    PyTorch  1 process x C intra-op threads, no DDP (what one-node PyTorch users run)
    PyTorch  DDP, gloo, C processes x 1 thread

Every configuration starts fresh processes; the rounds alternate them so that a change of load
hits all alike, and the fastest round of each is kept. mpidl's figure is the trainer's own mean
step time (data, forward, backward, Allreduce, update: summary.json), PyTorch's the wall time of
its steps after warm-up (benchmarks/ddp_peer.py, same data and batches). Also measured in the
same run: the C cores' float32 GEMM rate (one process, C BLAS threads, 2048^3) and the mlp's
achieved fraction of it (multiply-adds of its three GEMMs per layer x 2 over the step time).
Writes benchmarks/results/whole_node.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HERE, child_env, cores, free_port, read_json, run_ranks, write_json  # noqa: E402

GLOBAL_BATCH = 128
MODELS = {  # name: (mpidl arguments, steps timed)
    "mlp": (["--model", "mlp", "--hidden", "256,256", "--dataset", "fashion-mnist"], 1000),
    "cnn": (["--model", "cnn", "--dataset", "fashion-mnist"], 60),
    "resnet20": (["--model", "resnet20", "--dataset", "fashion-mnist"], 30),
}
LABELS = {"mlp": "mlp 784-256-256-10", "cnn": "cnn 28x28", "resnet20": "resnet20 28x28"}

GEMM_CHILD = """
import time, numpy as np
from common import blas_kernel
a = np.ones((2048, 2048), np.float32); b = np.ones_like(a); c = np.empty_like(a)
np.matmul(a, b, out=c)
best = 1e9
for _ in range(5):
    t = time.perf_counter(); np.matmul(a, b, out=c); best = min(best, time.perf_counter() - t)
print(blas_kernel())
print(2 * 2048 ** 3 / best / 1e9)
"""


def threads_env(ranks: int, threads: int) -> dict:
    return child_env(ranks, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


def gemm_rate(threads: int) -> tuple[float, str]:
    """GFLOP/s and the BLAS kernel, in a child with the environment the runs get."""
    env = threads_env(1, threads)
    env["PYTHONPATH"] = os.pathsep.join((HERE, env["PYTHONPATH"]))
    out = subprocess.run([sys.executable, "-c", GEMM_CHILD], capture_output=True, text=True, check=True,
                         env=env, timeout=300)
    kernel, rate = out.stdout.strip().splitlines()[-2:]
    return float(rate), kernel


def mlp_flops_per_step(batch: int) -> float:
    weights = 784 * 256 + 256 * 256 + 256 * 10
    return 2 * 3 * weights * batch   # forward, input gradient and weight gradient GEMMs


STEPS_DIVISOR = 1   # --quick: a tenth of the steps (the suite's check that it runs, not a measurement)


def steps_of(model: str) -> int:
    return max(10, MODELS[model][1] // STEPS_DIVISOR)


def mpidl_run(model: str, ranks: int, threads: int, work: str, tag: str, extra=()) -> tuple[float, None]:
    """(samples/s from the trainer's own mean step time, None)."""
    args, steps = MODELS[model][0], steps_of(model)
    out = os.path.join(work, f"mpidl-{model}-{ranks}x{threads}-{'-'.join(extra)}-{tag}")
    run_ranks(ranks, ["-m", "mpidl.train", *args, "--batch-size", str(GLOBAL_BATCH), "--max-steps", str(steps),
                      "--threads", str(threads), "--progress", "none", "--out", out, *extra], timeout=1800,
              env=threads_env(ranks, threads))
    step_ms = read_json(os.path.join(out, "summary.json"))["timing"]["step_ms"]
    return GLOBAL_BATCH / (step_ms / 1e3), None


def torch_run(model: str, processes: int, threads: int, work: str, tag: str, extra=()) -> tuple[float, bool]:
    """(samples/s, whether the PyTorch network was checked to compute mpidl's forward)."""
    args, steps = MODELS[model][0], steps_of(model)
    path = os.path.join(work, f"torch-{model}-{processes}x{threads}-{tag}.json")
    run_ranks(processes, [os.path.join(HERE, "ddp_peer.py"), *args[:2], "--per-rank-batch",
                          str(GLOBAL_BATCH // processes), "--steps", str(steps), "--warmup", "5",
                          "--threads", str(threads), "--port", str(free_port()), "--out", path, *args[2:]],
              timeout=1800, env=threads_env(processes, threads))
    result = read_json(path)
    return result["samples_per_sec"], result["twin_verified"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="only the models whose name contains this")
    ap.add_argument("--quick", action="store_true", help="a tenth of the steps: checks that it runs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    global STEPS_DIVISOR
    STEPS_DIVISOR = 10 if args.quick else 1
    import torch
    C = cores()
    gemm, kernel = gemm_rate(C)
    print(f"{C} cores; float32 GEMM with {C} BLAS threads: {gemm:.0f} GFLOP/s; BLAS: {kernel}", flush=True)
    configs = {  # name: (runner, processes, threads, extra arguments)
        f"mpidl {C}x1": (mpidl_run, C, 1, ()), f"mpidl 1x{C}": (mpidl_run, 1, C, ()),
        f"mpidl {C}x1 zero-1": (mpidl_run, C, 1, ("--zero", "1")),
        f"pytorch 1x{C}": (torch_run, 1, C, ()), f"pytorch ddp {C}x1": (torch_run, C, 1, ())}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpidl-node-") as work:
        for model in [m for m in MODELS if args.only in m]:
            best = {name: 0.0 for name in configs}
            verified = set()
            for r in range(args.rounds):
                names = list(configs)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    runner, p, t, extra = configs[name]
                    rate, twin = runner(model, p, t, work, str(r), extra)
                    best[name] = max(best[name], rate)
                    if twin is not None:
                        verified.add(twin)
            ours_name = max((n for n in best if n.startswith("mpidl")), key=best.get)
            theirs_name = max((n for n in best if n.startswith("pytorch")), key=best.get)
            row = dict(model=model, label=LABELS[model], global_batch=GLOBAL_BATCH, samples_per_s=best,
                       mpidl_ranks_x_threads=best[f"mpidl {C}x1"] / best[f"mpidl 1x{C}"],
                       mpidl_best=ours_name, pytorch_best=theirs_name, ratio=best[ours_name] / best[theirs_name],
                       plain_ratio=best[f"mpidl {C}x1"] / best[theirs_name],
                       pytorch_twin_verified=verified == {True})   # resnet20: PyTorch's own init, not compared
            if model == "mlp":
                row["gemm_fraction"] = mlp_flops_per_step(GLOBAL_BATCH) * best[ours_name] / GLOBAL_BATCH / (gemm * 1e9)
            rows.append(row)
            print(f"{LABELS[model]:20s} " + "  ".join(f"{n} {v:7.0f}/s" for n, v in best.items())
                  + f"  -> {ours_name} / {theirs_name}: {row['ratio']:.2f}x"
                  + (f" ({100 * row['gemm_fraction']:.0f}% of the {C} cores' GEMM rate)" if model == "mlp" else ""),
                  flush=True)
    meta = dict(cores=C, gemm_gflops=gemm, blas=kernel, torch=torch.__version__, rounds=args.rounds,
                time=time.strftime("%Y-%m-%d %H:%M:%S"), load_average=os.getloadavg())
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "whole_node.json"), dict(meta=meta, results=rows))
    names = list(configs)
    with open(os.path.join(args.out, "whole_node.md"), "w") as f:
        f.write(f"# The whole node: {C} cores, global batch {GLOBAL_BATCH}, Fashion-MNIST\n\n"
                f"{meta['time']}, torch {meta['torch']}, {kernel}; float32 GEMM on {C} threads {gemm:.0f} GFLOP/s. "
                f"Samples/s, fastest of {args.rounds} alternating rounds; ratio = mpidl's fastest configuration "
                "over PyTorch's.\n\n"
                "| model | " + " | ".join(names) + " | ratio | mpidl ranks x threads |\n"
                "|---|" + "---:|" * (len(names) + 2) + "\n")
        for r in rows:
            f.write(f"| {r['label']} | " + " | ".join(f"{r['samples_per_s'][n]:.0f}" for n in names)
                    + f" | {r['ratio']:.2f}x | {C}x1 is {r['mpidl_ranks_x_threads']:.2f}x 1x{C} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
