"""The chaos run: train under a supervisor that injects random faults and recovers from each
as a user would, then check that nothing was lost.

    python -m mpidl.chaos --faults 20 --seed 1 --ranks 2 -- --model mlp --hidden 64 --epochs 200 --max-steps 3000

Everything after ``--`` goes to ``python -m mpidl.train``. The supervisor first trains once
without faults (the reference), then starts the same run with ``--checkpoint-dir`` and
``--resume auto`` again and again; in each attempt, once a new checkpoint exists, it injects
one fault drawn from a seeded schedule:

- ``kill``: SIGKILL of a random rank;
- ``term``, ``int``: SIGTERM or SIGINT (Ctrl-C) to the launcher;
- ``stop``: SIGSTOP of a random rank, so the others wait in a collective until the watchdog
  (``--collective-timeout``) ends the job;
- ``truncate``, ``flip``: SIGKILL of a rank, and then the newest checkpoint is cut short or
  has bytes flipped: the next resume must skip it and take an older one.

It checks that each fault ends the job within ``--fault-timeout`` seconds, that no damaged
checkpoint is ever loaded, that each resume loses at most one checkpoint interval of steps,
and that the final weights are bitwise those of the reference. A JSON report goes to
``--report``; the exit status is 0 when every check held.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

KINDS = ("kill", "term", "int", "stop", "truncate", "flip")
RESUMED = re.compile(r"resumed from (\S+): step (\d+)")


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else (shutil.which("mpiexec") or "mpiexec")


def _checkpoints(folder: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoint files, oldest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(folder, n)) for n in names if (m := re.match(r"ckpt-(\d+)\.npz$", n))]
    return sorted(found)


def rank_pids(marker: str) -> list[int]:
    """PIDs of the Python ranks (not the launcher) whose command line holds `marker`."""
    found = subprocess.run(["pgrep", "-f", f"mpidl.train.*{marker}"], capture_output=True, text=True)
    pids = []
    for pid in map(int, found.stdout.split()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"python" in os.path.basename(f.read().split(b"\0")[0]):
                    pids.append(pid)
        except OSError:
            pass
    return sorted(pids)


def _weights(out: str) -> np.ndarray:
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        return z["params"]


def _damage(path: str, kind: str, rng: random.Random) -> None:
    size = os.path.getsize(path)
    if kind == "truncate":
        with open(path, "r+b") as f:
            f.truncate(rng.randrange(1, size))
    else:
        with open(path, "r+b") as f:
            for _ in range(8):
                f.seek(rng.randrange(size))
                byte = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte[0] ^ 0xFF]))


class Supervisor:
    def __init__(self, args, train_args):
        self.args, self.train_args = args, train_args
        self.rng = random.Random(args.seed)
        self.work = args.work or tempfile.mkdtemp(prefix="mpidl-chaos-")
        self.ck = os.path.join(self.work, "checkpoints")
        self.out = os.path.join(self.work, "run")
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.events: list[dict] = []
        self.damaged: set[str] = set()
        self.failures: list[str] = []

    def command(self, out: str, checkpoints: bool) -> list[str]:
        cmd = [_mpiexec(), "-n", str(self.args.ranks), sys.executable, "-m", "mpidl.train", *self.train_args,
               "--out", out, "--progress", "none", "--collective-timeout", str(self.args.collective_timeout)]
        if checkpoints:
            cmd += ["--checkpoint-dir", self.ck, "--checkpoint-every", str(self.args.every), "--keep-last", "0",
                    "--resume", "auto"]
        return cmd

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[chaos] {message}", flush=True)

    def reference(self) -> np.ndarray:
        out = os.path.join(self.work, "reference")
        proc = subprocess.run(self.command(out, False), capture_output=True, text=True, env=self.env)
        if proc.returncode != 0:
            raise SystemExit(f"mpidl.chaos: the reference run failed:\n{proc.stderr[-3000:]}")
        return _weights(out)

    def check_resume(self, stdout: str, newest_good_before: int) -> None:
        found = RESUMED.search(stdout)
        if found is None:
            return
        path, step = found.group(1), int(found.group(2))
        if os.path.abspath(path) in self.damaged:
            self.failures.append(f"a damaged checkpoint was loaded: {path}")
        lost = newest_good_before - step
        if lost > 0:
            self.failures.append(f"resumed from step {step} although step {newest_good_before} was saved intact")

    def attempt(self, kind: str) -> dict:
        """One start of the run with one fault; returns what happened."""
        before = [s for s, p in _checkpoints(self.ck) if os.path.abspath(p) not in self.damaged]
        newest_before = before[-1] if before else 0
        t0 = time.monotonic()
        proc = subprocess.Popen(self.command(self.out, True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        event = {"kind": kind, "resumed_from": None}
        injected = None
        if kind != "none":
            # a checkpoint this attempt wrote (training is under way), then a random moment
            started = time.time()
            deadline = time.monotonic() + self.args.fault_timeout * 4
            while proc.poll() is None and time.monotonic() < deadline:
                if any(os.path.getmtime(p) > started for _, p in _checkpoints(self.ck) if os.path.exists(p)):
                    break
                time.sleep(0.05)
            time.sleep(self.rng.uniform(0, self.args.jitter))
            if proc.poll() is None:
                ranks = rank_pids(self.out)
                injected = time.monotonic()
                if kind in ("term", "int"):
                    proc.send_signal(signal.SIGTERM if kind == "term" else signal.SIGINT)
                elif ranks:
                    victim = self.rng.choice(ranks)
                    os.kill(victim, signal.SIGSTOP if kind == "stop" else signal.SIGKILL)
        try:
            stdout, stderr = proc.communicate(timeout=self.args.fault_timeout * 6)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            self.failures.append(f"{kind}: the job did not end")
        for pid in rank_pids(self.out):  # a stopped rank the launcher could not end
            os.kill(pid, signal.SIGKILL)
        ended = time.monotonic()
        if injected is not None:
            event["seconds_to_end"] = round(ended - injected, 2)
            if ended - injected > self.args.fault_timeout:
                self.failures.append(f"{kind}: the job took {ended - injected:.1f} s to end after the fault")
        self.check_resume(stdout, newest_before)
        if (found := RESUMED.search(stdout)) is not None:
            event["resumed_from"] = int(found.group(2))
        event["exit_status"] = proc.returncode
        if proc.returncode not in (0, 75) and kind in ("none", "term", "int"):
            self.failures.append(f"{kind}: exit {proc.returncode}: {stderr.strip()[-500:]}")
        event["stderr_tail"] = stderr.strip()[-300:]
        event["finished"] = proc.returncode == 0 and "done:" in stdout
        good = [(s, p) for s, p in _checkpoints(self.ck) if os.path.abspath(p) not in self.damaged]
        event["newest_checkpoint"] = good[-1][0] if good else 0
        if kind in ("truncate", "flip") and good and not event["finished"]:
            step, path = good[-1]
            _damage(path, kind, self.rng)
            self.damaged.add(os.path.abspath(path))
            event["damaged_checkpoint"] = step
        event["wall_seconds"] = round(ended - t0, 2)
        return event

    def run(self) -> dict:
        self.log(f"work folder {self.work}; reference run first")
        reference = self.reference()
        t0 = time.monotonic()
        for i in range(self.args.faults):
            kind = self.rng.choice(self.args.kinds)
            event = self.attempt(kind)
            self.events.append(event)
            self.log(f"fault {i + 1}/{self.args.faults}: {kind}: exit {event['exit_status']}, resumed from "
                     f"{event['resumed_from']}, newest checkpoint {event['newest_checkpoint']}")
            if event["finished"]:
                self.log("the run reached its target; starting it afresh for the remaining faults")
                self.compare(reference)
                shutil.rmtree(self.ck, ignore_errors=True)
                self.damaged.clear()
        final = self.attempt("none")
        self.events.append(final)
        if not final["finished"]:
            self.failures.append(f"the last resume did not finish (exit {final['exit_status']})")
        else:
            self.compare(reference)
        report = {"faults": self.args.faults, "ranks": self.args.ranks, "seed": self.args.seed,
                  "seconds": round(time.monotonic() - t0, 1), "events": self.events, "failures": self.failures,
                  "by_kind": self.by_kind()}
        return report

    def compare(self, reference: np.ndarray) -> None:
        if not np.array_equal(_weights(self.out), reference):
            self.failures.append("the final weights differ from the uninterrupted run")

    def by_kind(self) -> dict:
        out = {}
        for e in self.events:
            if e["kind"] == "none":
                continue
            k = out.setdefault(e["kind"], {"count": 0, "seconds_to_end": []})
            k["count"] += 1
            if "seconds_to_end" in e:
                k["seconds_to_end"].append(e["seconds_to_end"])
        for k in out.values():
            times = k.pop("seconds_to_end")
            k["max_seconds_to_end"] = max(times) if times else None
        return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m mpidl.chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--every", type=int, default=20, help="--checkpoint-every of the run (steps)")
    ap.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS),
                    help=f"comma-separated, from {','.join(KINDS)}")
    ap.add_argument("--collective-timeout", type=float, default=5.0, help="the run's watchdog (ends a stopped rank)")
    ap.add_argument("--fault-timeout", type=float, default=30.0, help="longest a fault may take to end the job")
    ap.add_argument("--jitter", type=float, default=0.3, help="random delay (s) before a fault")
    ap.add_argument("--work", help="folder for the runs (default: a new temporary one)")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(own)
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        ap.error(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if not train_args:
        train_args = ["--model", "mlp", "--hidden", "64", "--epochs", "200", "--max-steps", "3000",
                      "--dtype", "float64"]
    report = Supervisor(args, train_args).run()
    text = json.dumps(report, indent=2)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    print(f"chaos: {report['faults']} faults in {report['seconds']} s on {report['ranks']} ranks; "
          f"by kind {json.dumps(report['by_kind'])}; "
          + ("all checks held" if not report["failures"] else f"FAILED: {'; '.join(report['failures'])}"), flush=True)
    return 0 if not report["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
