"""Sequence/attention kernels against PyTorch (torch==2.13.0, CPU): forward and every gradient,
in float64 (tolerance 1e-9 relative to the largest value) and float32 (2e-4; LSTM/GRU
through time 5e-4), over random shapes and masks drawn from seeded generators."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
torch.set_num_threads(1)  # tiny tensors: threads only add overhead

from mpidl.ops import attention as attn  # noqa: E402
from mpidl.ops import recurrent as rec  # noqa: E402
from mpidl.ops.embedding import embedding_backward, embedding_forward  # noqa: E402
from mpidl.ops.gelu import gelu_backward, gelu_forward  # noqa: E402
from mpidl.ops.layernorm import layernorm_backward, layernorm_forward  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 2e-4}
DTYPES = [np.float64, np.float32]
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def close(ours, theirs, dtype, tol=None):
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    assert ours.dtype == dtype, ours.dtype
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max()) / scale
    assert err <= (tol or TOL[dtype]), f"relative error {err:.2e}"


def t(a):
    return torch.tensor(a, requires_grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_layernorm(dtype, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(2, 7, size=rng.integers(2, 4)))
    x = rng.standard_normal(shape).astype(dtype)
    g, b = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ln = torch.nn.LayerNorm(shape[-1], eps=1e-5, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(g))
        ln.bias.copy_(torch.from_numpy(b))
    xt = t(x)
    yt = ln(xt)
    yt.backward(torch.from_numpy(dy))
    y, cache = layernorm_forward(x, g, b)
    dx, dg, db = layernorm_backward(dy, cache)
    close(y, yt, dtype)
    close(dx, xt.grad, dtype)
    close(dg, ln.weight.grad, dtype)
    close(db, ln.bias.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh(dtype):
    rng = np.random.default_rng(3)
    x = (4 * rng.standard_normal((6, 11))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    xt = t(x)
    yt = F.gelu(xt, approximate="tanh")
    yt.backward(torch.from_numpy(dy))
    y, cache = gelu_forward(x)
    close(y, yt, dtype)
    close(gelu_backward(dy, cache), xt.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(dtype):
    rng = np.random.default_rng(4)
    table = rng.standard_normal((9, 5)).astype(dtype)
    ids = rng.integers(0, 9, size=(4, 7))
    dy = rng.standard_normal((4, 7, 5)).astype(dtype)
    emb = torch.nn.Embedding(9, 5, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(table))
    yt = emb(torch.from_numpy(ids))
    yt.backward(torch.from_numpy(dy))
    y, cache = embedding_forward(ids, table)
    close(y, yt, dtype)
    close(embedding_backward(dy, cache), emb.weight.grad, dtype)


RECURRENT = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recurrent_matches_torch(kind, dtype, seed):
    rng = np.random.default_rng([seed, 10])
    batch, steps, features, hidden = (int(v) for v in rng.integers([1, 1, 1, 1], [6, 12, 9, 10]))
    net = RECURRENT[kind](features, hidden, batch_first=True, dtype=TORCH_DTYPE[dtype])
    x = rng.standard_normal((batch, steps, features)).astype(dtype)
    h0 = rng.standard_normal((batch, hidden)).astype(dtype)
    c0 = rng.standard_normal((batch, hidden)).astype(dtype)
    dhs = rng.standard_normal((batch, steps, hidden)).astype(dtype)
    w = [getattr(net, n).detach().numpy().copy() for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                                           "bias_hh_l0")]
    xt, h0t, c0t = t(x), t(h0[None]), t(c0[None])
    if kind == "lstm":
        hst, _ = net(xt, (h0t, c0t))
        hs, cache = rec.lstm_forward(x, h0, c0, *w)
        dx, dh0, dc0, *dw = rec.lstm_backward(dhs, cache)
    else:
        hst, _ = net(xt, h0t)
        hs, cache = getattr(rec, f"{kind}_forward")(x, h0, *w)
        dx, dh0, *dw = getattr(rec, f"{kind}_backward")(dhs, cache)
    hst.backward(torch.from_numpy(dhs))
    tol = TOL[dtype] if dtype == np.float64 else 5e-4
    close(hs, hst, dtype, tol)
    close(dx, xt.grad, dtype, tol)
    close(dh0, h0t.grad[0], dtype, tol)
    if kind == "lstm":
        close(dc0, c0t.grad[0], dtype, tol)
    for ours, name in zip(dw, ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")):
        close(ours, getattr(net, name).grad, dtype, tol)


def _random_mask(rng, steps, kind):
    if kind is None:
        return None
    if kind == "causal":
        return attn.causal_mask(steps)
    mask = rng.uniform(size=(steps, steps)) < 0.5
    mask[np.arange(steps), np.arange(steps)] = False  # every query sees itself
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", [None, "causal", "random"])
@pytest.mark.parametrize("seed", [0, 1])
def test_multihead_attention_matches_torch(dtype, mask_kind, seed):
    rng = np.random.default_rng([seed, 20])
    heads = int(rng.integers(1, 4))
    dim = heads * int(rng.integers(2, 6))
    batch, steps = int(rng.integers(1, 5)), int(rng.integers(2, 9))
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():  # torch starts with zero biases; random ones test their gradients too
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    x = rng.standard_normal((batch, steps, dim)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    mask = _random_mask(rng, steps, mask_kind)
    xt = t(x)
    yt, _ = mha(xt, xt, xt, need_weights=False,
                attn_mask=None if mask is None else torch.from_numpy(mask))
    yt.backward(torch.from_numpy(dy))
    params = [p.detach().numpy().copy() for p in (mha.in_proj_weight, mha.in_proj_bias,
                                                  mha.out_proj.weight, mha.out_proj.bias)]
    y, cache = attn.mha_forward(x, heads, *params, mask=mask)
    dx, *dparams = attn.mha_backward(dy, cache)
    close(y, yt, dtype)
    close(dx, xt.grad, dtype)
    for ours, p in zip(dparams, (mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight,
                                 mha.out_proj.bias)):
        close(ours, p.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_matches_torch_with_batched_mask(dtype):
    rng = np.random.default_rng(30)
    q, k, v = (rng.standard_normal((3, 2, 6, 4)).astype(dtype) for _ in range(3))
    mask = rng.uniform(size=(3, 1, 6, 6)) < 0.5
    mask[..., 2] = False
    dy = rng.standard_normal(q.shape).astype(dtype)
    qt, kt, vt = t(q), t(k), t(v)
    # torch's boolean attn_mask means "may attend": the opposite of ours.
    yt = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.from_numpy(~mask))
    yt.backward(torch.from_numpy(dy))
    y, cache = attn.sdpa_forward(q, k, v, mask)
    for ours, theirs in zip((y, *attn.sdpa_backward(dy, cache)), (yt, qt.grad, kt.grad, vt.grad)):
        close(ours, theirs, dtype)
