"""Training across shaped links (benchmarks/netlab.py): the cost model checked, and every
communication option against the plain flat Allreduce, per link speed.

For each link speed (tbf on every node's link, both ways):

1. the link's latency alpha and inverse bandwidth beta, fitted to the Allreduce
   microbenchmark (benchmarks/allreduce_osu.py) on 2 namespace-nodes;
2. for mlp 784-256-256-10 and cnn (Fashion-MNIST, global batch 128) on 2 and 4 nodes (one
   rank each): the measured step time beside the cost model's prediction: the slowest of
   `nodes` independent single-rank runs started together (per-rank batch, one BLAS thread, no
   communication: the namespace-nodes share this machine's cores, and the slowest rank sets
   the pace of every Allreduce), plus the ring Allreduce of the gradient over the link as
   fitted at that node count;
3. fp16, bf16, buckets of 4 MiB with overlap, hierarchical (2 nodes x 2 ranks) and
   --allreduce auto against flat, with the validation accuracy after the fixed run; and auto's
   choice against the best measured option.

    python benchmarks/network_lab.py                     # 100 Mbit/s, 1 and 10 Gbit/s (about 55 min)
    python benchmarks/network_lab.py --rates 100 --quick  # one speed, no options (2 min)
    python benchmarks/network_lab.py --rates 10000 --update  # redo one speed, keep the others

Needs root (network namespaces, tc). Writes benchmarks/results/network_lab.json and .md.
Every rank gets one BLAS thread (--threads 1): the namespace-nodes share this machine's cores,
and each would otherwise take all of them (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import netlab  # noqa: E402
from cost_model import allreduce_time, fit_alpha_beta  # noqa: E402

MODELS = {"mlp 784-256-256-10": ["--model", "mlp", "--hidden", "256,256"], "cnn": ["--model", "cnn"]}
COMMON = ["--dataset", "fashion-mnist", "--batch-size", "128", "--progress", "none", "--threads", "1",
          "--eval-batch-size", "500", "--seed", "1"]
# MPICH's default for large Allreduces (reduce-scatter by recursive halving, then allgather)
# measured 1.7x slower than its ring across 4 shaped nodes (16 MiB at 100 Mbit/s: 3.9 s against
# 2.2 s, where the ring bound is 2.0 s); the cost model is the ring's, so the lab runs the ring
# unless a row says otherwise.
# The same holds for its non-blocking Iallreduce, which buckets use: 1.5x slower than its
# ring ("tsp_ring") for 6.5 MB on 4 nodes at 100 Mbit/s (1.2-1.6 s against 0.83-0.93 s).
RING = {"MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "ring", "MPIR_CVAR_IALLREDUCE_INTRA_ALGORITHM": "tsp_ring"}
OPTIONS = {"flat, MPICH's default algorithm": [], "fp16": ["--grad-compression", "fp16"], "bf16": ["--grad-compression", "bf16"],
           "buckets 4 MiB, overlap": ["--bucket-mb", "4"], "hierarchical": ["--allreduce", "hierarchical"],
           "auto": ["--allreduce", "auto"]}


def cores() -> int:
    return len(os.sched_getaffinity(0))


def fit_link(lab, nodes: int = 2, max_bytes: int = 4 << 20) -> dict:
    """alpha (s) and beta (s/byte) of the shaped link from the Allreduce microbenchmark."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ar.json")
        proc = lab.mpiexec([os.path.join(HERE, "allreduce_osu.py"), "--out", out, "--max-bytes", str(max_bytes),
                            "--budget", "0.2"], nodes=nodes, timeout=600, env=RING)
        if proc.returncode != 0:
            raise RuntimeError(f"allreduce microbenchmark failed:\n{proc.stderr[-2000:]}")
        with open(out) as f:
            rows = json.load(f)["rows"]
    alpha, beta = fit_alpha_beta([(nodes, r["bytes"], r["median_s"]) for r in rows])
    return {"alpha_s": alpha, "beta_s_per_byte": beta, "rate_mbit_fitted": 8 / beta / 1e6 if beta else None,
            "points": [(r["bytes"], r["median_s"]) for r in rows]}


