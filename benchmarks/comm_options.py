"""Step time of mpidl with each communication option, against the plain path, in one run.

    mpiexec -n 2 python benchmarks/comm_options.py                 # mlp 784-64-64-10 and a 784-1024x3-10 stack
    mpiexec -n 4 python benchmarks/comm_options.py --steps 40 --repeats 5
    mpiexec -n 2 python benchmarks/comm_options.py --quick         # a few steps, for a smoke test

Every configuration trains the same model on Fashion-MNIST (digits with --dataset digits) with
64 samples per rank. Configurations are interleaved (each repeat runs every configuration
once) so that drift in machine load spreads over all of them. Per configuration rank 0
prints the median step time (slowest rank per step) with its interquartile range, the
ratio to the plain path, and "exposed comm": time from the end of backward until the
gradients are ready, i.e. communication that compute did not hide. A bare Allreduce of the
same number of bytes is timed alongside as the floor. Writes benchmarks/results/comm_options-N.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpidl.data import load_dataset  # noqa: E402
from mpidl.parallel.comm import world  # noqa: E402
from mpidl.cli import parse_config  # noqa: E402
from mpidl.trainer import Trainer  # noqa: E402

MODELS = {
    "mlp": "64,64",                  # 55 k parameters, 0.2 MiB of gradients
    "wide-mlp": "1024,1024,1024",    # 2.9 M parameters, 11 MiB: a CNN-sized gradient
}

OPTIONS = {
    "plain": [],
    "bucket 1MiB test": ["--bucket-mb", "1"],
    "bucket 4MiB test": ["--bucket-mb", "4"],
    "bucket 1MiB thread": ["--bucket-mb", "1", "--overlap", "thread"],
    "fp16": ["--grad-compression", "fp16"],
    "bf16": ["--grad-compression", "bf16"],
    "fp16 + bucket 1MiB": ["--grad-compression", "fp16", "--bucket-mb", "1"],
    "zero 1": ["--zero", "1"],
    "hierarchical": ["--allreduce", "hierarchical"],
    "hierarchical 2 fake nodes": ["--allreduce", "hierarchical"],
    "accumulate 2": ["--accumulate", "2"],
}


def percentile_row(times):
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return med, q1, q3


def bare_allreduce_ms(comm, nbytes, steps):
    buf = np.ones(max(nbytes // 4, 1), dtype=np.float32)
    for _ in range(3):
        comm.allreduce_sum_(buf)
    times = []
    for _ in range(steps):
        comm.barrier()
        t0 = comm.wtime()
        comm.allreduce_sum_(buf)
        times.append(comm.wtime() - t0)
    _, slowest = comm.allreduce_min_max(np.array(times))
    return 1e3 * float(np.median(slowest))


def overlap_probe(comm, mib=4.0, chunks=10, repeats=7):
    """Does a non-blocking Allreduce progress while this rank computes? Times compute alone,
    Allreduce alone, and both together three ways: Iallreduce then compute then Wait (no MPI
    call in between), the same with Testall between compute chunks, and a blocking Allreduce
    on a second thread. hidden = (compute + comm - together) / comm: 1 is full overlap."""
    import threading
    buf = np.ones(int(mib * 2 ** 20 / 4), dtype=np.float32)
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)

    def compute(test=None):
        for _ in range(chunks):
            for _ in range(4):
                a @ a
            if test is not None:
                comm.test_all(test)

    def timed(fn):
        times = []
        for _ in range(repeats):
            comm.barrier()
            t0 = comm.wtime()
            fn()
            times.append(comm.wtime() - t0)
        _, slowest = comm.allreduce_min_max(np.array(times))
        return float(np.median(slowest))

    def nonblocking(test):
        req = [comm.iallreduce_sum(buf)]
        compute(req if test else None)
        comm.wait_all(req)

    def threaded():
        worker = threading.Thread(target=comm.allreduce_sum_, args=(buf,))
        worker.start()
        compute()
        worker.join()

    t_compute = timed(compute)
    t_comm = timed(lambda: comm.allreduce_sum_(buf))
    out = dict(mib=mib, compute_ms=1e3 * t_compute, allreduce_ms=1e3 * t_comm)
    for name, fn in (("iallreduce, no test", lambda: nonblocking(False)),
                     ("iallreduce + testall", lambda: nonblocking(True)),
                     ("thread", threaded)):
        together = timed(fn)
        out[name] = dict(total_ms=1e3 * together, hidden=(t_compute + t_comm - together) / max(t_comm, 1e-9))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--options", default=",".join(OPTIONS), help="comma-separated names of configurations")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 repeat: checks that it runs")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = 2, 1, 1

    comm = world()
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)  # one BLAS thread per rank: ranks scale better than threads here
    data = load_dataset(args.dataset)  # every configuration trains on the same arrays: loaded once
    lead = comm.rank == 0
    probe = overlap_probe(comm, repeats=2 if args.quick else 7) if comm.size > 1 else None
    results = []
    for model_name in args.models.split(","):
        hidden = MODELS[model_name]
        trainers = {}
        for name in args.options.split(","):
            os.environ.pop("MPIDL_RANKS_PER_NODE", None)
            if name == "hierarchical 2 fake nodes":
                os.environ["MPIDL_RANKS_PER_NODE"] = str(max(comm.size // 2, 1))
            cfg = parse_config(["--model", "mlp", "--hidden", hidden, "--dataset", args.dataset,
                                "--batch-size", str(64 * comm.size), "--max-steps", "100000",
                                "--optimizer", "adam", "--lr", "1e-3", *OPTIONS[name]])
            trainers[name] = Trainer.from_config(cfg, comm, data=data)
        os.environ.pop("MPIDL_RANKS_PER_NODE", None)
        any_trainer = next(iter(trainers.values()))
        nbytes = any_trainer.store.grad.nbytes
        step_times = {name: [] for name in trainers}
        exposed = {name: [] for name in trainers}
        batches = {name: t.sampler.epoch(0) for name, t in trainers.items()}
        for repeat in range(args.repeats):
            for name, t in trainers.items():
                for i in range(args.warmup + args.steps):
                    step = next(batches[name])
                    comm.barrier()
                    before = t.sync.exposed_time
                    t0 = comm.wtime()
                    t.train_step(step)
                    elapsed = np.array([comm.wtime() - t0, t.sync.exposed_time - before])
                    _, slowest = comm.allreduce_min_max(elapsed)
                    if i >= args.warmup:
                        step_times[name].append(slowest[0])
                        exposed[name].append(slowest[1])
        floor = bare_allreduce_ms(comm, nbytes, max(args.steps, 5))
        plain = np.median(step_times["plain"]) if "plain" in step_times else None
        for name in trainers:
            med, q1, q3 = percentile_row(step_times[name])
            row = dict(model=model_name, hidden=hidden, ranks=comm.size, option=name,
                       step_ms=1e3 * med, step_ms_q1=1e3 * q1, step_ms_q3=1e3 * q3,
                       vs_plain=None if plain is None else med / plain,
                       exposed_comm_ms=1e3 * float(np.median(exposed[name])),
                       bare_allreduce_ms=floor, grad_mib=nbytes / 2 ** 20,
                       optimizer_state_mib=trainers[name].optimizer_state_bytes / 2 ** 20,
                       description=trainers[name].sync.describe())
            results.append(row)
    if lead:
        print(f"\n{comm.size} rank(s), {comm.library}; 64 samples per rank, step time = slowest rank, "
              f"median [IQR] over {args.steps} x {args.repeats} steps\n")
        print("| model | option | step ms | vs plain | exposed comm ms | bare Allreduce ms | opt. state MiB/rank |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            vs = "" if r["vs_plain"] is None else f"{r['vs_plain']:.2f}"
            print(f"| {r['model']} ({r['grad_mib']:.1f} MiB) | {r['option']} | {r['step_ms']:.2f} "
                  f"[{r['step_ms_q1']:.2f}-{r['step_ms_q3']:.2f}] | {vs} | {r['exposed_comm_ms']:.2f} | "
                  f"{r['bare_allreduce_ms']:.2f} | {r['optimizer_state_mib']:.2f} |")
        if probe is not None:
            print(f"\noverlap probe: {probe['mib']:.0f} MiB Allreduce {probe['allreduce_ms']:.2f} ms, compute "
                  f"{probe['compute_ms']:.2f} ms alone; together (share of the Allreduce hidden):")
            for key in ("iallreduce, no test", "iallreduce + testall", "thread"):
                print(f"  {key:22s} {probe[key]['total_ms']:8.2f} ms  hidden {probe[key]['hidden']:+.2f}")
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"comm_options-{comm.size}.json")
        with open(path, "w") as f:
            json.dump(dict(ranks=comm.size, library=comm.library, time=time.strftime("%Y-%m-%d %H:%M:%S"),
                           overlap_probe=probe, results=results), f, indent=1)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
