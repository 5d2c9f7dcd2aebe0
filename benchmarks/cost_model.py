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

from mpidl.parallel.costmodel import allreduce_time, fit_alpha_beta, ring_terms  # noqa: F401,E402


def predict_step(compute_s: float, grad_bytes: float, ranks: int, ranks_per_node: int, cores_per_node: int,
                 shm: tuple[float, float], net: tuple[float, float]) -> float:
    """Seconds per step: compute slowed by sharing cores, plus the ring over the slowest link."""
    oversubscribed = max(1.0, min(ranks, ranks_per_node) / cores_per_node)
    link = shm if ranks <= ranks_per_node else net
    return compute_s * oversubscribed + allreduce_time(ranks, grad_bytes, *link)
