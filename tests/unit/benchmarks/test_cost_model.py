"""The benchmark's alpha-beta model: the fit recovers known parameters, predictions behave."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))
import cost_model  # noqa: E402


def test_fit_recovers_alpha_and_beta_of_exact_ring_times():
    alpha, beta = 3e-6, 1 / 5e9
    points = [(p, n, cost_model.allreduce_time(p, n, alpha, beta))
              for p in (2, 4, 8) for n in (1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 26)]
    points.append((1, 1 << 20, 1e-7))  # one rank does not reduce: ignored by the fit
    fa, fb = cost_model.fit_alpha_beta(points)
    assert fa == pytest.approx(alpha, rel=1e-6) and fb == pytest.approx(beta, rel=1e-6)


def test_negative_latency_is_refitted_as_bandwidth_only():
    # times exactly proportional to ring bytes minus a bit: least squares would give alpha < 0
    points = [(2, n, n / 1e9 - 1e-7) for n in (1 << 12, 1 << 16, 1 << 20)]
    alpha, beta = cost_model.fit_alpha_beta(points)
    assert alpha == 0.0 and beta > 0


def test_step_prediction_grows_with_ranks_and_oversubscription():
    shm, net = (2e-6, 1e-10), (5e-6, 1e-9)
    one = cost_model.predict_step(0.01, 4e6, 1, 2, 2, shm, net)
    assert one == pytest.approx(0.01)
    two = cost_model.predict_step(0.01, 4e6, 2, 2, 2, shm, net)
    four_on_two_cores = cost_model.predict_step(0.01, 4e6, 4, 4, 2, shm, net)
    across_nodes = cost_model.predict_step(0.01, 4e6, 4, 2, 2, shm, net)
    assert one < two < across_nodes
    assert four_on_two_cores > 0.02  # two ranks per core: compute takes twice as long


def test_the_start_up_probe_fit_ignores_a_shapers_burst():
    from mpidl.parallel.costmodel import fit_from_probes, ring_terms
    alpha, beta = 20e-6, 8 / 100e6           # 20 us, 100 Mbit/s
    burst = 64 * 1024                        # bytes a token bucket lets through at once
    points = []
    for n in (1 << 14, 1 << 19, 1 << 21):
        la, lb = ring_terms(2, n)
        points.append((2, n, la * alpha + max(0.0, lb - burst) * beta))
    fitted_alpha, fitted_beta = fit_from_probes(points)
    assert abs(fitted_beta / beta - 1) < 1e-9
    assert fitted_alpha == 0.0 or fitted_alpha < alpha  # the small probe rode the burst


def test_reduction_wait_hides_what_backward_covers():
    from mpidl.parallel.costmodel import allreduce_time, reduction_wait
    alpha, beta, p = 10e-6, 8 / 1e9, 4          # 10 us, 1 Gbit/s
    whole = reduction_wait(p, alpha, beta, [(1_000_000, 0.0)], 4)
    assert whole == pytest.approx(allreduce_time(p, 4e6, alpha, beta))
    first, last = allreduce_time(p, 3.6e6, alpha, beta), allreduce_time(p, 0.4e6, alpha, beta)
    # the first 900k values ready long before backward ends: only the last bucket is waited for
    early = reduction_wait(p, alpha, beta, [(900_000, -2 * first), (100_000, 0.0)], 4)
    assert early == pytest.approx(last)
    # ready just before the end: the link is busy with the first bucket, the second queues behind it
    late = reduction_wait(p, alpha, beta, [(900_000, -first / 2), (100_000, 0.0)], 4)
    assert late == pytest.approx(first / 2 + last)
    assert early < late < whole + 2 * (p - 1) * alpha  # a second bucket costs one more latency term
    # a 16-bit codec halves the bytes and adds its coding per element
    coded = reduction_wait(p, alpha, beta, [(1_000_000, 0.0)], 2, codec_seconds=1e-9)
    assert coded == pytest.approx(allreduce_time(p, 2e6, alpha, beta) + 1e-9 * 1_000_000 * 1.5)


def test_a_lossy_codec_needs_a_clear_lead_over_the_best_exact_reduction():
    from mpidl.parallel.comm import SerialComm
    from mpidl.parallel.costmodel import LOSSY_MARGIN, choose
    lossy = {"bf16", "fp16"}
    near_tie = {"flat": 1.80e-3, "buckets 1 MiB": 1.81e-3, "bf16": 1.79e-3, "fp16": 1.9e-3}
    assert choose(SerialComm(), dict(near_tie), lossy) == "flat"
    clear = {"flat": 1.0, "bf16": (1 - LOSSY_MARGIN) * 0.99, "fp16": 0.95}
    assert choose(SerialComm(), dict(clear), lossy) == "bf16"
    assert choose(SerialComm(), {"bf16": 2.0, "fp16": 1.0}, lossy) == "fp16"   # nothing exact to prefer
    assert choose(SerialComm(), dict(near_tie)) == "bf16"                     # no names marked lossy
