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
  has bytes flipped: the next resume must skip it and take an older one;
- ``disk``: the checkpoint folder (a small tmpfs the supervisor mounts; needs root) is
  filled, so the next checkpoint write fails with "No space left on device"; the previous
  checkpoint must stay intact, and the space is freed before the resume;
- ``nan``: one training batch turns into NaN (through :func:`mlp`'s fault point); the run,
  started with ``--on-nonfinite abort``, halts on every rank at that step;
- ``early``: SIGSTOP of a rank right after the launch, before MPI has started: its peers
  wait in MPI_Init, where only mpidl's startup timer (``--collective-timeout``) ends them.

With ``--other-ranks``, a resume uses another rank count now and then (``--rank-change``).

It checks that each fault ends the job within ``--fault-timeout`` seconds, that no damaged
checkpoint is ever loaded, that each resume starts from the newest intact checkpoint and
loses at most one checkpoint interval of steps (counted exactly from the step records of
``--log-every 1``), and that the final weights are bitwise those of the reference (within
``--tolerance`` relative when the rank count changed on the way). A JSON report goes to
``--report``; the exit status is 0 when every check held.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from mpidl.nn import Module

KINDS = ("kill", "term", "int", "stop", "truncate", "flip", "disk", "nan", "early")
RESUMED = re.compile(r"resumed from (\S+): step (\d+)")
SAVED = re.compile(r"checkpoint: step (\d+) ->")  # printed when a save starts (written behind)
TRIGGER = "MPIDL_CHAOS_NAN_TRIGGER"  # a file whose appearance turns the next batch into NaN


class FaultPoint(Module):
    """Identity, except once after the file named by $MPIDL_CHAOS_NAN_TRIGGER appears: then
    the batch becomes NaN on this rank (the file is consumed)."""

    def __init__(self):
        super().__init__()
        self.trigger = os.environ.get(TRIGGER)

    def forward(self, x, train=True):
        if train and self.trigger and os.path.exists(self.trigger):
            try:
                os.unlink(self.trigger)
            except FileNotFoundError:  # another rank of this node took it first: it injects
                return x
            return x * np.nan
        return x

    def backward(self, dy):
        return dy


def mlp(sample_shape, num_classes, options):
    """The built-in mlp with a fault point in front: ``--model mpidl.chaos:mlp``."""
    from mpidl.models.classic import build_mlp
    from mpidl.nn import Sequential
    return Sequential({"fault": FaultPoint(), "mlp": build_mlp(sample_shape, num_classes, options)})


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
        self.trigger = os.path.join(self.work, "nan-trigger")
        self.env[TRIGGER] = self.trigger
        self.filler = None  # the file that fills the checkpoint disk during a 'disk' fault
        self.mounted = False
        self.events: list[dict] = []
        self.damaged: dict[str, int] = {}  # path -> inode of each checkpoint the supervisor damaged
        self.failures: list[str] = []
        self.comparisons: list[dict] = []
        self.ranks = args.ranks            # this attempt's rank count
        self.changed_ranks = False         # in the current run towards the target

    def command(self, out: str, checkpoints: bool) -> list[str]:
        cmd = [_mpiexec(), "-n", str(self.ranks), sys.executable, "-m", "mpidl.train", *self.train_args,
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

    def forget_rewritten(self) -> None:
        """A resume that fell back past a damaged checkpoint trains through its step again and
        writes a new, whole file under the same name (a new inode): that one may be loaded."""
        for path, inode in list(self.damaged.items()):
            try:
                if os.stat(path).st_ino != inode:
                    del self.damaged[path]
            except FileNotFoundError:
                del self.damaged[path]

    def mount_small_disk(self) -> None:
        """The checkpoint folder on a tmpfs of its own, so that a 'disk' fault fills only it."""
        os.makedirs(self.ck, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.args.disk_mb}m", "tmpfs", self.ck],
                                 capture_output=True, text=True)
        if mounted.returncode != 0 and not self.args.kinds_given:
            self.log(f"no 'disk' faults: mounting a tmpfs for the checkpoints failed "
                     f"({mounted.stderr.strip() or 'needs root'})")
            self.args.kinds = [k for k in self.args.kinds if k != "disk"]
            return
        if mounted.returncode != 0:
            raise SystemExit(f"mpidl.chaos: the 'disk' fault needs a tmpfs for the checkpoints, and mounting "
                             f"one failed ({mounted.stderr.strip() or 'needs root'}); leave 'disk' out of --kinds")
        self.mounted = True

    def fill_disk(self) -> None:
        """Leave less free space than half a checkpoint: the next write fails mid-way."""
        st = os.statvfs(self.ck)
        newest = _checkpoints(self.ck)
        size = os.path.getsize(newest[-1][1]) if newest else 1 << 20
        self.filler = os.path.join(self.ck, "filler")
        remaining = st.f_bavail * st.f_frsize - size // 2
        block = b"\0" * (1 << 20)
        try:
            with open(self.filler, "wb") as f:
                while remaining > 0:
                    f.write(block[:min(len(block), remaining)])
                    remaining -= len(block)
        except OSError as exc:  # full already: as intended
            if exc.errno != errno.ENOSPC:
                raise

    def free_disk(self) -> None:
        if self.filler is not None and os.path.exists(self.filler):
            os.unlink(self.filler)
        self.filler = None

    def attempt(self, kind: str) -> dict:
        """One start of the run with one fault; returns what happened."""
        self.forget_rewritten()
        before = [s for s, p in _checkpoints(self.ck) if os.path.abspath(p) not in self.damaged]
        newest_before = before[-1] if before else 0
        t0, wall_start = time.monotonic(), time.time()
        proc = subprocess.Popen(self.command(self.out, True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        lines: list[tuple[float, str]] = []  # (monotonic time, line) of stdout, read as it comes
        errors: list[str] = []
        readers = [threading.Thread(target=lambda: lines.extend((time.monotonic(), l) for l in proc.stdout),
                                    daemon=True),
                   threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
        for reader in readers:
            reader.start()
        event = {"kind": kind, "ranks": self.ranks, "resumed_from": None}
        injected = None
        if kind == "early":  # before MPI starts: as soon as the rank processes exist
            deadline = time.monotonic() + self.args.fault_timeout
            while proc.poll() is None and time.monotonic() < deadline and not rank_pids(self.out):
                time.sleep(0.005)
            ranks = rank_pids(self.out)
            if ranks and proc.poll() is None:
                injected = time.monotonic()
                os.kill(self.rng.choice(ranks), signal.SIGSTOP)
        elif kind != "none":
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
                elif kind == "disk":
                    self.fill_disk()
                elif kind == "nan":
                    with open(self.trigger, "w"):
                        pass
                elif ranks:
                    victim = self.rng.choice(ranks)
                    os.kill(victim, signal.SIGSTOP if kind == "stop" else signal.SIGKILL)
        try:
            proc.wait(timeout=self.args.fault_timeout * 6)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.failures.append(f"{kind}: the job did not end")
        for reader in readers:
            reader.join(timeout=10)
        stdout, stderr = "".join(line for _, line in lines), "".join(errors)
        resumed_at = next((t for t, line in lines if RESUMED.search(line)), None)
        if resumed_at is not None:
            event["seconds_to_resume"] = round(resumed_at - t0, 2)
        # An attempt stopped before training started (before MPI, say) never rewrote the step records.
        event["trained_to"] = self.last_step_trained() if self.metrics_written_since(wall_start) else None
        started = [int(m.group(1)) for m in map(SAVED.search, stdout.splitlines()) if m]
        event["last_checkpoint_started"] = started[-1] if started else newest_before
        self.free_disk()
        if os.path.exists(self.trigger):  # a run that ended before it read the trigger
            os.unlink(self.trigger)
        for pid in rank_pids(self.out):  # a stopped rank the launcher could not end
            os.kill(pid, signal.SIGKILL)
        ended = time.monotonic()
        if injected is not None:
            event["seconds_to_end"] = round(ended - injected, 2)
            event["injected_at"] = injected
            if ended - injected > self.args.fault_timeout:
                self.failures.append(f"{kind}: the job took {ended - injected:.1f} s to end after the fault")
        self.check_resume(stdout, newest_before)
        if (found := RESUMED.search(stdout)) is not None:
            event["resumed_from"] = int(found.group(2))
        event["exit_status"] = proc.returncode
        expected = {"none": (0,), "term": (0, 75), "int": (0, 75), "nan": (0, 3), "disk": (0, 2)}
        if kind in expected and proc.returncode not in expected[kind]:
            self.failures.append(f"{kind}: exit {proc.returncode}: {stderr.strip()[-500:]}")
        event["stderr_tail"] = stderr.strip()[-300:]
        event["finished"] = proc.returncode == 0 and "done:" in stdout
        good = [(s, p) for s, p in _checkpoints(self.ck) if os.path.abspath(p) not in self.damaged]
        event["newest_checkpoint"] = good[-1][0] if good else 0
        if kind in ("truncate", "flip") and good and not event["finished"]:
            step, path = good[-1]
            _damage(path, kind, self.rng)
            self.damaged[os.path.abspath(path)] = os.stat(path).st_ino
            event["damaged_checkpoint"] = step
        event["wall_seconds"] = round(ended - t0, 2)
        return event

    def metrics_written_since(self, wall_time: float) -> bool:
        try:
            return os.path.getmtime(os.path.join(self.out, "metrics.jsonl")) >= wall_time
        except OSError:
            return False

    def last_step_trained(self) -> int | None:
        """The last step of this run's step records (--log-every 1): where the fault hit."""
        try:
            with open(os.path.join(self.out, "metrics.jsonl")) as f:
                steps = [r["step"] for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "step"]
        except (OSError, ValueError, KeyError):
            return None
        return steps[-1] if steps else 0

    def account(self, fault: dict, recovery: dict) -> None:
        """What `fault` cost, seen from `recovery`, the first attempt after it that resumed."""
        resumed = recovery["resumed_from"] or 0
        if fault.get("trained_to") is None:
            fault["steps_lost"] = 0  # it struck before training started: nothing of its own to lose
        else:
            lost = max(0, fault["trained_to"] - resumed)
            fault["steps_lost"] = lost
            # At most one interval; plus, when the fault took the checkpoint being written behind
            # training (a kill mid-write, a full disk) or damaged the newest one, the steps since
            # that checkpoint started.
            started = fault["last_checkpoint_started"]
            allowed = self.args.every + (max(0, fault["trained_to"] - started) if resumed < started else 0)
            if fault.get("damaged_checkpoint") is not None:
                # The newest good checkpoint was damaged, and another may have been in flight
                # when the rank was killed: the one before the damaged one is where it resumes.
                allowed = max(allowed, self.args.every + fault["trained_to"] - fault["damaged_checkpoint"])
            if lost > min(allowed, 2 * self.args.every):
                self.failures.append(f"{fault['kind']}: {lost} steps lost (resumed from step {resumed}, "
                                     f"trained to {fault['trained_to']}), more than allowed ({allowed})")
        if recovery.get("seconds_to_resume") is not None:  # the job's end, then the next start's resume
            fault["seconds_to_recover"] = round(fault["seconds_to_end"] + recovery["seconds_to_resume"], 2)

    def recovered(self, pending: list[dict], event: dict) -> list[dict]:
        """Account the pending faults if `event` resumed (or had nothing to resume from); returns
        the faults still waiting, `event` included if it injected one."""
        if event["trained_to"] is not None:  # it trained: it recovered from every pending fault
            for fault in pending:
                self.account(fault, event)
            pending = []
        return pending + ([event] if event.get("injected_at") is not None else [])

    def next_rank_count(self) -> None:
        if self.args.other_ranks and self.rng.random() < self.args.rank_change:
            self.ranks = self.rng.choice(self.args.other_ranks)
        else:
            self.ranks = self.args.ranks
        self.changed_ranks |= self.ranks != self.args.ranks

    def run(self) -> dict:
        self.log(f"work folder {self.work}; reference run first")
        reference = self.reference()
        if "disk" in self.args.kinds:
            self.mount_small_disk()
        t0 = time.monotonic()
        pending: list[dict] = []  # faults whose recovery (a resumed attempt) has not come yet
        try:
            for i in range(self.args.faults):
                kind = self.rng.choice(self.args.kinds)
                if kind in ("stop", "early") and self.ranks == 1:
                    kind = "kill"  # one rank has no peer whose watchdog would notice
                event = self.attempt(kind)
                self.events.append(event)
                pending = self.recovered(pending, event)
                self.log(f"fault {i + 1}/{self.args.faults}: {kind} on {event['ranks']} rank(s): exit "
                         f"{event['exit_status']}, resumed from {event['resumed_from']}, trained to "
                         f"{event['trained_to']}, newest checkpoint {event['newest_checkpoint']}")
                if event["finished"]:
                    self.log("the run reached its target; starting it afresh for the remaining faults")
                    self.compare(reference)
                    for _, path in _checkpoints(self.ck):
                        os.unlink(path)
                    self.damaged.clear()
                    self.changed_ranks, pending = False, []
                self.next_rank_count()
            final = self.attempt("none")
            self.events.append(final)
            self.recovered(pending, final)
        finally:
            if self.mounted:
                subprocess.run(["umount", self.ck], capture_output=True)
        if not final["finished"]:
            self.failures.append(f"the last resume did not finish (exit {final['exit_status']})")
        else:
            self.compare(reference)
        for e in self.events:
            e.pop("injected_at", None)
        report = {"faults": self.args.faults, "ranks": self.args.ranks, "seed": self.args.seed,
                  "seconds": round(time.monotonic() - t0, 1), "events": self.events, "failures": self.failures,
                  "comparisons": self.comparisons, "by_kind": self.by_kind()}
        return report

    def compare(self, reference: np.ndarray) -> None:
        final = _weights(self.out)
        if self.changed_ranks:  # another rank count sums in another order: equal up to rounding
            err = float(np.abs(final - reference).max() / np.abs(reference).max())
            self.comparisons.append({"bitwise": False, "relative_error": err})
            if err > self.args.tolerance:
                self.failures.append(f"the final weights differ from the uninterrupted run by {err:.2e} "
                                     f"(the rank count changed; tolerance {self.args.tolerance:g})")
        else:
            self.comparisons.append({"bitwise": True, "equal": bool(np.array_equal(final, reference))})
            if not np.array_equal(final, reference):
                self.failures.append("the final weights differ from the uninterrupted run")

    def by_kind(self) -> dict:
        out = {}
        for e in self.events:
            if e["kind"] == "none":
                continue
            k = out.setdefault(e["kind"], {"count": 0, "seconds_to_end": [], "steps_lost": [],
                                           "seconds_to_recover": []})
            k["count"] += 1
            for key in ("seconds_to_end", "steps_lost", "seconds_to_recover"):
                if e.get(key) is not None:
                    k[key].append(e[key])
        for k in out.values():
            for key in ("seconds_to_end", "steps_lost", "seconds_to_recover"):
                values = k.pop(key)
                k[f"max_{key}"] = max(values) if values else None
                if key != "seconds_to_end":
                    k[f"mean_{key}"] = round(sum(values) / len(values), 2) if values else None
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
    ap.add_argument("--collective-timeout", type=float, default=8.0,
                    help="the run's watchdog (ends a stopped rank, also one stopped before MPI starts)")
    ap.add_argument("--other-ranks", type=lambda s: [int(v) for v in s.split(",") if v], default=[],
                    help="comma-separated rank counts a resume may switch to (e.g. 3)")
    ap.add_argument("--rank-change", type=float, default=0.25, help="chance that a resume uses --other-ranks")
    ap.add_argument("--tolerance", type=float, default=1e-10,
                    help="largest relative weight difference when the rank count changed (float64)")
    ap.add_argument("--disk-mb", type=int, default=256, help="size of the checkpoint tmpfs for 'disk' faults")
    ap.add_argument("--fault-timeout", type=float, default=30.0, help="longest a fault may take to end the job")
    ap.add_argument("--jitter", type=float, default=0.3, help="random delay (s) before a fault")
    ap.add_argument("--work", help="folder for the runs (default: a new temporary one)")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(own)
    args.kinds_given = any(a == "--kinds" or a.startswith("--kinds=") for a in own)
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        ap.error(f"--kinds: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if not train_args:
        train_args = ["--model", "mpidl.chaos:mlp", "--dataset", "digits", "--hidden", "64", "--epochs", "200",
                      "--max-steps", "3000", "--dtype", "float64", "--batch-size", "64", "--optimizer", "adam",
                      "--lr", "2e-3"]
    if "nan" in args.kinds and "mpidl.chaos:" not in " ".join(train_args):
        ap.error("the 'nan' fault needs a model with a fault point: --model mpidl.chaos:mlp")
    # Exact steps lost need a record of every step; a NaN batch must halt (and be resumed).
    train_args = [*train_args, "--log-every", "1", "--on-nonfinite", "abort"]
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
