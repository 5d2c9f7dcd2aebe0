"""The chaos run, bounded: 10 random faults (SIGKILL, SIGTERM, SIGINT, SIGSTOP of a rank before
or after MPI starts, truncated or bit-flipped checkpoints, a full disk, a NaN batch) with
recovery by --resume, sometimes on another rank count, and the final weights those of a run
that never failed (bitwise, or within 1e-10 where the rank count changed)."""

import json
import subprocess
import sys

from support import REPO, child_env


def test_ten_random_faults_lose_nothing(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "mpidl.chaos", "--faults", "10", "--seed", "3", "--ranks", "2",
                           "--other-ranks", "3", "--rank-change", "0.3",
                           "--report", str(report), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == []
    faults = [e for e in result["events"] if e["kind"] != "none"]
    assert len(faults) == 10 and len({e["kind"] for e in faults}) >= 4, result["by_kind"]
    assert all(e.get("seconds_to_end", 0) < 30 for e in faults)
    assert all(0 <= e["steps_lost"] <= 40 for e in faults if "steps_lost" in e)
    assert sum("steps_lost" in e for e in faults) >= 8, faults
    assert {e["ranks"] for e in result["events"]} == {2, 3}  # resumed on another rank count too
    assert result["comparisons"] and result["events"][-1]["finished"]
