"""Layers for the sequence, attention and generative models: they own ParamStore views
and call the kernels in mpidl.ops (same protocol as mpidl.layers).

Sequences are (batch, time, features). Norm scales/shifts and all biases are
declared with decay=False so weight decay leaves them alone.
"""

from __future__ import annotations

import numpy as np

from mpidl import init as initializers
from mpidl.layers import Layer, Linear, ReLU, Sequential
from mpidl.losses import binary_cross_entropy_with_logits, gaussian_kl
from mpidl.ops import attention as attn
from mpidl.ops import recurrent as rec
from mpidl.ops.embedding import embedding_backward, embedding_forward
from mpidl.ops.gelu import gelu_backward, gelu_forward
from mpidl.ops.layernorm import layernorm_backward, layernorm_forward
from mpidl.ops.positional import add_positions_backward, add_positions_forward, sinusoidal_table


def _uniform(bound):
    def init(rng, shape):
        return rng.uniform(-bound, bound, size=shape)
    return init


class LayerNorm(Layer):
    def __init__(self, store, name, dim, eps=1e-5):
        self.gamma = store.add(f"{name}.weight", (dim,), initializers.ones, decay=False)
        self.beta = store.add(f"{name}.bias", (dim,), initializers.zeros, decay=False)
        self.eps = eps

    def forward(self, x, train=True):
        y, self._cache = layernorm_forward(x, self.gamma.data, self.beta.data, self.eps)
        return y

    def backward(self, dy):
        dx, dg, db = layernorm_backward(dy, self._cache)
        self.gamma.grad += dg
        self.beta.grad += db
        self._cache = None
        return dx


class GELU(Layer):
    """Tanh approximation (torch: F.gelu(x, approximate="tanh"))."""

    def forward(self, x, train=True):
        y, self._cache = gelu_forward(x)
        return y

    def backward(self, dy):
        return gelu_backward(dy, self._cache)


class Embedding(Layer):
    def __init__(self, store, name, vocab, dim):
        self.table = store.add(f"{name}.weight", (vocab, dim), initializers.normal(1.0))

    def forward(self, ids, train=True):
        y, self._cache = embedding_forward(ids, self.table.data)
        return y

    def backward(self, dy):
        self.table.grad += embedding_backward(dy, self._cache)
        return None  # integer ids have no gradient


class ImageRows(Layer):
    """(batch, channels, rows, cols) -> (batch, rows, channels*cols): an image read row by row."""

    def forward(self, x, train=True):
        self._shape = x.shape
        b, c, h, w = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, h, c * w)

    def backward(self, dy):
        b, c, h, w = self._shape
        return dy.reshape(b, h, c, w).transpose(0, 2, 1, 3)


class MeanOverTime(Layer):
    def forward(self, x, train=True):
        self._steps = x.shape[1]
        return x.mean(axis=1)

    def backward(self, dy):
        return np.repeat(dy[:, None, :] / self._steps, self._steps, axis=1)


class Recurrent(Layer):
    """RNN (tanh), LSTM or GRU over (batch, time, features), zero initial state.

    return_sequences=True gives every step's hidden state (many-to-many), else the
    last one (many-to-one). Initialised as PyTorch does, U(-1/sqrt(H), 1/sqrt(H)).
    """

    GATES = {"rnn": 1, "lstm": 4, "gru": 3}

    def __init__(self, store, name, kind, input_size, hidden_size, return_sequences=False):
        if kind not in self.GATES:
            raise ValueError(f"unknown recurrent cell {kind!r}")
        self.kind, self.hidden, self.return_sequences = kind, hidden_size, return_sequences
        g = self.GATES[kind] * hidden_size
        init = _uniform(1.0 / np.sqrt(hidden_size))
        self.W_ih = store.add(f"{name}.weight_ih", (g, input_size), init)
        self.W_hh = store.add(f"{name}.weight_hh", (g, hidden_size), init)
        self.b_ih = store.add(f"{name}.bias_ih", (g,), init, decay=False)
        self.b_hh = store.add(f"{name}.bias_hh", (g,), init, decay=False)
        self.need_input_grad = True

    def forward(self, x, train=True):
        w = (self.W_ih.data, self.W_hh.data, self.b_ih.data, self.b_hh.data)
        if self.kind == "lstm":
            hs, self._cache = rec.lstm_forward(x, None, None, *w)
        else:
            hs, self._cache = getattr(rec, f"{self.kind}_forward")(x, None, *w)
        self._shape = hs.shape
        return hs if self.return_sequences else hs[:, -1]

    def backward(self, dy):
        if self.return_sequences:
            dhs = dy
        else:
            dhs = np.zeros(self._shape, dtype=dy.dtype)
            dhs[:, -1] = dy
        grads = getattr(rec, f"{self.kind}_backward")(dhs, self._cache)
        dx, dW_ih, dW_hh, db_ih, db_hh = grads[0], *grads[-4:]
        for p, g in ((self.W_ih, dW_ih), (self.W_hh, dW_hh), (self.b_ih, db_ih), (self.b_hh, db_hh)):
            p.grad += g
        self._cache = None
        return dx if self.need_input_grad else None


