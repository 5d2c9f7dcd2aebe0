"""The latency-bandwidth (alpha-beta) model of the ring Allreduce, and ``--allreduce auto``,
which measures the link at start-up and picks the reduction the model predicts fastest.

Ring Allreduce of n bytes on p ranks: 2(p-1) messages each way, 2(p-1)/p * n bytes per rank:

    t(p, n) = 2(p-1) * alpha + 2(p-1)/p * n * beta

Checked in the network lab (benchmarks/network_lab.py, README "A network lab") within 20% of
measured steps in 11 of 12 cases. A 16-bit codec halves n and adds its own cost per element
(encode, the user-defined sum's decode-add-encode at each of the ring's steps, decode),
measured on the ranks. Buckets started during backward wait only for what backward does not
cover (:func:`reduction_wait`); sync.AutoSync feeds it step 1's timed backward.
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


def codec_seconds_per_element(codec: str, elements: int = 1 << 18, repeats: int = 5) -> float:
    """This rank's cost per gradient element of a 16-bit codec over one ring Allreduce, the
    median of `repeats` on `elements` values (the model's gradient, up to 2**20): ranks that
    share cores pay for it at the speed they get while sharing, not at their best moment."""
    from mpidl.parallel.compress import DECODE, ENCODE, add_encoded
    elements = max(1, min(int(elements), 1 << 20))
    x = np.random.default_rng(0).standard_normal(elements).astype(np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        words = ENCODE[codec](x)
        other = words.copy()
        add_encoded(codec, other, words)
        DECODE[codec](words)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / elements


def reduction_wait(p: int, alpha: float, beta: float, buckets, wire_itemsize: int,
                   codec_seconds: float = 0.0) -> float:
    """Seconds the step waits after backward until its last bucket is reduced. `buckets`:
    (elements, ready) in launch order, `ready` in seconds relative to the end of backward
    (negative: ready during it; 0: at its end). One reduction at a time on the link; a 16-bit
    codec adds `codec_seconds` per element for each ring step that touches it."""
    clock = -np.inf
    for elements, ready in buckets:
        coding = codec_seconds * elements * max(1.0, 2 * (p - 1) / p)
        clock = max(clock, ready) + allreduce_time(p, elements * wire_itemsize, alpha, beta) + coding
    return max(0.0, float(clock))


def describe_link(alpha: float, beta: float) -> str:
    rate = 8 / beta / 1e6 if beta > 0 else float("inf")
    return f"link {alpha * 1e6:.0f} us + {rate:.0f} Mbit/s (measured at start-up)"


# A 16-bit codec rounds every gradient: it is taken only when predicted at least this much
# faster than the best exact reduction, not on a near-tie within the model's own error.
LOSSY_MARGIN = 0.1


def choose(comm, predicted: dict[str, float], lossy=()) -> str:
    """The name with the lowest predicted time, the same on every rank (rank 0's times); one
    of the `lossy` names only if it beats the fastest other one by LOSSY_MARGIN."""
    names = list(predicted)
    times = np.array([predicted[k] for k in names])
    comm.bcast_(times, root=0)
    predicted.update(zip(names, times.tolist()))
    best = names[int(np.argmin(times))]
    exact = [k for k in names if k not in lossy]
    if best in lossy and exact:
        best_exact = min(exact, key=predicted.get)
        if predicted[best] > (1 - LOSSY_MARGIN) * predicted[best_exact]:
            return best_exact
    return best
