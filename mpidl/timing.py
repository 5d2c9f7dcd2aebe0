"""Where each step's time goes, on every rank, and the Chrome trace written by --timeline.

A :class:`StepClock` is a stopwatch with laps: ``begin()`` at the start of a step, then
``lap(phase)`` after each phase charges the time since the previous mark to that phase.
It costs one ``time.perf_counter()`` call and a few float additions per lap and adds no
communication during training; the per-rank figures meet once, at the end, in one small
collective (:func:`gather_summary`).

Phases are named by the trainer (``PHASES``). ``allreduce`` is the communication left after
backward: all of the reduction on the plain path; with buckets started during backward
(--bucket-mb) the part that overlapped is charged to ``backward`` and only the wait for the
rest to ``allreduce``.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np

PHASES = ("data", "forward", "backward", "allreduce", "optimizer")
# Phases that are communication, coloured apart in the timeline; everything else is compute.
COMM_PHASES = frozenset({"allreduce"})
# Spans outside the step loop (rare, so kept in a list): the loader thread's work, evaluation.
SPAN_NAMES = ("prepare batch", "evaluate")
LOADER_THREAD = 1  # timeline track of the prefetching thread; the training thread is 0


class StepClock:
    def __init__(self, phases=PHASES, record_steps: int = 0, skip_steps: int = 1):
        """record_steps: steps whose individual spans are kept for the timeline (the first N).
        skip_steps: leading steps left out of the means (first-touch allocation, cold caches)."""
        self.phases = tuple(phases)
        self._index = {p: i for i, p in enumerate(self.phases)}
        self.skip_steps = int(skip_steps)
        self.totals = np.zeros(len(self.phases))   # seconds per phase over the counted steps
        self.counted = 0                           # steps in totals
        self.steps = 0                             # steps finished
        self._current = np.zeros(len(self.phases))
        self._mark = 0.0
        self.origin = time.perf_counter()          # reset by align(); timeline times are from here
        self.record_steps = int(record_steps)
        # Timeline: one row per lap: (phase index, start, duration), preallocated so that
        # recording stays cheap; at most 8 laps per step is plenty (5 today).
        self._events = np.zeros((self.record_steps * 8, 3)) if self.record_steps else None
        self._n_events = 0
        self._spans: list[tuple[int, int, float, float]] = []  # (name index, track, start, duration)
        self._span_lock = threading.Lock()

    def align(self, comm) -> None:
        """Common time origin on all ranks: right after a barrier (collective; once, at set-up)."""
        comm.barrier()
        self.origin = time.perf_counter()

    def begin(self) -> None:
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        i = self._index[phase]
        self._current[i] += now - self._mark
        if self._events is not None and self.steps < self.record_steps and self._n_events < len(self._events):
            self._events[self._n_events] = (i, self._mark - self.origin, now - self._mark)
            self._n_events += 1
        self._mark = now

    def end_step(self) -> None:
        if self.steps >= self.skip_steps:
            self.totals += self._current
            self.counted += 1
        self._current[:] = 0
        self.steps += 1

    def span(self, name: str, start: float, end: float, track: int = 0) -> None:
        """A span outside the step phases (thread-safe: the loader thread calls it)."""
        if self.record_steps and len(self._spans) < 2 * self.record_steps:
            with self._span_lock:
                self._spans.append((SPAN_NAMES.index(name), track, start - self.origin, end - start))

    def means(self) -> np.ndarray:
        """Mean seconds per counted step for each phase."""
        return self.totals / max(self.counted, 1)

    def event_rows(self) -> np.ndarray:
        """This rank's timeline as float rows (kind, name index, track, start, duration);
        kind 0 = step phase, 1 = other span. Plain floats so they travel without pickle."""
        phases = np.zeros((self._n_events, 5))
        if self._n_events:
            ev = self._events[:self._n_events]
            phases[:, 1], phases[:, 3], phases[:, 4] = ev[:, 0], ev[:, 1], ev[:, 2]
        with self._span_lock:
            spans = np.array([(1, n, t, s, d) for n, t, s, d in self._spans], dtype=float).reshape(-1, 5)
        return np.concatenate([phases, spans])


def gather_summary(clock: StepClock, comm) -> dict:
    """Every rank's mean per phase, met in one small collective; the same dict on every rank."""
    k = len(clock.phases)
    table = np.zeros((comm.size, k + 1))
    table[comm.rank, :k] = clock.means()
    table[comm.rank, k] = clock.counted
    comm.allreduce_sum_(table)
    per_rank = table[:, :k]
    step = per_rank.sum(axis=1)
    slowest = int(step.argmax())
    mean = per_rank.mean(axis=0)
    total = float(mean.sum())
    return {
        "steps_counted": int(table[0, k]),
        "phases": list(clock.phases),
        "mean_ms": {p: 1e3 * float(v) for p, v in zip(clock.phases, mean)},
        "step_ms": 1e3 * total,
        "fraction": {p: float(v / total) if total > 0 else 0.0 for p, v in zip(clock.phases, mean)},
        "data_wait_fraction": float(mean[clock._index["data"]] / total) if "data" in clock._index and total > 0
        else 0.0,
        "slowest_rank": slowest,
        "slowest_step_ms": 1e3 * float(step[slowest]),
        "fastest_step_ms": 1e3 * float(step.min()),
        "per_rank_ms": [[1e3 * float(v) for v in row] for row in per_rank],
    }


def format_summary(s: dict, size: int) -> str:
    parts = "  ".join(f"{p} {s['mean_ms'][p]:.3f} ({100 * s['fraction'][p]:.0f}%)" for p in s["phases"])
    return (f"time per step, mean of {size} rank(s) over {s['steps_counted']} steps (ms): {parts}  "
            f"= {s['step_ms']:.3f}; data wait {100 * s['data_wait_fraction']:.1f}% of the step; "
            f"slowest rank {s['slowest_rank']} ({s['slowest_step_ms']:.3f} ms/step)")


def write_timeline(path: str, clock: StepClock, comm) -> None:
    """Gather every rank's events to rank 0 (flat float arrays, no pickle) and write one
    Chrome trace: a process per rank, thread 0 the training loop, thread 1 the loader."""
    gathered = comm.gather_rows(clock.event_rows(), root=0)
    if comm.rank != 0:
        return
    events = []
    for rank, rows in enumerate(gathered):
        events.append({"ph": "M", "name": "process_name", "pid": rank, "tid": 0, "args": {"name": f"rank {rank}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0, "args": {"sort_index": rank}})
        events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": 0, "args": {"name": "train"}})
        if (rows[:, 2] == LOADER_THREAD).any():
            events.append({"ph": "M", "name": "thread_name", "pid": rank, "tid": LOADER_THREAD,
                           "args": {"name": "loader"}})
        for kind, name_i, track, start, dur in rows:
            name = clock.phases[int(name_i)] if kind == 0 else SPAN_NAMES[int(name_i)]
            cat = "comm" if name in COMM_PHASES else "compute" if kind == 0 else name.split()[0]
            events.append({"ph": "X", "name": name, "cat": cat, "pid": rank, "tid": int(track),
                           "ts": round(start * 1e6, 3), "dur": round(dur * 1e6, 3)})
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms",
                   "otherData": {"ranks": comm.size, "steps_recorded": min(clock.steps, clock.record_steps)}}, f)
    os.replace(tmp, path)
