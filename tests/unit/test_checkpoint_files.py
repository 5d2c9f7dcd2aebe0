"""Checkpoint files: checksums catch damage, --resume skips damaged ones, pruning, the CLI round trip."""

import json
import os

import numpy as np
import pytest

from mpidl.checkpoint import (CheckpointError, atomic_write, checkpoint_name, list_checkpoints, meta_of,
                              newest_good, parse_every, read_checkpoint, write_checkpoint)
from mpidl.errors import ConfigError
from support import run_train

TRAIN = ["--model", "mlp", "--hidden", "16", "--max-steps", "30", "--batch-size", "64", "--seed", "2",
         "--progress", "none"]


def _arrays(value=1.0):
    meta = json.dumps({"global_step": 3}).encode()
    return {"params": np.full(10, value, np.float32), "meta": np.frombuffer(meta, np.uint8),
            "opt/m": np.arange(10.0)}


@pytest.mark.parametrize("text,expected", [("500", (500, "steps")), ("2e", (2, "epochs")),
                                           ("1epoch", (1, "epochs")), (" 3 epochs ", (3, "epochs"))])
def test_parse_every(text, expected):
    assert parse_every(text) == expected


@pytest.mark.parametrize("text", ["0", "e", "-1", "2x", "1.5e", ""])
def test_parse_every_rejects(text):
    with pytest.raises(ConfigError):
        parse_every(text)


def test_round_trip_and_checksum(tmp_path):
    path = str(tmp_path / checkpoint_name(3))
    write_checkpoint(path, _arrays(2.5))
    back = read_checkpoint(path)
    assert np.array_equal(back["params"], np.full(10, 2.5, np.float32))
    assert meta_of(back) == {"global_step": 3}
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickle needed
        assert z["checksum"].dtype == np.uint8 and z["checksum"].size == 32


def _rewrite_member(path, name, array):
    """Replace one array inside the .npz, keeping the stored checksum: a consistent zip with wrong contents."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[name] = array
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_changed_contents_fail_the_checksum(tmp_path):
    path = str(tmp_path / "c.npz")
    write_checkpoint(path, _arrays())
    _rewrite_member(path, "params", np.full(10, 1.0 + 1e-7, np.float32))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_files_are_reported(tmp_path, damage):
    path = str(tmp_path / "c.npz")
    write_checkpoint(path, {**_arrays(), "params": np.random.default_rng(0).standard_normal(5000)})
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF
    else:
        data = b""
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)


def test_newest_good_skips_damaged_ones(tmp_path):
    for step in (10, 20, 30):
        write_checkpoint(str(tmp_path / checkpoint_name(step)), _arrays(step))
    newest = str(tmp_path / checkpoint_name(30))
    open(newest, "r+b").truncate(100)
    warnings = []
    path, arrays = newest_good(str(tmp_path), warn=warnings.append)
    assert path.endswith(checkpoint_name(20)) and arrays["params"][0] == 20
    assert len(warnings) == 1 and checkpoint_name(30) in warnings[0]
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [30, 20, 10]
    assert newest_good(str(tmp_path / "missing")) is None


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "c.npz")
    write_checkpoint(path, _arrays(1.0))

    def crash(f):
        f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert read_checkpoint(path)["params"][0] == 1.0
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def _weights(out):
    with np.load(os.path.join(out, "weights.npz"), allow_pickle=False) as z:
        return z["params"]


def test_cli_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    """Through the command line: checkpoints every 10 steps, keep 2; damage the newest;
    --resume latest reports it, uses the older one, and ends bitwise on the uninterrupted run."""
    ck = str(tmp_path / "ck")
    full = run_train(1, [*TRAIN, "--out", str(tmp_path / "a"), "--checkpoint-dir", ck,
                         "--checkpoint-every", "10", "--keep-last", "2"], timeout=120)
    assert full.returncode == 0, full.stderr
    assert [s for s, _ in list_checkpoints(ck)] == [30, 20]  # pruned to two; 30 is the final one
    open(os.path.join(ck, checkpoint_name(30)), "r+b").truncate(1000)

    resumed = run_train(1, [*TRAIN, "--out", str(tmp_path / "b"), "--checkpoint-dir", ck,
                            "--resume", "latest"], timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "corrupt" in resumed.stderr and checkpoint_name(30) in resumed.stderr
    assert "resumed from" in resumed.stdout and checkpoint_name(20) in resumed.stdout
    assert np.array_equal(_weights(tmp_path / "b"), _weights(tmp_path / "a"))


def test_cli_refuses_a_checkpoint_of_another_run(tmp_path):
    ck = str(tmp_path / "ck")
    assert run_train(1, [*TRAIN, "--out", str(tmp_path / "a"), "--checkpoint-dir", ck]).returncode == 0
    other = run_train(1, [*TRAIN, "--lr", "0.5", "--out", str(tmp_path / "b"), "--checkpoint-dir", ck,
                          "--resume", "latest"])
    assert other.returncode == 2
    assert "different run" in other.stderr and "--lr" in other.stderr
    missing = run_train(1, [*TRAIN, "--out", str(tmp_path / "c"), "--checkpoint-dir", str(tmp_path / "none"),
                            "--resume", "latest"])
    assert missing.returncode == 2 and "no good checkpoint" in missing.stderr
    fresh = run_train(1, [*TRAIN, "--out", str(tmp_path / "d"), "--checkpoint-dir", str(tmp_path / "none"),
                          "--resume", "auto"])
    assert fresh.returncode == 0 and "starting from step 0" in fresh.stdout


def test_expect_ranks_guard(tmp_path):
    proc = run_train(1, [*TRAIN, "--out", str(tmp_path), "--expect-ranks", "2"])
    assert proc.returncode == 2
    assert "--expect-ranks 2: the MPI world has 1 rank(s)" in proc.stderr
