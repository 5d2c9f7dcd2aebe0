"""The chaos run, bounded: 10 random faults (SIGKILL, SIGTERM, SIGINT, SIGSTOP of a rank,
truncated or bit-flipped checkpoints) with recovery by --resume, and the final weights
bitwise those of a run that never failed."""

import json
import subprocess
import sys

from support import REPO, child_env


def test_ten_random_faults_lose_nothing(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "mpidl.chaos", "--faults", "10", "--seed", "3", "--ranks", "2",
                           "--report", str(report), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failures"] == []
    faults = [e for e in result["events"] if e["kind"] != "none"]
    assert len(faults) == 10 and len({e["kind"] for e in faults}) >= 4, result["by_kind"]
    assert all(e.get("seconds_to_end", 0) < 30 for e in faults)
    assert result["events"][-1]["finished"]
