"""Layers over sequences (batch, time, features): recurrent cells, self-attention,
positions, and the Transformer encoder block."""

from __future__ import annotations

import numpy as np

from mpidl import init as initializers
from mpidl.nn.base import Module, Sequential
from mpidl.nn.basic import GELU, Linear
from mpidl.nn.norm import LayerNorm
from mpidl.ops import attention as attn
from mpidl.ops import recurrent as rec
from mpidl.ops.positional import add_positions_backward, add_positions_forward, sinusoidal_table

_CELLS = {  # kind: (gates, forward, backward)
    "rnn": (1, rec.rnn_forward, rec.rnn_backward),
    "lstm": (4, rec.lstm_forward, rec.lstm_backward),
    "gru": (3, rec.gru_forward, rec.gru_backward),
}


class Recurrent(Module):
    """RNN (tanh), LSTM or GRU over (batch, time, features), zero initial state.

    return_sequences=True gives every step's hidden state (many-to-many), else the
    last one (many-to-one). Initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    """

    GATES = {kind: gates for kind, (gates, _, _) in _CELLS.items()}

    def __init__(self, kind: str, input_size: int, hidden_size: int, return_sequences: bool = False):
        if kind not in _CELLS:
            raise ValueError(f"unknown recurrent cell {kind!r}; choose from {', '.join(_CELLS)}")
        self.kind, self.hidden, self.return_sequences = kind, hidden_size, return_sequences
        g = self.GATES[kind] * hidden_size
        init = initializers.uniform(1.0 / np.sqrt(hidden_size))
        self.W_ih = self.param("weight_ih", (g, input_size), init)
        self.W_hh = self.param("weight_hh", (g, hidden_size), init)
        self.b_ih = self.param("bias_ih", (g,), init, decay=False)
        self.b_hh = self.param("bias_hh", (g,), init, decay=False)
        self.need_input_grad = True

    def forward(self, x, train=True):
        w = (self.W_ih.data, self.W_hh.data, self.b_ih.data, self.b_hh.data)
        _, cell_forward, _ = _CELLS[self.kind]
        if self.kind == "lstm":
            hs, self._cache = cell_forward(x, None, None, *w)
        else:
            hs, self._cache = cell_forward(x, None, *w)
        self._shape = hs.shape
        return hs if self.return_sequences else hs[:, -1]

    def backward(self, dy):
        if self.return_sequences:
            dhs = dy
        else:
            dhs = np.zeros(self._shape, dtype=dy.dtype)
            dhs[:, -1] = dy
        _, _, cell_backward = _CELLS[self.kind]
        grads = cell_backward(dhs, self._cache)
        dx, dW_ih, dW_hh, db_ih, db_hh = grads[0], *grads[-4:]
        for p, g in ((self.W_ih, dW_ih), (self.W_hh, dW_hh), (self.b_ih, db_ih), (self.b_hh, db_hh)):
            p.grad += g
        self._cache = None
        return dx if self.need_input_grad else None


class MultiHeadSelfAttention(Module):
    """Scaled dot-product self-attention with `heads` heads (Vaswani et al. 2017); parameters
    named as PyTorch's nn.MultiheadAttention names them."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        if dim % heads:
            raise ValueError(f"dim {dim} does not split into {heads} heads")
        self.heads, self.causal = heads, causal
        self.W_in = self.param("in_proj_weight", (3 * dim, dim), "xavier")
        self.b_in = self.param("in_proj_bias", (3 * dim,), "zeros", decay=False)
        self.W_out = self.param("out_proj.weight", (dim, dim), "xavier")
        self.b_out = self.param("out_proj.bias", (dim,), "zeros", decay=False)

    def forward(self, x, train=True):
        mask = attn.causal_mask(x.shape[1]) if self.causal else None
        y, self._cache = attn.mha_forward(x, self.heads, self.W_in.data, self.b_in.data,
                                          self.W_out.data, self.b_out.data, mask)
        return y

    def backward(self, dy):
        dx, dW_in, db_in, dW_out, db_out = attn.mha_backward(dy, self._cache)
        self.W_in.grad += dW_in
        self.b_in.grad += db_in
        self.W_out.grad += dW_out
        self.b_out.grad += db_out
        self._cache = None
        return dx


class SinusoidalPositions(Module):
    """Adds the fixed sine/cosine position table of Vaswani et al. (2017); no parameters."""

    def __init__(self, max_len: int, dim: int):
        self.table = sinusoidal_table(max_len, dim)

    def forward(self, x, train=True):
        y, _ = add_positions_forward(x, self.table.astype(x.dtype, copy=False))
        return y

    def backward(self, dy):
        return dy


class LearnedPositions(Module):
    def __init__(self, max_len: int, dim: int):
        self.table = self.param("weight", (max_len, dim), initializers.normal(0.02))

    def forward(self, x, train=True):
        y, self._cache = add_positions_forward(x, self.table.data)
        return y

    def backward(self, dy):
        dx, dtable = add_positions_backward(dy, self._cache)
        self.table.grad += dtable
        return dx


class TransformerBlock(Module):
    """Pre-norm encoder block: h = x + MHA(LN1(x)), then h + MLP(LN2(h)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, causal: bool = False):
        self.ln1 = LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, causal)
        self.ln2 = LayerNorm(dim)
        self.mlp = Sequential({"fc1": Linear(dim, mlp_ratio * dim, init="xavier"), "gelu": GELU(),
                               "fc2": Linear(mlp_ratio * dim, dim, init="xavier")})

    def forward(self, x, train=True):
        h = x + self.attn.forward(self.ln1.forward(x, train), train)
        return h + self.mlp.forward(self.ln2.forward(h, train), train)

    def backward(self, dy):
        dh = dy + self.ln2.backward(self.mlp.backward(dy))
        return dh + self.ln1.backward(self.attn.backward(dh))
