"""Model parallelism on this machine: every grid of 2 and 4 ranks against plain data
parallelism, side by side in one run.

For each model and grid (T tensor x S pipeline x D data): the median step time, each rank's
bytes of parameters, gradients and Adam state and its peak private memory, and the bytes per
step each scheme moved (tensor group Allreduces, pipeline sends, gradient Allreduce) beside
the formula's prediction. Models, as the README names them:

- mlp 784-256-256-10 on Fashion-MNIST, global batch 128, Adam;
- the built-in transformer (2 blocks, dim 64, 4 heads) on the 8x8 digits, global batch 64;
- a wide mlp 784-4096-4096-4096-4096-10 (53.6 M parameters: 858 MB of float32 weights,
  gradients and Adam state per data-parallel rank) on Fashion-MNIST, global batch 64, whose
  state exceeds a 300 MiB per-rank budget unless it is split.

    python benchmarks/model_parallel.py            # about 2 minutes on 2 cores
    python benchmarks/model_parallel.py --quick    # the first model only

Writes benchmarks/results/model_parallel.json and model_parallel.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BUDGET_MIB = 300

MODELS = {
    "mlp 784-256-256-10": ["--model", "mlp", "--hidden", "256,256", "--dataset", "fashion-mnist",
                           "--batch-size", "128", "--optimizer", "adam", "--lr", "1e-3"],
    "transformer": ["--model", "transformer", "--batch-size", "64", "--optimizer", "adam", "--lr", "1e-3"],
    "wide mlp 784-4x4096-10": ["--model", "mlp", "--hidden", "4096,4096,4096,4096", "--dataset", "fashion-mnist",
                               "--batch-size", "64", "--optimizer", "adam", "--lr", "1e-4"],
}
GRIDS = {  # ranks -> (T, S) grids; (1, 1) is plain data parallelism
    2: [(1, 1), (2, 1), (1, 2)],
    4: [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4)],
}
STEPS = {"wide mlp 784-4x4096-10": (8, 2)}  # (steps, warm-up) where a step takes seconds


def run(ranks, T, S, flags, steps, warmup):
    cmd = ["mpiexec", "-n", str(ranks), sys.executable, os.path.join(HERE, "_model_parallel_child.py"),
           "--tensor", str(T), "--pipeline", str(S), "--steps", str(steps), "--warmup", str(warmup), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=HERE)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def summarise(name, ranks, result):
    rs = result["ranks"]
    state = max(r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"] for r in rs) / 2 ** 20

    def per_step(key):
        return max(r[key] for r in rs)

    return {
        "model": name, "ranks": ranks, "T": result["tensor"], "S": result["pipeline"], "D": result["data"],
        "step_ms": max(r["step_ms"] for r in rs),
        "state_mib_per_rank": state, "peak_rss_mib": max(r["peak_rss_anon_mb"] for r in rs),
        "tensor_bytes": per_step("tensor_bytes_per_step"), "tensor_formula": per_step("tensor_bytes_formula"),
        "pipeline_bytes": per_step("pipeline_bytes_per_step"), "pipeline_formula": per_step("pipeline_bytes_formula"),
        "gradient_bytes": per_step("gradient_bytes_per_step"),
        "gradient_formula": per_step("gradient_bytes_formula"),
        "whole_params": result["whole_params"], "val_loss": result["val_loss"],
    }


def table(rows):
    out = ["| model | ranks | T x S x D | step (ms) | vs data-parallel | weights+grads+Adam per rank (MiB) | "
           "peak private memory (MiB) | tensor Allreduce bytes/step (formula) | pipeline bytes/step (formula) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {(r["model"], r["ranks"]): r["step_ms"] for r in rows if r["T"] * r["S"] == 1}
    for r in rows:
        ratio = base.get((r["model"], r["ranks"]), float("nan")) / r["step_ms"]
        out.append(f"| {r['model']} | {r['ranks']} | {r['T']} x {r['S']} x {r['D']} | {r['step_ms']:.1f} | "
                   f"{ratio:.2f}x | {r['state_mib_per_rank']:.1f} | {r['peak_rss_mib']:.0f} | "
                   f"{r['tensor_bytes']:.0f} ({r['tensor_formula']:.0f}) | "
                   f"{r['pipeline_bytes']:.0f} ({r['pipeline_formula']:.0f}) |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first model only")
    args = ap.parse_args()
    rows = []
    names = list(MODELS)[:1] if args.quick else list(MODELS)
    for name in names:
        steps, warmup = STEPS.get(name, (30, 5))
        for ranks, grids in GRIDS.items():
            if name.startswith("wide") and ranks == 2:
                continue
            for T, S in grids:
                row = summarise(name, ranks, run(ranks, T, S, MODELS[name], steps, warmup))
                rows.append(row)
                print(f"{name:24s} {ranks} ranks T{T} S{S} D{row['D']}: {row['step_ms']:8.1f} ms/step, "
                      f"state {row['state_mib_per_rank']:7.1f} MiB/rank, peak {row['peak_rss_mib']:6.0f} MiB, "
                      f"tensor {row['tensor_bytes']:.0f} B ({row['tensor_formula']:.0f}), "
                      f"pipeline {row['pipeline_bytes']:.0f} B ({row['pipeline_formula']:.0f})", flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "model_parallel.json"), "w") as f:
        json.dump({"budget_mib": BUDGET_MIB, "rows": rows}, f, indent=1)
    text = (f"# Model parallelism on this machine (2 cores)\n\nOne run of `python benchmarks/model_parallel.py`; "
            f"step time is the slowest rank's median; the per-rank budget for the wide mlp is {BUDGET_MIB} MiB "
            f"of weights, gradients and Adam state.\n\n{table(rows)}\n")
    with open(os.path.join(RESULTS, "model_parallel.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
