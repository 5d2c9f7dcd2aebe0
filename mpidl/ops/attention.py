"""Scaled dot-product attention and multi-head self-attention.

Shapes: x (batch, time, dim); heads split dim into `heads` slices of dim/heads.
Parameters follow torch.nn.MultiheadAttention: in_proj_weight (3*dim, dim) stacking
the query, key and value projections, in_proj_bias (3*dim,), out_proj weight (dim, dim)
and bias (dim,). A boolean mask marks with True the (query, key) pairs that may NOT
attend, as PyTorch's boolean attn_mask does; it broadcasts to (batch, heads, time, time).
"""

from __future__ import annotations

import math

import numpy as np

from mpidl.ops.linear import linear_backward, linear_forward


def causal_mask(length):
    """True above the diagonal: step t may look at steps <= t only."""
    return np.triu(np.ones((length, length), dtype=bool), k=1)


def sdpa_forward(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v over the last two axes; q, k, v (..., time, d)."""
    scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 arrays float32
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    if mask is not None:
        scores = np.where(mask, -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores, out=scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs @ v, (q, k, v, probs, scale)


def sdpa_backward(dout, cache):
    """Returns (dq, dk, dv). Masked entries have probability 0, so they get no gradient."""
    q, k, v, probs, scale = cache
    dv = np.swapaxes(probs, -1, -2) @ dout
    dprobs = dout @ np.swapaxes(v, -1, -2)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    dscores *= scale
    dq = dscores @ k
    dk = np.swapaxes(dscores, -1, -2) @ q
    return dq, dk, dv


def _split_heads(x, heads):
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(x):
    b, h, t, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def mha_forward(x, heads, W_in, b_in, W_out, b_out, mask=None):
    d = x.shape[-1]
    if d % heads:
        raise ValueError(f"dim {d} does not split into {heads} heads")
    qkv, in_cache = linear_forward(x, W_in, b_in)
    q, k, v = (_split_heads(qkv[..., i * d:(i + 1) * d], heads) for i in range(3))
    ctx, attn_cache = sdpa_forward(q, k, v, mask)
    y, out_cache = linear_forward(_merge_heads(ctx), W_out, b_out)
    return y, (heads, in_cache, attn_cache, out_cache)


def mha_backward(dy, cache, need_dx=True):
    """Returns (dx, dW_in, db_in, dW_out, db_out)."""
    heads, in_cache, attn_cache, out_cache = cache
    dctx, dW_out, db_out = linear_backward(dy, out_cache)
    dq, dk, dv = sdpa_backward(_split_heads(dctx, heads), attn_cache)
    dqkv = np.concatenate([_merge_heads(g) for g in (dq, dk, dv)], axis=-1)
    dx, dW_in, db_in = linear_backward(dqkv, in_cache, need_dx=need_dx)
    return dx, dW_in, db_in, dW_out, db_out