def _summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        summary["grad_bytes"] = int(z["params"].nbytes)
    return summary


def train_in_lab(lab, flags, nodes, ranks_per_node=1, steps=12, env=RING) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        proc = lab.mpiexec(["-m", "mpidl.train", *flags, *COMMON, "--max-steps", str(steps), "--out", out],
                           nodes=nodes, ranks_per_node=ranks_per_node, timeout=900, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"training in the lab failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-2000:]}")
        summary = _summary(out)
        # --allreduce auto's decision line ends "-> CHOICE; what it runs"
        chosen = [line for line in proc.stdout.splitlines() if line.startswith("communication:") and " -> " in line]
        if chosen:
            summary["auto_line"] = chosen[-1]
            summary["auto_choice"] = chosen[-1].rsplit(" -> ", 1)[1].split(";")[0]
        return summary


def compute_alone(flags, per_rank_batch, copies: int = 1, steps=12) -> float:
    """Seconds per step of the slowest of `copies` single-rank runs started together at the
    per-rank batch (no communication): what the lab's ranks compute while sharing the cores."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(copies):
            out = os.path.join(tmp, f"run{i}")
            args = [*flags, *COMMON, "--max-steps", str(steps), "--out", out]
            args[args.index("--batch-size") + 1] = str(per_rank_batch)
            procs.append((out, subprocess.Popen([sys.executable, "-m", "mpidl.train", *args], text=True,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        times = []
        for out, proc in procs:
            _, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(err[-2000:])
            times.append(_summary(out)["timing"]["step_ms"] / 1e3)
        return max(times)


def predict(compute_s, grad_bytes, ranks, link) -> float:
    return compute_s + allreduce_time(ranks, grad_bytes, link["alpha_s"], link["beta_s_per_byte"])


def check_model(lab, link, name, nodes, compute=None) -> dict:
    flags = MODELS[name]
    compute = compute if compute is not None else compute_alone(flags, 128 // nodes, copies=nodes)
    run = train_in_lab(lab, flags, nodes)
    measured = run["timing"]["step_ms"] / 1e3
    predicted = predict(compute, run["grad_bytes"], nodes, link)
    return {"model": name, "nodes": nodes, "compute_s": compute, "grad_bytes": run["grad_bytes"],
            "measured_s": measured, "predicted_s": predicted, "residual": measured / predicted - 1,
            "phases_ms": run["timing"]["mean_ms"], "val_accuracy": run["val_accuracy"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="100,1000,10000", help="link speeds in Mbit/s")
    ap.add_argument("--quick", action="store_true", help="the cost model only, no options")
    ap.add_argument("--update", action="store_true",
                    help="keep the saved results of the speeds not given in --rates")
    args = ap.parse_args()
    why = netlab.available()
    if why:
        sys.exit(f"network_lab: {why}")
    rows, links = [], {}
    computes = {}
    for rate in [float(r) for r in args.rates.split(",")]:
        with netlab.Lab(nodes=4, rate_mbit=rate) as lab:
            bulk = lab.bulk_rate(0, 1, int(min(64 << 20, rate * 1e6 / 8 * 1.5)))
            # Fitted at each node count: on 4 namespace-nodes the ranks (and TCP's work) share
            # 2 cores, which slows every ring step; on a real cluster one fit serves all counts.
            fits = {nodes: fit_link(lab, nodes=nodes) for nodes in (2, 4)}
            links[rate] = {"bulk_mbit": bulk, **{f"{nodes} nodes": fit for nodes, fit in fits.items()}}
            print(f"{rate:g} Mbit/s: bulk TCP {bulk:.0f} Mbit/s; fitted " + "; ".join(
                f"{nodes} nodes alpha {fit['alpha_s'] * 1e6:.0f} us, bandwidth {fit['rate_mbit_fitted']:.0f} Mbit/s"
                for nodes, fit in fits.items()), flush=True)
            for name in MODELS:
                for nodes in (2, 4):
                    link = fits[nodes]
                    key = (name, nodes)
                    if key not in computes:
                        computes[key] = compute_alone(MODELS[name], 128 // nodes, copies=nodes)
                    row = {"rate_mbit": rate, "option": "flat",
                           **check_model(lab, link, name, nodes, computes[key])}
                    rows.append(row)
                    print(f"  {name:20s} {nodes} nodes flat: measured {row['measured_s'] * 1e3:8.1f} ms, "
                          f"predicted {row['predicted_s'] * 1e3:8.1f} ms ({row['residual']:+.0%})", flush=True)
                    if args.quick:
                        continue
                    for option, extra in OPTIONS.items():
                        per_node = 2 if option == "hierarchical" else 1
                        if per_node * nodes > 4:  # 8 ranks on 2 cores measure the cores, not the links
                            continue
                        env = {} if option.startswith("flat") else RING
                        run = train_in_lab(lab, [*MODELS[name], *extra], nodes, ranks_per_node=per_node, env=env)
                        flat = row if per_node == 1 else {"measured_s": train_in_lab(
                            lab, MODELS[name], nodes, ranks_per_node=2)["timing"]["step_ms"] / 1e3}
                        measured = run["timing"]["step_ms"] / 1e3
                        rows.append({"rate_mbit": rate, "option": option, "model": name, "nodes": nodes,
                                     "ranks_per_node": per_node, "measured_s": measured,
                                     "flat_s": flat["measured_s"], "speedup": flat["measured_s"] / measured,
                                     "val_accuracy": run["val_accuracy"], "auto_choice": run.get("auto_choice"),
                                     "auto_line": run.get("auto_line")})
                        print(f"  {name:20s} {nodes} nodes x {per_node} {option:24s}: {measured * 1e3:8.1f} ms, "
                              f"{flat['measured_s'] / measured:.2f}x flat, accuracy {run['val_accuracy']:.3f}",
                              flush=True)
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    if args.update and os.path.exists(os.path.join(results, "network_lab.json")):
        with open(os.path.join(results, "network_lab.json")) as f:
            old = json.load(f)
        rows = [r for r in old["rows"] if r["rate_mbit"] not in links] + rows
        links = {**{float(k): v for k, v in old["links"].items() if float(k) not in links}, **links}
        rows.sort(key=lambda r: r["rate_mbit"])  # stable: each speed's rows keep their order
    with open(os.path.join(results, "network_lab.json"), "w") as f:
        json.dump({"cores": cores(), "links": links, "rows": rows}, f, indent=1)
    lines = ["| link | model | nodes | option | step (ms) | predicted (ms) | residual / speed-up | accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        pred = f"{r['predicted_s'] * 1e3:.0f}" if "predicted_s" in r else ""
        rel = f"{r['residual']:+.0%}" if "residual" in r else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['rate_mbit']:g} Mbit/s | {r['model']} | {r['nodes']} | {r['option']} | "
                     f"{r['measured_s'] * 1e3:.0f} | {pred} | {rel} | {r['val_accuracy']:.3f} |")
    lines += ["", "## --allreduce auto against the measured options (one rank per node)", "",
              "| link | model | nodes | auto chose | auto (ms) | best measured | best (ms) | auto / best |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["option"] != "auto":
            continue
        same = [q for q in rows if (q["rate_mbit"], q["model"], q["nodes"]) == (r["rate_mbit"], r["model"], r["nodes"])
                and q.get("ranks_per_node", 1) == 1 and q["option"] != "auto"]
        best = min(same, key=lambda q: q["measured_s"])
        lines.append(f"| {r['rate_mbit']:g} Mbit/s | {r['model']} | {r['nodes']} | {r['auto_choice']} | "
                     f"{r['measured_s'] * 1e3:.0f} | {best['option']} | {best['measured_s'] * 1e3:.0f} | "
                     f"{r['measured_s'] / best['measured_s']:.2f} |")
    with open(os.path.join(results, "network_lab.md"), "w") as f:
        f.write("# Training across shaped links\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
