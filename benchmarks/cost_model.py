"""A latency-bandwidth (alpha-beta) model of the ring Allreduce, fitted to the microbenchmark,
and step-time predictions built on it.

Ring Allreduce of n bytes on p ranks: 2(p-1) messages each way, 2(p-1)/p * n bytes per rank:

    t(p, n) = 2(p-1) * alpha + 2(p-1)/p * n * beta

A step on p ranks = the compute of one rank (measured on 1 rank, stretched by p/cores when
ranks share cores) + t(p, gradient bytes). Across nodes the network link is the slowest
hop of the ring, so the same formula is used with the network's alpha and beta, which
this machine cannot measure: they are stated assumptions (flags of run_all.py).
"""

from __future__ import annotations

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


def predict_step(compute_s: float, grad_bytes: float, ranks: int, ranks_per_node: int, cores_per_node: int,
                 shm: tuple[float, float], net: tuple[float, float]) -> float:
    """Seconds per step: compute slowed by sharing cores, plus the ring over the slowest link."""
    oversubscribed = max(1.0, min(ranks, ranks_per_node) / cores_per_node)
    link = shm if ranks <= ranks_per_node else net
    return compute_s * oversubscribed + allreduce_time(ranks, grad_bytes, *link)
