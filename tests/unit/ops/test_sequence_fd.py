"""Sequence/attention kernels: backward against central finite differences in float64.

Each check contracts the output with a fixed random tensor R (loss = sum(y * R)) and
compares, along a random direction D for every input, the analytic derivative
sum(grad * D) with (loss(a + hD) - loss(a - hD)) / 2h. Tolerance: 1e-6 relative.
"""

import numpy as np
import pytest

from mpidl.ops import attention as attn
from mpidl.ops import recurrent as rec
from mpidl.ops.embedding import embedding_backward, embedding_forward
from mpidl.ops.gelu import gelu_backward, gelu_forward
from mpidl.ops.layernorm import layernorm_backward, layernorm_forward
from mpidl.ops.positional import add_positions_backward, add_positions_forward, sinusoidal_table

from gradcheck import named_directional_check as directional_check  # noqa: E402


def _scalar(fn, r):
    return lambda **kw: float((fn(**kw) * r).sum())


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6)])
def test_layernorm(shape):
    rng = np.random.default_rng(1)
    x, g, b = rng.standard_normal(shape), rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    y, cache = layernorm_forward(x, g, b)
    r = rng.standard_normal(y.shape)
    dx, dg, db = layernorm_backward(r, cache)
    f = _scalar(lambda x, g, b: layernorm_forward(x, g, b)[0], r)
    directional_check(f, dict(x=x, g=g, b=b), dict(x=dx, g=dg, b=db), rng)


def test_gelu():
    rng = np.random.default_rng(2)
    x = 3 * rng.standard_normal((4, 9))
    y, cache = gelu_forward(x)
    r = rng.standard_normal(y.shape)
    directional_check(_scalar(lambda x: gelu_forward(x)[0], r), dict(x=x),
                      dict(x=gelu_backward(r, cache)), rng)


def test_embedding_with_repeated_ids():
    rng = np.random.default_rng(3)
    table = rng.standard_normal((6, 4))
    ids = np.array([[0, 2, 2], [5, 0, 2]])
    y, cache = embedding_forward(ids, table)
    r = rng.standard_normal(y.shape)
    dtable = embedding_backward(r, cache)
    directional_check(_scalar(lambda table: embedding_forward(ids, table)[0], r), dict(table=table),
                      dict(table=dtable), rng)
    assert np.allclose(dtable[2], r[0, 1] + r[0, 2] + r[1, 2])  # duplicates add up
    assert np.all(dtable[[1, 3, 4]] == 0)


def test_learned_positions():
    rng = np.random.default_rng(4)
    x, table = rng.standard_normal((3, 5, 4)), rng.standard_normal((8, 4))
    y, cache = add_positions_forward(x, table)
    r = rng.standard_normal(y.shape)
    dx, dtable = add_positions_backward(r, cache)
    f = _scalar(lambda x, table: add_positions_forward(x, table)[0], r)
    directional_check(f, dict(x=x, table=table), dict(x=dx, table=dtable), rng)
    assert np.all(dtable[5:] == 0)  # positions past the sequence get nothing


def test_sinusoidal_table_values():
    t = sinusoidal_table(50, 16)
    assert np.allclose(t[0, 0::2], 0) and np.allclose(t[0, 1::2], 1)
    assert np.allclose(t[7, 2], np.sin(7 * 10000 ** (-2 / 16)))
    assert np.allclose(t[7, 3], np.cos(7 * 10000 ** (-2 / 16)))


def _recurrent_case(kind, rng, batch=3, steps=5, features=4, hidden=6, gates=None):
    g = {"rnn": 1, "lstm": 4, "gru": 3}[kind] * hidden
    return dict(x=rng.standard_normal((batch, steps, features)), h0=0.5 * rng.standard_normal((batch, hidden)),
                W_ih=0.5 * rng.standard_normal((g, features)), W_hh=0.5 * rng.standard_normal((g, hidden)),
                b_ih=0.5 * rng.standard_normal(g), b_hh=0.5 * rng.standard_normal(g))


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("many_to_many", [True, False])
def test_recurrent(kind, many_to_many):
    rng = np.random.default_rng(5)
    inputs = _recurrent_case(kind, rng)
    if kind == "lstm":
        inputs["c0"] = 0.5 * rng.standard_normal(inputs["h0"].shape)
    fwd = getattr(rec, f"{kind}_forward")
    bwd = getattr(rec, f"{kind}_backward")

    def run(**kw):
        args = [kw["x"], kw["h0"]] + ([kw["c0"]] if kind == "lstm" else []) + \
               [kw["W_ih"], kw["W_hh"], kw["b_ih"], kw["b_hh"]]
        return fwd(*args)

    hs, cache = run(**inputs)
    r = rng.standard_normal(hs.shape)
    if not many_to_many:  # only the last state is used
        r[:, :-1] = 0
    grads = bwd(r, cache)
    names = ["x", "h0"] + (["c0"] if kind == "lstm" else []) + ["W_ih", "W_hh", "b_ih", "b_hh"]
    directional_check(_scalar(lambda **kw: run(**kw)[0], r), inputs, dict(zip(names, grads)), rng)


@pytest.mark.parametrize("mask_kind", [None, "causal", "random"])
def test_scaled_dot_product_attention(mask_kind):
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    mask = None
    if mask_kind == "causal":
        mask = attn.causal_mask(5)
    elif mask_kind == "random":
        mask = rng.uniform(size=(2, 1, 5, 5)) < 0.4
        mask[..., 0] = False  # every query keeps at least one key
    y, cache = attn.sdpa_forward(q, k, v, mask)
    r = rng.standard_normal(y.shape)
    dq, dk, dv = attn.sdpa_backward(r, cache)
    f = _scalar(lambda q, k, v: attn.sdpa_forward(q, k, v, mask)[0], r)
    directional_check(f, dict(q=q, k=k, v=v), dict(q=dq, k=dk, v=dv), rng)


@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_self_attention(causal):
    rng = np.random.default_rng(7)
    d, heads = 8, 2
    inputs = dict(x=rng.standard_normal((3, 6, d)), W_in=0.4 * rng.standard_normal((3 * d, d)),
                  b_in=0.1 * rng.standard_normal(3 * d), W_out=0.4 * rng.standard_normal((d, d)),
                  b_out=0.1 * rng.standard_normal(d))
    mask = attn.causal_mask(6) if causal else None

    def run(x, W_in, b_in, W_out, b_out):
        return attn.mha_forward(x, heads, W_in, b_in, W_out, b_out, mask)

    y, cache = run(**inputs)
    r = rng.standard_normal(y.shape)
    grads = attn.mha_backward(r, cache)
    directional_check(_scalar(lambda **kw: run(**kw)[0], r), inputs,
                      dict(zip(["x", "W_in", "b_in", "W_out", "b_out"], grads)), rng)
    if causal:  # the first step's output cannot depend on later steps
        x2 = inputs["x"].copy()
        x2[:, 1:] += 1.0
        assert np.allclose(run(**dict(inputs, x=x2))[0][:, 0], y[:, 0])
