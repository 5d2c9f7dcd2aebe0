"""benchmarks/run_all.py --quick runs end to end and writes sane results (numbers, not timings)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from support import REPO, child_env


@pytest.mark.slow
def test_quick_benchmark_writes_sane_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run_all.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, env=child_env(),
                          cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name in ("results.json", "allreduce.csv", "training.csv", "cost_model.csv", "report.md",
                 "allreduce.png", "scaling.png", "breakdown.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())

    by_ranks = {a["ranks"]: a for a in res["allreduce"]}
    assert set(by_ranks) == {1, 2}
    two = by_ranks[2]
    assert two["copy_bandwidth_GBps"] > 0
    sizes = [r["bytes"] for r in two["rows"]]
    assert sizes[0] == 1024 and sizes == sorted(sizes) and len(sizes) >= 4
    for r in two["rows"]:
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"])  # 2(p-1)/p = 1 at p = 2
        assert r["ring_bound_s"] == pytest.approx(r["bytes"] / (two["copy_bandwidth_GBps"] * 1e9))

    (over,) = res["overhead"]
    assert over["ranks"] == 2 and over["grad_bytes"] > 0 and math.isfinite(over["ratio"]) and over["ratio"] > 0

    weak = {r["ranks"]: r for r in res["training"] if r["kind"] == "weak"}
    strong = {r["ranks"]: r for r in res["training"] if r["kind"] == "strong"}
    assert set(weak) == set(strong) == {1, 2}
    assert weak[1]["efficiency"] == pytest.approx(1.0) and strong[1]["efficiency"] == pytest.approx(1.0)
    assert weak[2]["global_batch"] == 128 and strong[1]["global_batch"] == strong[2]["global_batch"] == 128
    for r in res["training"]:
        t = r["timing"]
        assert r["samples_per_sec"] > 0 and 0 < r["efficiency"] < 4
        assert sum(t["fraction"].values()) == pytest.approx(1.0)
        assert sum(t["mean_ms"].values()) == pytest.approx(t["step_ms"])
        assert 0 <= t["slowest_rank"] < r["ranks"] and len(t["per_rank_ms"]) == r["ranks"]

    model = res["cost_model"]
    assert model["alpha_s"] >= 0 and model["beta_s_per_byte"] >= 0
    assert any(row["measured_step_ms"] is not None for row in model["rows"])
    assert any(row["nodes"] > 1 for row in model["rows"])
    report = (out / "report.md").read_text()
    for heading in ("## 1. Allreduce", "## 2. Framework overhead", "## 3. Step breakdown", "## 4. Scaling",
                    "## 5. Peer", "## 6. Cost model"):
        assert heading in report

    if importlib.util.find_spec("torch") is not None:
        (peer,) = res["peer"]
        assert peer["ranks"] == 2 and peer["twin_verified"] and peer["samples_per_sec"] > 0
        assert peer["ratio"] == pytest.approx(peer["mpidl_samples_per_sec"] / peer["samples_per_sec"])
        assert (out / "peer.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model,T,S", [(["--model", "mlp", "--hidden", "64,64"], 2, 2),
                                       (["--model", "transformer"], 2, 2), (["--model", "mlp"], 1, 4)])
def test_model_parallel_bytes_per_step_equal_the_formula(model, T, S, tmp_path):
    spec = importlib.util.spec_from_file_location("model_parallel", os.path.join(REPO, "benchmarks", "model_parallel.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(4, T, S, [*model, "--batch-size", "32", "--dataset", "digits"], steps=30, warmup=3)
    assert (result["tensor"], result["pipeline"], result["data"]) == (T, S, 1)
    for r in result["ranks"]:
        assert r["tensor_bytes_per_step"] == r["tensor_bytes_formula"]
        assert r["pipeline_bytes_per_step"] == r["pipeline_bytes_formula"]
        assert r["pipeline_bytes_per_step"] > 0  # 30 steps of 22 per epoch: an evaluation lies between
    assert sum(r["tensor_bytes_per_step"] for r in result["ranks"]) > 0 or T == 1
    # each rank holds a part: the parameters of the ranks add up to at least the whole model
    assert sum(r["param_bytes"] for r in result["ranks"]) >= result["whole_params"] * 4


@pytest.mark.slow
def test_whole_node_benchmark_runs_all_five_ways(tmp_path):
    """mpidl 2x1, 1x2 and 2x1 with ZeRO, PyTorch one process x 2 threads and DDP 2x1, on the mlp: every way
    trains and the PyTorch network is checked to be mpidl's (same forward on the same weights)."""
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "whole_node.py"), "--quick", "--rounds",
                           "1", "--only", "mlp", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=child_env(), cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads((out / "whole_node.json").read_text())
    (row,) = res["results"]
    C = res["meta"]["cores"]
    assert set(row["samples_per_s"]) == {f"mpidl {C}x1", f"mpidl 1x{C}", f"mpidl {C}x1 zero-1", f"pytorch 1x{C}",
                                         f"pytorch ddp {C}x1"}
    rates = row["samples_per_s"]
    assert row["ratio"] == pytest.approx(rates[row["mpidl_best"]] / rates[row["pytorch_best"]])
    assert all(v > 0 for v in row["samples_per_s"].values())
    assert row["pytorch_twin_verified"] is True
    assert 0 < row["gemm_fraction"] < 1.5 and res["meta"]["gemm_gflops"] > 0
    assert "| mlp 784-256-256-10 |" in (out / "whole_node.md").read_text()


@pytest.mark.slow
def test_resnet_breakdown_finds_every_layer_type_on_both_sides(tmp_path):
    """The per-layer side-by-side: each group (convolutions by weight shape, batch norm by
    channels, ReLU) is found in mpidl's timers and in PyTorch's profile, both passes, and the
    groups add up to no more than mpidl's instrumented step."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("resnet_breakdown", os.path.join(REPO, "benchmarks",
                                                                                    "resnet_breakdown.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--shape", "3,16,16", "--batch", "8", "--steps", "1", "--rounds", "1",
                       "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "resnet_breakdown.json").read_text())
    groups = {g["group"]: g for g in res["groups"]}
    expected = {"conv 3->16 3x3", "conv 16->16 3x3", "conv 16->32 3x3", "conv 16->32 1x1", "conv 32->32 3x3",
                "conv 32->64 3x3", "conv 32->64 1x1", "conv 64->64 3x3", "batch norm 16", "batch norm 32",
                "batch norm 64", "ReLU"}
    assert set(groups) == expected
    for g in groups.values():
        for side in ("mpidl", "pytorch"):
            assert g[f"{side}_fwd_ms"] > 0 and g[f"{side}_bwd_ms"] > 0, (g, side)
    listed = sum(g["mpidl_fwd_ms"] + g["mpidl_bwd_ms"] for g in groups.values())
    assert listed < res["instrumented_step_ms"]["mpidl"]
    assert res["rest_ms"]["mpidl"] == pytest.approx(res["instrumented_step_ms"]["mpidl"] - listed)
    assert all(v > 0 for v in res["step_ms"].values())
    table = (tmp_path / "resnet_breakdown.md").read_text()
    assert "| conv 16->16 3x3 |" in table and "whole step, no timers" in table
