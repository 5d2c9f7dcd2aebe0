"""benchmarks/comm_options.py runs end to end in its quick mode and writes its table."""

import json

from support import run_mpi


def test_comm_options_benchmark_quick(tmp_path):
    options = "plain,bucket 1MiB test,zero 1,bf16"
    proc = run_mpi(2, ["benchmarks/comm_options.py", "--quick", "--models", "mlp", "--dataset", "digits",
                       "--options", options, "--out", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "comm_options-2.json").read_text())
    assert [r["option"] for r in report["results"]] == options.split(",")
    assert all(r["step_ms"] > 0 for r in report["results"])
    zero = report["results"][2]
    assert abs(zero["optimizer_state_mib"] - report["results"][0]["optimizer_state_mib"] / 2) < 1e-3
    assert set(report["overlap_probe"]) >= {"iallreduce, no test", "iallreduce + testall", "thread"}
    assert "| mlp" in proc.stdout
