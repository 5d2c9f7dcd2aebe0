"""The latency-bandwidth (alpha-beta) model of the ring Allreduce, and ``--allreduce auto``,
which measures the link at start-up and picks the reduction the model predicts fastest.

Ring Allreduce of n bytes on p ranks: 2(p-1) messages each way, 2(p-1)/p * n bytes per rank:

    t(p, n) = 2(p-1) * alpha + 2(p-1)/p * n * beta

Checked in the network lab (benchmarks/network_lab.py, README "A network lab") within 2% of
measured steps where the link is the bottleneck. A 16-bit codec halves n and adds its own
cost per element (encode, the user-defined sum's decode-add-encode at each of the ring's
steps, decode), measured here on this rank.
"""

from __future__ import annotations

import time

import numpy as np


def ring_terms(p: int, n: float) -> tuple[float, float]:
    return 2 * (p - 1), 2 * (p - 1) / p * n


def fit_alpha_beta(points: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Least squares on relative error (small and large messages count alike) over
    (ranks, bytes, seconds) points with ranks >= 2; alpha, beta kept non-negative."""
    pts = [(p, n, t) for p, n, t in points if p >= 2 and t > 0]
    if not pts:
        return 0.0, 0.0
    a = np.array([ring_terms(p, n) for p, n, _ in pts]) / np.array([t for *_, t in pts])[:, None]
    alpha, beta = np.linalg.lstsq(a, np.ones(len(pts)), rcond=None)[0]
    if alpha < 0 or beta < 0:  # refit the one that makes sense alone
        only_beta = float(np.sum(a[:, 1]) / np.sum(a[:, 1] ** 2))
        only_alpha = float(np.sum(a[:, 0]) / np.sum(a[:, 0] ** 2))
        alpha, beta = (0.0, only_beta) if alpha < 0 else (only_alpha, 0.0)
    return float(alpha), float(beta)


def allreduce_time(p: int, n: float, alpha: float, beta: float) -> float:
    if p <= 1:
        return 0.0
    la, lb = ring_terms(p, n)
    return la * alpha + lb * beta


# -- --allreduce auto ----------------------------------------------------------------
# Three message sizes, the largest well past a shaper's burst (a token bucket lets its first
# bytes through at line rate); under a second at 100 Mbit/s.
PROBE_BYTES = (1 << 14, 1 << 19, 1 << 21)


def measure_link(comm, sizes=PROBE_BYTES, repeats: int = 2) -> tuple[float, float]:
    """alpha, beta of this world's Allreduce, from the slowest rank's median times."""
    points = []
    for n in sizes:
        buf = np.zeros(n // 4, dtype=np.float32)
        comm.allreduce_sum_(buf, what="Allreduce(link probe)")  # warm-up
        times = np.zeros(repeats)
        for i in range(repeats):
            comm.barrier()
            t0 = time.perf_counter()
            comm.allreduce_sum_(buf, what="Allreduce(link probe)")
            times[i] = time.perf_counter() - t0
        _, slowest = comm.allreduce_min_max(times)
        points.append((comm.size, n, float(np.median(slowest))))
    return fit_from_probes(points)


def fit_from_probes(points) -> tuple[float, float]:
    """beta from the difference of the two largest probes (a shaper's burst and the latency
    cancel), alpha from the smallest after its bandwidth term; both non-negative."""
    (p, n0, t0), (_, n1, t1), (_, n2, t2) = sorted(points, key=lambda q: q[1])[:1] + sorted(points, key=lambda q: q[1])[-2:]
    beta = max(0.0, (t2 - t1) / (ring_terms(p, n2)[1] - ring_terms(p, n1)[1]))
    if beta == 0.0:
        return fit_alpha_beta(points)
    alpha = max(0.0, (t0 - ring_terms(p, n0)[1] * beta) / ring_terms(p, n0)[0])
    return alpha, beta


def codec_seconds_per_element(codec: str, elements: int = 1 << 18) -> float:
    """This rank's cost per gradient element of a 16-bit codec over one ring Allreduce."""
    from mpidl.parallel.compress import DECODE, ENCODE, add_encoded
    x = np.random.default_rng(0).standard_normal(elements).astype(np.float32)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        words = ENCODE[codec](x)
        other = words.copy()
        add_encoded(codec, other, words)
        DECODE[codec](words)
        best = min(best, time.perf_counter() - t0)
    return best / elements


def choose_reduction(comm, elements: int, itemsize: int = 4) -> tuple[str | None, str]:
    """(codec or None, why): the reduction of `elements` gradient values with the lowest
    predicted time, flat in the gradient's precision or 16-bit (fp16, bf16); the same answer on
    every rank (rank 0's, broadcast)."""
    alpha, beta = measure_link(comm)
    n = elements * itemsize
    p = comm.size
    # Each ring step sums a 1/p block: (p-1) decode-add-encodes of n/p plus the ends' codings.
    predicted = {"flat": allreduce_time(p, n, alpha, beta)}
    for codec in ("bf16", "fp16"):
        predicted[codec] = (allreduce_time(p, elements * 2, alpha, beta)
                            + codec_seconds_per_element(codec) * elements * max(1.0, 2 * (p - 1) / p))
    order = np.array([predicted[k] for k in ("flat", "bf16", "fp16")])
    comm.bcast_(order, root=0)
    names = ["flat", "bf16", "fp16"]
    best = names[int(np.argmin(order))]
    rate = 8 / beta / 1e6 if beta > 0 else float("inf")
    why = (f"--allreduce auto: link {alpha * 1e6:.0f} us + {rate:.0f} Mbit/s (measured at start-up); "
           f"predicted reduction of {n / 2**20:.2f} MiB: " +
           ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in zip(names, order)) + f" -> {best}")
    return (None if best == "flat" else best), why
