"""Timing summary, merged timeline, gather_rows and the shared .npy dataset cache, at any
world size; expected values follow from rank and size."""

import json
import os

import numpy as np
import pytest

from support import shared_tmpdir

from mpidl.cli import parse_config
from mpidl.parallel.comm import world
from mpidl.timing import PHASES, StepClock, gather_summary
from mpidl.trainer import Trainer


@pytest.mark.mpi
def test_gather_rows_collects_each_ranks_rows_at_root():
    comm = world()
    rows = np.full((comm.rank + 1, 3), float(comm.rank))
    got = comm.gather_rows(rows, root=0)
    if comm.rank != 0:
        assert got is None
        return
    assert len(got) == comm.size
    for r, block in enumerate(got):
        np.testing.assert_array_equal(block, np.full((r + 1, 3), float(r)))


@pytest.mark.mpi
def test_summary_means_over_ranks_and_names_the_slowest():
    comm = world()
    clock = StepClock(PHASES, skip_steps=0)
    # Synthetic phase times: rank r spends (r + 1) ms in allreduce and 2 ms in forward per step.
    for _ in range(4):
        clock._current[PHASES.index("forward")] = 2e-3
        clock._current[PHASES.index("allreduce")] = (comm.rank + 1) * 1e-3
        clock.end_step()
    s = gather_summary(clock, comm)
    assert s["steps_counted"] == 4
    assert s["slowest_rank"] == comm.size - 1
    assert s["mean_ms"]["forward"] == pytest.approx(2.0)
    assert s["mean_ms"]["allreduce"] == pytest.approx((comm.size + 1) / 2)
    assert s["slowest_step_ms"] == pytest.approx(2.0 + comm.size)
    assert len(s["per_rank_ms"]) == comm.size


@pytest.mark.mpi
@pytest.mark.parametrize("prefetch", [0, 2])
def test_timeline_is_chrome_trace_with_a_track_per_rank(prefetch):
    comm = world()
    path = os.path.join(shared_tmpdir(comm), "timeline.json")
    steps = 12
    cfg = parse_config(["--model", "mlp", "--max-steps", str(steps), "--batch-size", "32",
                        "--timeline", path, "--timeline-steps", "10", "--prefetch", str(prefetch)])
    trainer = Trainer.from_config(cfg, comm)
    trainer.train()
    summary = trainer.timing_summary()
    assert summary["steps_counted"] == steps - 1  # the first step is left out of the means
    assert 0 <= summary["data_wait_fraction"] < 1
    trainer.write_timeline(path)
    comm.barrier()
    with open(path) as f:
        trace = json.load(f)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {f"rank {r}" for r in range(comm.size)}
    for r in range(comm.size):
        mine = [e for e in spans if e["pid"] == r and e["tid"] == 0]
        for phase in PHASES:
            assert sum(e["name"] == phase for e in mine) == 10, (r, phase)
        assert {e["cat"] for e in mine} >= {"compute", "comm"}
        starts = [e["ts"] for e in mine if e["name"] in PHASES]
        assert starts == sorted(starts) and all(e["dur"] >= 0 for e in mine)
        loader = [e for e in spans if e["pid"] == r and e["tid"] == 1]
        assert (len(loader) > 0) == (prefetch > 0)


@pytest.mark.mpi
def test_dataset_cache_written_once_and_mapped_by_every_rank():
    from mpidl.data.cache import npy_cache
    from mpidl.data.datasets import load_idx_dataset
    comm = world()
    root = shared_tmpdir(comm)
    src = os.path.join(root, "src")
    if comm.rank == 0:
        import gzip
        os.makedirs(src)
        rng = np.random.default_rng(1)
        for split, n in (("train", 30), ("t10k", 10)):
            for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)),
                              ("labels-idx1", rng.integers(0, 10, n, dtype=np.uint8))):
                head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
                with gzip.open(os.path.join(src, f"{split}-{kind}-ubyte.gz"), "wb") as f:
                    f.write(head + arr.tobytes())
    comm.barrier()
    with npy_cache(os.path.join(root, "cache"), comm):
        ds = load_idx_dataset("fashion-mnist", src)
    direct = load_idx_dataset("fashion-mnist", src)
    assert isinstance(ds.x_train, np.memmap)
    np.testing.assert_array_equal(ds.x_train, direct.x_train)
    np.testing.assert_array_equal(ds.y_val, direct.y_val)
    assert len(os.listdir(os.path.join(root, "cache"))) == 2  # one entry per split, no leftovers
    comm.check_same("cached dataset", ds.digest())
