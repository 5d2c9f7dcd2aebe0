"""The non-MPI parts of gradient synchronisation (mpidl.parallel.sync): bucket layout and the
backward hook."""

import numpy as np

from mpidl.models import build_model
from mpidl.parallel.sync import BucketSync, cut_buckets


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
    model.loss_and_backward(x, np.arange(5))
    # Flatten (index 0) is skipped: the first Linear returns no input gradient.
    assert seen == list(range(len(model.net.layers) - 1, 0, -1))
