"""Pipeline parallelism: consecutive layers of a Sequential on consecutive ranks.

A stage receives its input (the activations of the stage before, or the data on the first),
runs its layers, and sends its output on; in the backward pass the gradients travel the other
way. The batch is cut into M micro-batches so that stages work at the same time:

- GPipe (Huang et al. 2019): all M forwards, then all M backwards. Every stage keeps the
  state of all M micro-batches until their backward.
- 1F1B (Narayanan et al. 2019, PipeDream-Flush): stage s runs S-1-s forwards, then
  alternates one forward and one backward, then drains. At most S-s micro-batches are in
  flight on stage s, whatever M is.

Both leave the same idle time, the bubble: (S-1) / (M+S-1) of each stage's step. Both run
the backwards in micro-batch order, so they add gradients in the same order: the two
schedules give the same weights bit for bit, and equal a single process's within rounding.

Arrays travel with the buffer-protocol Isend/Recv of mpidl.parallel.comm: a small header
(the shape) then the array. Sends are non-blocking, so two neighbours that send to each other
at the same moment (1F1B's steady state) cannot deadlock; they are completed at the end of
the step.
"""

from __future__ import annotations

import numpy as np

from mpidl.errors import ConfigError
from mpidl.nn.base import Module, Sequential
from mpidl.ops.scratch import Scratch
from mpidl.params import Param

SCHEDULES = ("1f1b", "gpipe")
FORWARD_TAG, BACKWARD_TAG = 11, 12
_HEADER = 8  # int64 words: ndim, then the shape


def balanced_stages(costs: list[float], stages: int) -> list[int]:
    """Where each stage starts: cuts `costs` (one per layer) into `stages` consecutive,
    non-empty parts minimising the largest part's sum."""
    n = len(costs)
    if stages > n:
        raise ConfigError(f"--pipeline-stages {stages}: the network has only {n} top-level layers")
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    # best[k][i]: the smallest possible largest part, cutting the first i layers into k parts
    best = np.full((stages + 1, n + 1), np.inf)
    cut = np.zeros((stages + 1, n + 1), dtype=int)
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    starts, i = [], n
    for k in range(stages, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]


def stage_layers(net: Module, stages: int, costs: list[float]) -> list[list[int]]:
    """The top-level layer indices of each stage."""
    if not isinstance(net, Sequential):
        raise ConfigError(f"--pipeline-stages {stages}: pipeline parallelism splits a Sequential at its top level; "
                          f"this network is a {type(net).__name__}")
    starts = balanced_stages(costs, stages) + [len(net.layers)]
    return [list(range(starts[k], starts[k + 1])) for k in range(stages)]


def schedule_ops(name: str, stage: int, stages: int, micro: int) -> list[tuple[str, int]]:
    """This stage's sequence of ("F", i) forwards and ("B", i) backwards."""
    if name == "gpipe":
        return [("F", i) for i in range(micro)] + [("B", i) for i in range(micro)]
    if name != "1f1b":
        raise ConfigError(f"--pipeline-schedule {name}: choose from {', '.join(SCHEDULES)}")
    warmup = min(stages - 1 - stage, micro)
    ops = [("F", i) for i in range(warmup)]
    for k in range(micro - warmup):
        ops += [("F", warmup + k), ("B", k)]
    return ops + [("B", i) for i in range(micro - warmup, micro)]


def bubble_fraction(stages: int, micro: int) -> float:
    """The share of a stage's step spent idle, for GPipe and 1F1B alike."""
    return (stages - 1) / (micro + stages - 1)


def peak_in_flight(name: str, stage: int, stages: int, micro: int) -> int:
    """How many micro-batches' layer state stage `stage` holds at most."""
    held, peak = 0, 0
    for op, _ in schedule_ops(name, stage, stages, micro):
        held += 1 if op == "F" else -1
        peak = max(peak, held)
    return peak


# -- one micro-batch's layer state, set aside until its backward -----------------------
def _copy_arrays(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(_copy_arrays(v) for v in value)
    if isinstance(value, list):
        return [_copy_arrays(v) for v in value]
    return value


def _is_state(key, value) -> bool:
    # Layers keep what backward needs in private attributes (_cache, _shape, _mask);
    # their reusable working arrays, children and parameters are not per-micro-batch state.
    return key.startswith("_") and not isinstance(value, (Scratch, Module, Param, np.random.Generator))


def save_state(modules: list[Module]) -> list[dict]:
    """What each module's forward left for its backward. Kept by reference, except in layers
    with reused working arrays (convolutions), whose cache points into them: copied there."""
    saved = []
    for m in modules:
        reuses = any(isinstance(v, Scratch) for v in vars(m).values())
        saved.append({k: _copy_arrays(v) if reuses else v for k, v in vars(m).items() if _is_state(k, v)})
    return saved


def restore_state(modules: list[Module], saved: list[dict]) -> None:
    for m, state in zip(modules, saved):
        vars(m).update(state)


# -- activations between stages --------------------------------------------------------
class Link:
    """Sends and receives arrays between neighbouring stages of one pipeline group (buffer-protocol
    Isend/Recv through the Communicator: no pickling)."""

    def __init__(self, group, dtype):
        self.group, self.dtype = group, np.dtype(dtype)
        self.pending = []  # (request, arrays kept alive until it completes)
        self.bytes_sent = 0

    def send_array(self, array: np.ndarray, dest: int, tag: int) -> None:
        array = np.ascontiguousarray(array, dtype=self.dtype)
        if array.ndim >= _HEADER:
            raise ValueError(f"pipeline: cannot send a {array.ndim}-dimensional array")
        header = np.zeros(_HEADER, dtype=np.int64)
        header[0] = array.ndim
        header[1:1 + array.ndim] = array.shape
        self.pending.append((self.group.isend(header, dest, tag), header))
        self.pending.append((self.group.isend(array, dest, tag), array))
        self.bytes_sent += header.nbytes + array.nbytes

    def recv_array(self, source: int, tag: int, what: str) -> np.ndarray:
        header = np.zeros(_HEADER, dtype=np.int64)
        self.group.recv_(header, source, tag, what)
        array = np.empty(tuple(int(s) for s in header[1:1 + header[0]]), dtype=self.dtype)
        return self.group.recv_(array, source, tag, what)

    def finish(self) -> None:
        """Complete every send of the step (their buffers may then be reused)."""
        self.group.wait_sends([r for r, _ in self.pending], "Waitall(pipeline sends)")
        self.pending.clear()
