"""Bounded fuzzing of everything that reads user input: random bytes into the IDX reader,
random text into the config loader. Either a clean result or the one error type the CLI
turns into a one-line message; never another exception."""

import gzip
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpidl.cli import parse_config
from mpidl.data.idx import parse_idx
from mpidl.data.loader import ShardedSampler
from mpidl.errors import ConfigError, DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=64))
def test_idx_reader_random_bytes(raw):
    try:
        arr = parse_idx(raw, "fuzz")
    except DataError:
        return
    assert arr.size * arr.itemsize + 4 + 4 * arr.ndim == len(raw)


@FUZZ
@given(st.lists(st.integers(0, 5), min_size=1, max_size=3), st.integers(0, 8), st.binary(max_size=8))
def test_idx_reader_mutated_headers(dims, cut, junk):
    arr = np.arange(int(np.prod(dims)), dtype=np.uint8).reshape(dims)
    raw = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + arr.tobytes()
    for candidate in (raw[:len(raw) - cut], raw + junk, gzip.compress(raw)[: max(len(raw) - cut, 0)]):
        try:
            out = parse_idx(candidate, "fuzz")
        except DataError:
            continue
        assert out.shape == tuple(dims) or out.size * out.itemsize + 4 + 4 * out.ndim == len(candidate)


_KEYS = st.sampled_from(["model", "lr", "batch_size", "epochs", "momentum", "dtype", "hidden", "seed",
                         "nesterov", "schedule", "bogus", "weight-decay"])
_VALUES = st.one_of(st.integers(-5, 5000), st.floats(allow_nan=True), st.booleans(),
                    st.text(max_size=8), st.lists(st.integers(-2, 300), max_size=3))


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode() + '"'
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return repr(v)


@FUZZ
@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_config_loader_random_files(tmp_path_factory, entries):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in entries.items()))
    try:
        cfg = parse_config(["--config", str(path)])
    except ConfigError:
        return
    assert cfg.batch_size >= 1 and cfg.lr > 0 and 0 <= cfg.momentum < 1


@FUZZ
@given(st.text(max_size=200))
def test_config_loader_random_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text)
    try:
        parse_config(["--config", str(path)])
    except ConfigError:
        pass


@settings(max_examples=400, deadline=None)
@given(n=st.integers(1, 300), size=st.integers(1, 4), batch=st.integers(1, 300), drop_last=st.booleans(),
       epoch=st.integers(0, 3))
def test_uneven_data_epochs_end_together(n, size, batch, drop_last, epoch):
    """For every data set length and rank count, all ranks take the same steps in an epoch."""
    if batch > n or batch < size:
        return  # rejected up front with a clear error (tests/e2e/test_cli.py)
    steps = [list(ShardedSampler(n, batch, r, size, seed=7, drop_last=drop_last).epoch(epoch))
             for r in range(size)]
    assert len({len(s) for s in steps}) == 1 and len(steps[0]) >= 1
    for per_rank in zip(*steps):
        assert sum(len(s.indices) for s in per_rank) == per_rank[0].global_count


def _cifar_pickle(n=2, protocol=2):
    import pickle
    data = np.arange(n * 3072, dtype=np.uint8).reshape(n, 3072)
    return pickle.dumps({b"data": data, b"labels": list(range(n)), b"batch_label": b"x"}, protocol=protocol)


@FUZZ
@given(st.binary(max_size=200) | st.builds(lambda cut, flip, proto: (cut, flip, proto),
                                           st.integers(0, 400), st.integers(0, 10_000), st.sampled_from([2, 4, 5])))
def test_cifar_reader_random_and_mutated_pickles(tmp_path_factory, case):
    """Random bytes, truncated or bit-flipped real batches: a DataError or a valid batch, never
    another exception (and, by the restricted unpickler, never code run)."""
    from mpidl.data.cifar import read_batch
    if isinstance(case, tuple):
        cut, flip, proto = case
        raw = bytearray(_cifar_pickle(protocol=proto))
        raw[flip % len(raw)] ^= 0x5A
        raw = bytes(raw[: max(len(raw) - cut, 0)])
    else:
        raw = case
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(raw)
    try:
        images, labels = read_batch(str(path))
    except DataError:
        return
    assert images.dtype == np.uint8 and len(images) == len(labels)