class MultiHeadSelfAttention(Layer):
    def __init__(self, store, name, dim, heads, causal=False):
        if dim % heads:
            raise ValueError(f"dim {dim} does not split into {heads} heads")
        self.heads, self.causal = heads, causal
        self.W_in = store.add(f"{name}.in_proj_weight", (3 * dim, dim), initializers.xavier_uniform)
        self.b_in = store.add(f"{name}.in_proj_bias", (3 * dim,), initializers.zeros, decay=False)
        self.W_out = store.add(f"{name}.out_proj.weight", (dim, dim), initializers.xavier_uniform)
        self.b_out = store.add(f"{name}.out_proj.bias", (dim,), initializers.zeros, decay=False)

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


class SinusoidalPositions(Layer):
    def __init__(self, max_len, dim):
        self.table = sinusoidal_table(max_len, dim)

    def forward(self, x, train=True):
        y, _ = add_positions_forward(x, self.table.astype(x.dtype, copy=False))
        return y

    def backward(self, dy):
        return dy


class LearnedPositions(Layer):
    def __init__(self, store, name, max_len, dim):
        self.table = store.add(f"{name}.weight", (max_len, dim), initializers.normal(0.02))

    def forward(self, x, train=True):
        y, self._cache = add_positions_forward(x, self.table.data)
        return y

    def backward(self, dy):
        dx, dtable = add_positions_backward(dy, self._cache)
        self.table.grad += dtable
        return dx


class Residual(Layer):
    """x + inner(x)."""

    def __init__(self, inner: Layer):
        self.inner = inner

    def forward(self, x, train=True):
        return x + self.inner.forward(x, train)

    def backward(self, dy):
        return dy + self.inner.backward(dy)


class TransformerBlock(Sequential):
    """Pre-norm encoder block: x + MHA(LN(x)), then h + MLP(LN(h)) with a GELU MLP."""

    def __init__(self, store, name, dim, heads, mlp_ratio=4, causal=False):
        super().__init__(
            Residual(Sequential(LayerNorm(store, f"{name}.ln1", dim),
                                MultiHeadSelfAttention(store, f"{name}.attn", dim, heads, causal))),
            Residual(Sequential(LayerNorm(store, f"{name}.ln2", dim),
                                Linear(store, f"{name}.mlp.fc1", dim, mlp_ratio * dim, init="xavier"),
                                GELU(),
                                Linear(store, f"{name}.mlp.fc2", mlp_ratio * dim, dim, init="xavier"))))


class VAE(Layer):
    """Variational auto-encoder (Kingma & Welling 2014) on images.

    encoder: x -> hidden -> (mu, logvar); z = mu + exp(logvar/2) * eps with eps from this
    rank's Generator; decoder: z -> hidden -> pixel logits shaped like x. Sampling
    happens in evaluation too, so the reported loss is a true (negative) ELBO estimate.
    """

    TERMS = ("recon_bce", "kl")

    def __init__(self, store, sample_shape, hidden, latent, rng):
        pixels = int(np.prod(sample_shape))
        self.sample_shape, self.latent = tuple(sample_shape), latent
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.encoder = Sequential(Linear(store, "enc.fc1", pixels, hidden), ReLU(),
                                  Linear(store, "enc.fc2", hidden, 2 * latent, init="xavier"))
        self.decoder = Sequential(Linear(store, "dec.fc1", latent, hidden), ReLU(),
                                  Linear(store, "dec.fc2", hidden, pixels, init="xavier"))
        self.encoder.layers[0].need_input_grad = False  # pixels need no gradient
        self._kl_weight = 0.0

    def encode(self, x, train=False):
        stats = self.encoder.forward(x.reshape(len(x), -1), train)
        return stats[:, :self.latent], stats[:, self.latent:]

    def decode(self, z, train=False):
        return self.decoder.forward(z, train).reshape(len(z), *self.sample_shape)

    def forward(self, x, train=True):
        mu, logvar = self.encode(x, train)
        std = np.exp(0.5 * logvar)
        eps = self.rng.standard_normal(mu.shape, dtype=mu.dtype)
        self._cache = (mu, logvar, std, eps)
        return self.decode(mu + std * eps, train)

    def objective(self, logits, x, weight=1.0):
        """(negative ELBO, d/dlogits, terms); the KL gradient is applied inside backward()."""
        recon, dlogits = binary_cross_entropy_with_logits(logits, x)
        mu, logvar, _, _ = self._cache
        kl, _, _ = gaussian_kl(mu, logvar)
        self._kl_weight = weight
        if weight != 1.0:
            dlogits *= weight
        return recon + kl, dlogits, {"recon_bce": recon, "kl": kl}

    def backward(self, dlogits):
        mu, logvar, std, eps = self._cache
        dz = self.decoder.backward(dlogits.reshape(len(dlogits), -1))
        _, dmu_kl, dlogvar_kl = gaussian_kl(mu, logvar)
        dmu = dz + self._kl_weight * dmu_kl
        dlogvar = dz * eps * 0.5 * std + self._kl_weight * dlogvar_kl
        self.encoder.backward(np.concatenate([dmu, dlogvar], axis=1))
        self._cache = None
        return None
