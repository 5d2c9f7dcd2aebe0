"""Run every mpidl benchmark and write benchmarks/results/ (JSON, CSV, PNG plots, report.md).

    python benchmarks/run_all.py            # full run (several minutes on 2 cores)
    python benchmarks/run_all.py --quick    # end to end in about a minute (the test suite runs this)
    python benchmarks/run_all.py --out /tmp/bench --ranks 1,2,4,8

It launches its own `mpiexec -n P` children (one BLAS thread per rank) and measures:

1. allreduce  OSU-style Allreduce 1 KB..64 MB at each rank count: median and 10-90% spread,
              algorithm and bus bandwidth, against the ring bound 2(p-1)/p*n/B, B = memory copy
              bandwidth measured in the same run.
2. overhead   mpidl's gradient reduction against a bare Allreduce of the same bytes (goal <= 1.15x).
3. breakdown  time per step in data / forward / backward / allreduce / optimizer, per model and rank count
              (mpidl's own step timing, from `python -m mpidl.train`).
4. scaling    strong (fixed global batch) and weak (fixed per-rank batch) throughput and efficiency.
5. peer       PyTorch DDP (gloo, CPU, 1 thread per process), same model, data, per-rank batch and ranks.
6. model      alpha-beta fit of (1); predicted step time and efficiency beside the measured ones,
              and for more ranks and nodes.

Models: mlp, and cnn whenever mpidl.models has one (its 28x28 data must be available).
Rank counts above the machine's cores are skipped unless named in --ranks.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import cost_model  # noqa: E402
import common  # noqa: E402
from common import cores, free_port, read_json, run_ranks, write_json  # noqa: E402

PHASE_ORDER = ("data", "forward", "backward", "allreduce", "optimizer")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the runs -----------------------------------------------------------------------
def bench_allreduce(ranks, quick, work):
    out = []
    for p in ranks:
        path = os.path.join(work, f"allreduce-{p}.json")
        args = ["--out", path]
        args += ["--max-bytes", str(256 << 10), "--budget", "0.05"] if quick else ["--max-bytes", str(64 << 20)]
        run_ranks(p, [os.path.join(HERE, "allreduce_osu.py"), *args])
        res = read_json(path)
        out.append(res)
        big = res["rows"][-1]
        log(f"allreduce p={p}: copy bandwidth {res['copy_bandwidth_GBps']:.1f} GB/s; "
            f"{big['bytes'] >> 10} KiB in {1e6 * big['median_s']:.0f} us (busbw {big['busbw_GBps']:.2f} GB/s)")
    return out


def bench_overhead(models, p, iters, work, cache_dir):
    out = []
    for model in models:
        path = os.path.join(work, f"overhead-{model}-{p}.json")
        run_ranks(p, [os.path.join(HERE, "overhead.py"), "--model", model, "--out", path,
                      "--iters", str(iters[model]), "--cache-dir", cache_dir])
        res = read_json(path)
        out.append(res)
        log(f"overhead {model} p={p}: {res['grad_bytes']} B, mpidl {1e6 * res['mpidl_median_s']:.0f} us vs bare "
            f"{1e6 * res['bare_median_s']:.0f} us -> {res['ratio']:.2f}x")
    return out


REPEAT = 1  # runs per configuration; the fastest is kept (set by --repeat)


def train_run(model, p, global_batch, steps, work, cache_dir, tag, extra=(), repeat=None):
    """One configuration, REPEAT times; the fastest run is kept, as other load only slows runs down."""
    best = None
    for i in range(repeat or REPEAT):
        out_dir = os.path.join(work, f"train-{model}-{tag}-{p}-{i}")
        run_ranks(p, ["-m", "mpidl.train", "--model", model, "--batch-size", str(global_batch), "--max-steps",
                      str(steps), "--progress", "none", "--out", out_dir, "--cache-dir", cache_dir, "--threads", "1",
                      *extra], timeout=1800)
        s = read_json(os.path.join(out_dir, "summary.json"))
        if best is None or s["samples_per_sec"] > best["samples_per_sec"]:
            best = s
    return {"model": model, "ranks": p, "kind": tag, "global_batch": global_batch,
            "per_rank_batch": global_batch / p, "steps": best["steps"], "samples_per_sec": best["samples_per_sec"],
            "timing": best["timing"], "repeats": repeat or REPEAT}


def bench_training(models, ranks, per_rank, steps, work, cache_dir):
    """Weak runs (per-rank batch fixed) give the breakdown and the peer's counterpart;
    strong runs fix the global batch at per_rank x the largest rank count."""
    runs = []
    strong_batch = per_rank * max(ranks)
    for model in models:
        for p in ranks:
            for kind, batch in (("weak", per_rank * p), ("strong", strong_batch)):
                if kind == "strong" and batch == per_rank * p and runs and runs[-1]["global_batch"] == batch \
                        and runs[-1]["ranks"] == p and runs[-1]["model"] == model:
                    runs.append({**runs[-1], "kind": "strong"})  # the same run serves both series
                    continue
                r = train_run(model, p, batch, steps[model], work, cache_dir, kind)
                runs.append(r)
                t = r["timing"]
                log(f"{kind:6s} {model} p={p} batch {batch}: {r['samples_per_sec']:.0f} samples/s, "
                    f"{t['step_ms']:.2f} ms/step (allreduce {t['mean_ms'].get('allreduce', 0):.2f}, "
                    f"data wait {100 * t['data_wait_fraction']:.1f}%)")
    for r in runs:
        base = next(b for b in runs if b["model"] == r["model"] and b["kind"] == r["kind"] and b["ranks"] == min(ranks))
        r["efficiency"] = r["samples_per_sec"] / (base["samples_per_sec"] * r["ranks"] / base["ranks"])
    return runs


def best(a, b):
    return b if a is None or b["samples_per_sec"] > a["samples_per_sec"] else a


def bench_prefetch(models, ranks, per_rank, steps, work, cache_dir, depth=2):
    """Inline loader against --prefetch, run in alternation (A B A B ...) so that changing
    load on the machine hits both alike; the fastest of each is compared."""
    out = []
    for model in models:
        for p in ranks:
            inline = ahead = None
            for i in range(REPEAT):
                inline = best(inline, train_run(model, p, per_rank * p, steps[model], work, cache_dir,
                                                f"inline{i}", repeat=1))
                ahead = best(ahead, train_run(model, p, per_rank * p, steps[model], work, cache_dir,
                                              f"prefetch{i}", ["--prefetch", str(depth)], repeat=1))
            out.append({"model": model, "ranks": p, "prefetch": depth,
                        "samples_per_sec_inline": inline["samples_per_sec"],
                        "samples_per_sec_prefetch": ahead["samples_per_sec"],
                        "data_wait_inline": inline["timing"]["data_wait_fraction"],
                        "data_wait_prefetch": ahead["timing"]["data_wait_fraction"],
                        "speedup": ahead["samples_per_sec"] / inline["samples_per_sec"]})
            log(f"prefetch {model} p={p}: {out[-1]['speedup']:.2f}x the inline loader; data wait "
                f"{100 * out[-1]['data_wait_inline']:.1f}% -> {100 * out[-1]['data_wait_prefetch']:.1f}%")
    return out


def bench_peer(models, ranks, per_rank, steps, work, cache_dir):
    """mpidl and DDP in alternation, same model, data, per-rank batch and ranks; fastest of each kept."""
    out = []
    for model in models:
        for p in ranks:
            ddp = ours = None
            for i in range(REPEAT):
                ours = best(ours, train_run(model, p, per_rank * p, steps[model], work, cache_dir, f"peer{i}",
                                            repeat=1))
                path = os.path.join(work, f"ddp-{model}-{p}-{i}.json")
                run_ranks(p, [os.path.join(HERE, "ddp_peer.py"), "--model", model, "--per-rank-batch",
                              str(per_rank), "--steps", str(steps[model]), "--port", str(free_port()), "--out", path],
                          timeout=1800)
                ddp = best(ddp, read_json(path))
            out.append({**ddp, "mpidl_samples_per_sec": ours["samples_per_sec"],
                        "ratio": ours["samples_per_sec"] / ddp["samples_per_sec"], "rounds": REPEAT})
            log(f"peer {model} p={p}: mpidl {ours['samples_per_sec']:.0f} vs DDP {ddp['samples_per_sec']:.0f} "
                f"samples/s = {out[-1]['ratio']:.2f}x (same model checked: {ddp['twin_verified']})")
    return out


def grad_bytes_of(model, cache_dir) -> int:
    import numpy as np
    from mpidl.cli import parse_config
    from mpidl.data import load_dataset
    from mpidl.models import build_model
    cfg = parse_config(["--model", model])
    data = load_dataset(cfg.dataset, cfg.data_dir)
    m = build_model(model, data.sample_shape, data.num_classes, {"hidden": cfg.hidden_sizes()})
    return int(m.store.size * np.dtype(cfg.dtype).itemsize)


def build_model_table(allreduce, runs, models, grad_bytes, args, ncores):
    points = [(a["ranks"], r["bytes"], r["median_s"]) for a in allreduce for r in a["rows"]]
    shm = cost_model.fit_alpha_beta(points)
    net = (args.net_latency_us * 1e-6, 1 / (args.net_bandwidth_gbps * 1e9 / 8))
    rows = []
    for model in models:
        base = next((r for r in runs if r["model"] == model and r["kind"] == "weak" and r["ranks"] == 1), None)
        if base is None:
            continue
        t = base["timing"]
        compute = (t["step_ms"] - t["mean_ms"].get("allreduce", 0.0)) / 1e3
        t1 = cost_model.predict_step(compute, grad_bytes[model], 1, ncores, ncores, shm, net)
        measured = {r["ranks"]: r for r in runs if r["model"] == model and r["kind"] == "weak"}
        cases = [(p, 1, p) for p in sorted(set(measured) | {8, 16, 32})]
        cases += [(n * ncores, n, ncores) for n in (2, 4, 8, 16)]
        for ranks, nodes, per_node in cases:
            pred = cost_model.predict_step(compute, grad_bytes[model], ranks, per_node, ncores if nodes > 1 or
                                           ranks in measured else max(ncores, ranks), shm, net)
            m = measured.get(ranks) if nodes == 1 else None
            rows.append({"model": model, "ranks": ranks, "nodes": nodes, "predicted_step_ms": 1e3 * pred,
                         "predicted_weak_efficiency": t1 / pred,
                         "measured_step_ms": m["timing"]["step_ms"] if m else None,
                         "measured_weak_efficiency": m["efficiency"] if m else None,
                         "assumes": "measured cores" if m else
                         ("one core per rank, shared memory" if nodes == 1 else "network alpha/beta assumed")})
    return {"alpha_s": shm[0], "beta_s_per_byte": shm[1], "fitted_bandwidth_GBps": 1 / shm[1] / 1e9 if shm[1] else None,
            "net_alpha_s": net[0], "net_bandwidth_GBps": args.net_bandwidth_gbps / 8, "rows": rows}


# -- output -------------------------------------------------------------------------
def write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def make_plots(out, allreduce, runs, peer, model_table, models):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plots (pip install matplotlib)")
        return []
    made = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for a in allreduce:
        if a["ranks"] < 2:
            continue
        n = [r["bytes"] for r in a["rows"]]
        med = [1e6 * r["median_s"] for r in a["rows"]]
        ax1.plot(n, med, "o-", label=f"{a['ranks']} ranks")
        ax1.fill_between(n, [1e6 * r["p10_s"] for r in a["rows"]], [1e6 * r["p90_s"] for r in a["rows"]], alpha=0.2)
        ax1.plot(n, [1e6 * r["ring_bound_s"] for r in a["rows"]], "--", color=ax1.lines[-1].get_color(),
                 label=f"ring bound, {a['ranks']} ranks")
        ax2.plot(n, [r["busbw_GBps"] for r in a["rows"]], "o-", label=f"{a['ranks']} ranks")
        ax2.axhline(a["copy_bandwidth_GBps"], ls=":", color=ax2.lines[-1].get_color())
    for ax, title, unit in ((ax1, "Allreduce time (median, 10-90%)", "microseconds"),
                            (ax2, "bus bandwidth (dotted: memory copy B)", "GB/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message bytes")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax1.set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "allreduce.png"), dpi=110)
    plt.close(fig)
    made.append("allreduce.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model in models:
        for kind, style in (("weak", "o-"), ("strong", "s--")):
            rs = sorted((r for r in runs if r["model"] == model and r["kind"] == kind), key=lambda r: r["ranks"])
            if not rs:
                continue
            axes[0].plot([r["ranks"] for r in rs], [r["samples_per_sec"] for r in rs], style, label=f"{model} {kind}")
            axes[1].plot([r["ranks"] for r in rs], [100 * r["efficiency"] for r in rs], style, label=f"{model} {kind}")
        pred = [r for r in model_table["rows"] if r["model"] == model and r["nodes"] == 1
                and r["measured_step_ms"] is not None]
        if pred:
            axes[1].plot([r["ranks"] for r in pred], [100 * r["predicted_weak_efficiency"] for r in pred], "x:",
                         label=f"{model} weak, cost model")
    axes[0].set_title("throughput")
    axes[0].set_ylabel("samples/s")
    axes[0].set_yscale("log")  # models differ by orders of magnitude
    axes[1].set_title("parallel efficiency")
    axes[1].set_ylabel("%")
    axes[1].axhline(85, color="grey", lw=0.5)
    for ax in axes:
        ax.set_xlabel("ranks")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling.png"), dpi=110)
    plt.close(fig)
    made.append("scaling.png")

    weak = [r for r in runs if r["kind"] == "weak"]
    if weak:
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(weak)), 4))
        labels = [f"{r['model']}\n{r['ranks']}r" for r in weak]
        bottom = [0.0] * len(weak)
        for phase in PHASE_ORDER:
            vals = [r["timing"]["mean_ms"].get(phase, 0.0) for r in weak]
            if any(vals):
                ax.bar(labels, vals, bottom=bottom, label=phase)
                bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_ylabel("ms per step (mean over ranks)")
        ax.set_title("step breakdown, per-rank batch fixed")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "breakdown.png"), dpi=110)
        plt.close(fig)
        made.append("breakdown.png")

    if peer:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels, ours, theirs = [], [], []
        for d in peer:
            labels.append(f"{d['model']} {d['ranks']}r")
            ours.append(d["mpidl_samples_per_sec"])
            theirs.append(d["samples_per_sec"])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], ours, 0.4, label="mpidl")
        ax.bar([x + 0.2 for x in xs], theirs, 0.4, label="PyTorch DDP (gloo)")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("samples/s")
        ax.set_title("same model, data and per-rank batch")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "peer.png"), dpi=110)
        plt.close(fig)
        made.append("peer.png")
    return made


def markdown(res) -> str:
    lines = [f"# mpidl benchmarks ({'quick' if res['quick'] else 'full'} run)", "",
             f"Machine: {res['machine']['cores']} cores, {res['machine']['mpi']}; {res['machine']['when']}; "
             f"one BLAS thread per rank; load average {res['machine']['load_average_at_start']:.1f} at the start, "
             f"{res['machine']['load_average_at_end']:.1f} at the end"
             + (" (at or above the core count: other programs shared the cores)"
                if res['machine']['load_average_at_end'] >= res['machine']['cores'] else "")
             + "; MPICH yielding wait (MPIR_CVAR_ENABLE_HEAVY_YIELD) at ranks "
             f"{[p for p, y in res['machine']['mpich_heavy_yield'].items() if y] or 'none'}. "
             "Ratios and efficiencies compare figures from this one run.", ""]
    lines += ["## 1. Allreduce (float32 SUM, in place)", "",
              "| ranks | bytes | median us | 10-90% us | algbw GB/s | busbw GB/s | ring bound us | x bound |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in res["allreduce"]:
        for r in a["rows"]:
            if a["ranks"] < 2:
                continue
            lines.append(f"| {a['ranks']} | {r['bytes']} | {1e6 * r['median_s']:.1f} | {1e6 * r['p10_s']:.1f}-"
                         f"{1e6 * r['p90_s']:.1f} | {r['algbw_GBps']:.2f} | {r['busbw_GBps']:.2f} | "
                         f"{1e6 * r['ring_bound_s']:.1f} | {r['vs_bound']:.2f} |")
    lines += ["", "Memory copy bandwidth B (all ranks copying at once): " +
              ", ".join(f"{a['ranks']} ranks {a['copy_bandwidth_GBps']:.1f} GB/s" for a in res["allreduce"]), ""]
    lines += ["## 2. Framework overhead of the gradient reduction (goal <= 1.15x)", "",
              "| model | ranks | gradient bytes | mpidl median us | bare Allreduce median us | ratio | ratio of 10th pct |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for o in res["overhead"]:
        lines.append(f"| {o['model']} | {o['ranks']} | {o['grad_bytes']} | {1e6 * o['mpidl_median_s']:.1f} | "
                     f"{1e6 * o['bare_median_s']:.1f} | {o['ratio']:.2f} | {o['mpidl_p10_s'] / o['bare_p10_s']:.2f} |")
    lines += ["", "## 3. Step breakdown (per-rank batch fixed; ms per step, mean over ranks)", "",
              "| model | ranks | " + " | ".join(p for p in PHASE_ORDER) + " | step | data wait | slowest rank |",
              "|---|---:|" + "---:|" * (len(PHASE_ORDER) + 3)]
    for r in res["training"]:
        if r["kind"] != "weak":
            continue
        t = r["timing"]
        cells = " | ".join(f"{t['mean_ms'][p]:.3f}" if p in t["mean_ms"] else "-" for p in PHASE_ORDER)
        lines.append(f"| {r['model']} | {r['ranks']} | {cells} | {t['step_ms']:.3f} | "
                     f"{100 * t['data_wait_fraction']:.1f}% | {t['slowest_rank']} ({t['slowest_step_ms']:.3f}) |")
    lines += ["", "## 4. Scaling", "", "| model | kind | ranks | global batch | samples/s | efficiency |",
              "|---|---|---:|---:|---:|---:|"]
    for r in res["training"]:
        lines.append(f"| {r['model']} | {r['kind']} | {r['ranks']} | {r['global_batch']} | "
                     f"{r['samples_per_sec']:.0f} | {100 * r['efficiency']:.0f}% |")
    if res["skipped_ranks"]:
        lines += ["", f"Not run (more ranks than the {res['machine']['cores']} cores): {res['skipped_ranks']}."]
    if res.get("prefetch"):
        lines += ["", "## Data loading: --prefetch 2 against the inline loader (paired runs, alternating, per-rank batch fixed)", "",
                  "| model | ranks | inline samples/s | prefetch samples/s | speed-up | data wait inline | data wait prefetch |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["prefetch"]:
            lines.append(f"| {r['model']} | {r['ranks']} | {r['samples_per_sec_inline']:.0f} | "
                         f"{r['samples_per_sec_prefetch']:.0f} | {r['speedup']:.2f}x | {100 * r['data_wait_inline']:.1f}% | "
                         f"{100 * r['data_wait_prefetch']:.1f}% |")
    lines += ["", "## 5. Peer: PyTorch DDP (gloo, CPU, 1 thread per process)", ""]
    if res["peer"]:
        lines += ["| model | ranks | per-rank batch | mpidl samples/s | DDP samples/s | mpidl / DDP | same model checked |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for d in res["peer"]:
            lines.append(f"| {d['model']} | {d['ranks']} | {d['per_rank_batch']} | {d['mpidl_samples_per_sec']:.0f} | "
                         f"{d['samples_per_sec']:.0f} | {d['ratio']:.2f}x | "
                         f"{'yes' if d['twin_verified'] else 'NO'} (max diff {d['twin_max_abs_diff']:.1e}) |")
        lines += ["", "mpidl and DDP runs alternate; each side's fastest of the rounds is shown."]
    else:
        lines.append(res.get("peer_note", "not run"))
    mt = res["cost_model"]
    lines += ["", "## 6. Cost model", "",
              f"Fitted ring Allreduce on this node: alpha = {1e6 * mt['alpha_s']:.2f} us per message, "
              f"beta = {1e9 * mt['beta_s_per_byte']:.3f} ns/byte"
              + (f" ({mt['fitted_bandwidth_GBps']:.1f} GB/s)" if mt["fitted_bandwidth_GBps"] else "") +
              f". Across nodes (assumed, not measured): alpha = {1e6 * mt['net_alpha_s']:.1f} us, "
              f"{mt['net_bandwidth_GBps']:.1f} GB/s.", "",
              "| model | ranks | nodes | predicted ms/step | measured ms/step | predicted weak eff. | measured weak eff. | basis |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in mt["rows"]:
        ms = "-" if r["measured_step_ms"] is None else f"{r['measured_step_ms']:.2f}"
        me = "-" if r["measured_weak_efficiency"] is None else f"{100 * r['measured_weak_efficiency']:.0f}%"
        lines.append(f"| {r['model']} | {r['ranks']} | {r['nodes']} | {r['predicted_step_ms']:.2f} | {ms} | "
                     f"{100 * r['predicted_weak_efficiency']:.0f}% | {me} | {r['assumes']} |")
    lines += ["", "## Goals", ""] + [f"- {g}" for g in res["goals"]] + [""]
    return "\n".join(lines)


def goals(res) -> list[str]:
    out = []
    for o in res["overhead"]:
        out.append(f"gradient reduction overhead, {o['model']} at {o['ranks']} ranks: {o['ratio']:.2f}x median "
                   f"({o['mpidl_p10_s'] / o['bare_p10_s']:.2f}x at the 10th percentile); goal <= 1.15x: "
                   f"{'met' if o['ratio'] <= 1.15 else 'not met'}")
    for r in res["training"]:
        if r["model"] == "cnn" and r["kind"] == "weak" and r["ranks"] == 2:
            out.append(f"cnn weak-scaling efficiency at 2 ranks: {100 * r['efficiency']:.0f}%; goal >= 85%: "
                       f"{'met' if r['efficiency'] >= 0.85 else 'not met'}")
    for d in res["peer"]:
        if d["ranks"] == 2:
            ratio = d["ratio"]
            goal = {"mlp": 3.0, "cnn": 1.3}.get(d["model"])
            if goal:
                out.append(f"mpidl / DDP on {d['model']}, 2 ranks, batch {d['per_rank_batch']}/rank: {ratio:.2f}x; "
                           f"goal >= {goal}x: {'met' if ratio >= goal else 'not met'}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, few steps, mlp only, 1-2 ranks")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder")
    ap.add_argument("--ranks", help="comma-separated rank counts (default 1,2,4 and 8,16 where cores allow)")
    ap.add_argument("--models", help="comma-separated models (default mlp, and cnn when mpidl has it)")
    ap.add_argument("--per-rank-batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per training/DDP configuration, fastest kept (use 2-3 on a shared machine)")
    ap.add_argument("--mpi-yield", choices=("auto", "on", "off"), default="auto",
                    help="MPICH yields the core while waiting (auto: when ranks > cores or the machine is busy)")
    ap.add_argument("--no-peer", action="store_true", help="skip the PyTorch DDP comparison")
    ap.add_argument("--net-latency-us", type=float, default=5.0, help="cost model: assumed network latency")
    ap.add_argument("--net-bandwidth-gbps", type=float, default=100.0, help="cost model: assumed network Gbit/s")
    args = ap.parse_args(argv)

    global REPEAT
    REPEAT = max(1, args.repeat)
    common.MPI_YIELD = args.mpi_yield
    # Busy: the cores are already fully used by other programs (a lower load is often just
    # the decaying average of work that has finished).
    common.MACHINE_BUSY = os.getloadavg()[0] >= cores()
    from mpidl.models import MODELS
    ncores = cores()
    if args.ranks:
        ranks = sorted({int(r) for r in args.ranks.split(",")})
        skipped = []
    else:
        wanted = [1, 2] if args.quick else [1, 2, 4, 8, 16]
        ranks = [p for p in wanted if p <= max(ncores, 4)]
        skipped = [p for p in wanted if p not in ranks]
    models = args.models.split(",") if args.models else (["mlp"] if args.quick else
                                                          ["mlp"] + (["cnn"] if "cnn" in MODELS else []))
    # Steps per training run: enough for a steady mean; other models are timed like cnn.
    steps = defaultdict(lambda: 10 if args.quick else 30, mlp=60 if args.quick else 400)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="mpidl-bench-")
    cache_dir = os.path.join(work, "dataset-cache")
    log(f"{ncores} cores; ranks {ranks}; models {models}; scratch {work}")

    grad_bytes = {}
    for m in list(models):
        try:
            grad_bytes[m] = grad_bytes_of(m, cache_dir)
        except Exception as exc:  # e.g. cnn's dataset is not on this machine
            log(f"skipping {m}: {exc}")
            models.remove(m)

    t_start = time.perf_counter()
    res = {"quick": args.quick, "skipped_ranks": skipped,
           "machine": {"cores": ncores, "when": time.strftime("%Y-%m-%d %H:%M"),
                       "mpi": "", "python": sys.version.split()[0],
                       # other work on the machine skews every figure; the report states it
                       "load_average_at_start": os.getloadavg()[0],
                       "mpich_heavy_yield": {p: common.yields(p) for p in ranks}}}
    res["allreduce"] = bench_allreduce(ranks, args.quick, work)
    res["machine"]["mpi"] = res["allreduce"][0]["library"]
    multi = [p for p in ranks if p >= 2]
    # Each iteration also computes a real gradient, so a big model gets fewer iterations.
    iters = defaultdict(lambda: 10 if args.quick else 200, mlp=60 if args.quick else 400)
    res["overhead"] = bench_overhead(models, min(multi), iters, work, cache_dir) if multi else []
    res["training"] = bench_training(models, ranks, args.per_rank_batch, steps, work, cache_dir)
    on_cores = [p for p in ranks if p <= ncores]  # paired comparisons where no rank waits for a core
    res["prefetch"] = [] if args.quick else bench_prefetch(models, on_cores, args.per_rank_batch, steps, work,
                                                          cache_dir)
    res["peer"] = []
    if args.no_peer:
        res["peer_note"] = "skipped (--no-peer)"
    elif importlib.util.find_spec("torch") is None:
        res["peer_note"] = "skipped: PyTorch is not installed (pip install torch==2.13.0)"
        log(res["peer_note"])
    else:
        peer_ranks = [2] if args.quick and 2 in ranks else on_cores
        res["peer"] = bench_peer(models, peer_ranks, args.per_rank_batch, steps, work, cache_dir)
    res["grad_bytes"] = grad_bytes
    res["cost_model"] = build_model_table(res["allreduce"], res["training"], models, grad_bytes, args, ncores)
    for row in res["cost_model"]["rows"]:
        if row["measured_step_ms"] is not None:
            log(f"cost model {row['model']} p={row['ranks']}: predicted {row['predicted_step_ms']:.2f} ms/step, "
                f"measured {row['measured_step_ms']:.2f}; weak efficiency predicted "
                f"{100 * row['predicted_weak_efficiency']:.0f}%, measured {100 * row['measured_weak_efficiency']:.0f}%")
    res["goals"] = goals(res)
    res["seconds"] = time.perf_counter() - t_start
    res["machine"]["load_average_at_end"] = os.getloadavg()[0]

    write_json(os.path.join(args.out, "results.json"), res)
    write_csv(os.path.join(args.out, "allreduce.csv"),
              [{"ranks": a["ranks"], "copy_bandwidth_GBps": a["copy_bandwidth_GBps"], **r}
               for a in res["allreduce"] for r in a["rows"]],
              ["ranks", "bytes", "iters", "median_s", "p10_s", "p90_s", "min_s", "algbw_GBps", "busbw_GBps",
               "ring_bound_s", "vs_bound", "copy_bandwidth_GBps"])
    write_csv(os.path.join(args.out, "training.csv"),
              [{**{k: v for k, v in r.items() if k != "timing"}, "step_ms": r["timing"]["step_ms"],
                "data_wait_fraction": r["timing"]["data_wait_fraction"],
                **{f"{p}_ms": v for p, v in r["timing"]["mean_ms"].items()}} for r in res["training"]],
              ["model", "kind", "ranks", "global_batch", "per_rank_batch", "steps", "samples_per_sec", "efficiency",
               "step_ms", "data_wait_fraction"] + [f"{p}_ms" for p in PHASE_ORDER])
    write_csv(os.path.join(args.out, "cost_model.csv"), res["cost_model"]["rows"],
              list(res["cost_model"]["rows"][0]) if res["cost_model"]["rows"] else ["model"])
    res["plots"] = make_plots(args.out, res["allreduce"], res["training"], res["peer"], res["cost_model"], models)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown(res))
    log(f"done in {res['seconds']:.0f} s; wrote {args.out}/report.md")
    for g in res["goals"]:
        log(g)
    return 0


if __name__ == "__main__":
    sys.exit(main())
