"""Checkpoint files: checksums catch damage, the newest good one skips damaged ones, pruning,
atomic writes (the command-line round trip is in tests/e2e/test_checkpoint_cli.py)."""

import json
import os

import numpy as np
import pytest

from mpidl.checkpoint import (CheckpointError, atomic_write, checkpoint_name, list_checkpoints, meta_of,
                              newest_good, parse_every, read_checkpoint, write_checkpoint)
from mpidl.errors import ConfigError


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
