"""The trainer's command line: step-time summary on rank 0, in summary.json, and --timeline."""

import json

import pytest

from support import run_train


@pytest.mark.slow
def test_two_ranks_print_timing_and_write_a_timeline(tmp_path):
    timeline = tmp_path / "trace.json"
    proc = run_train(2, ["--model", "mlp", "--max-steps", "30", "--batch-size", "32", "--progress", "none",
                         "--out", str(tmp_path / "run"), "--timeline", str(timeline), "--prefetch", "2"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("time per step, mean of 2 rank(s) over 29 steps") == 1  # rank 0 only
    assert "slowest rank" in proc.stdout
    timing = json.loads((tmp_path / "run" / "summary.json").read_text())["timing"]
    assert timing["phases"] == ["data", "forward", "backward", "allreduce", "optimizer"]
    assert timing["slowest_rank"] in (0, 1) and len(timing["per_rank_ms"]) == 2
    trace = json.loads(timeline.read_text())
    assert {e["pid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}
    assert {e["tid"] for e in trace["traceEvents"] if e["ph"] == "X"} == {0, 1}  # training and loader threads
