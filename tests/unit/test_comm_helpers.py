"""The non-MPI parts of the communication options: 16-bit encodings, bucket layout, the
backward hook, and the flag checks."""

import numpy as np
import pytest

from mpidl.parallel.compress import add_encoded, bf16_decode, bf16_encode, fp16_decode, fp16_encode
from mpidl.cli import parse_config
from mpidl.errors import ConfigError
from mpidl.models import build_model
from mpidl.parallel.sync import BucketSync, cut_buckets


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    one_plus = lambda k: np.float32(1 + k * 2.0 ** -8)  # noqa: E731 - bf16 spacing at 1 is 2**-7
    x = np.array([one_plus(1), one_plus(3), one_plus(1.5), -one_plus(1), np.inf, -np.inf, np.nan, 0.0,
                  3.0e38], dtype=np.float32)
    y = bf16_decode(bf16_encode(x))
    np.testing.assert_array_equal(y[:4], [1.0, 1 + 2.0 ** -6, 1 + 2.0 ** -7, -1.0])  # ties go to even
    assert y[4] == np.inf and y[5] == -np.inf and np.isnan(y[6]) and y[7] == 0
    assert abs(y[8] - 3.0e38) / 3.0e38 < 2.0 ** -8  # float32's range, unlike fp16


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=20000) * np.exp(rng.uniform(-30, 30, size=20000))).astype(np.float32)
    ours = bf16_decode(bf16_encode(x))
    theirs = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("codec,encode,decode", [("fp16", fp16_encode, fp16_decode),
                                                 ("bf16", bf16_encode, bf16_decode)])
def test_add_encoded_is_the_float32_sum_rounded_once(codec, encode, decode):
    rng = np.random.default_rng(1)
    a, b = encode(rng.normal(size=1000)), encode(rng.normal(size=1000))
    expected = decode(encode(decode(a) + decode(b)))
    add_encoded(codec, a, b)
    np.testing.assert_array_equal(decode(b), expected)


def _mlp():
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": (64, 32)}, dtype=np.float32, seed=0)
    return model


def test_buckets_cover_the_buffer_from_its_end_at_parameter_boundaries():
    store = _mlp().store
    starts = {p.offset for p in store.params}
    for size in (1, 1000, 10_000, 1e9):
        buckets = cut_buckets(store, size)
        assert buckets[0][1] == store.size and buckets[-1][0] == 0
        assert all(a[0] == b[1] for a, b in zip(buckets, buckets[1:]))
        assert all(start in starts for start, _ in buckets)
        assert all((end - start) * 4 >= size for start, end in buckets[:-1])
    assert len(cut_buckets(store, 1)) == len(store.params)
    assert len(cut_buckets(store, 1e9)) == 1


def test_layers_own_their_parameters_and_frontiers_shrink_backwards():
    model = _mlp()
    owned = [layer.parameters() for layer in model.net.layers]
    assert sorted(p.name for ps in owned for p in ps) == sorted(p.name for p in model.store.params)
    ready = BucketSync._ready_frontiers(model.net, model.store)
    fc2 = model.store.params[2]  # fc2.weight: done once layers[3:] have run backward
    assert ready[3] == fc2.offset and ready[1] == 0
    assert ready == sorted(ready)


def test_backward_hook_sees_layers_in_reverse_until_no_input_gradient_is_needed():
    model = _mlp()
    seen = []
    model.net.backward_hook = seen.append
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    model.train_step_grads(x, np.arange(5))
    # Flatten (index 0) is skipped: the first Linear returns no input gradient.
    assert seen == list(range(len(model.net.layers) - 1, 0, -1))


@pytest.mark.parametrize("flags", [["--zero", "1", "--bucket-mb", "1"], ["--zero", "1", "--grad-compression", "fp16"],
                                   ["--allreduce", "hierarchical", "--bucket-mb", "1"], ["--accumulate", "0"],
                                   ["--bucket-mb", "-1"], ["--zero", "2"]])
def test_unsupported_combinations_are_refused(flags):
    with pytest.raises(ConfigError):
        parse_config(flags)
