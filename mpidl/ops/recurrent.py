"""Recurrent kernels over (batch, time, features) with backpropagation through time.

Weights follow PyTorch's layout so they can be copied across: W_ih (G*H, I),
W_hh (G*H, H), b_ih and b_hh (G*H,), gates stacked in PyTorch's order
(LSTM: i, f, g, o; GRU: r, z, n). The input projection of every step is one GEMM
before the loop, and the weight gradients are one GEMM each after it: only the
h_{t-1} @ W_hh products depend on the previous step.

Every forward returns (hs, cache) with hs of shape (batch, time, H), all hidden
states (many-to-many); a many-to-one model reads hs[:, -1]. Every backward takes
dhs of the same shape (zeros where a step's output is unused) and returns
(dx, dh0, dW_ih, dW_hh, db_ih, db_hh) (LSTM also dc0).
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.activations import sigmoid_forward


def _sigmoid(x):
    return sigmoid_forward(x)[0]


def _input_projection(x, W_ih, b_ih):
    b, t, i = x.shape
    return (x.reshape(b * t, i) @ W_ih.T + b_ih).reshape(b, t, -1)


def _weight_grads(dgates_in, dgates_hid, x, h_prev, W_ih):
    """The input/weight gradients of all steps at once from the stacked gate gradients."""
    b, t, g = dgates_in.shape
    gi = dgates_in.reshape(b * t, g)
    gh = dgates_hid.reshape(b * t, g)
    dW_ih = gi.T @ x.reshape(b * t, -1)
    dW_hh = gh.T @ h_prev.reshape(b * t, -1)
    dx = (gi @ W_ih).reshape(x.shape)
    return dx, dW_ih, dW_hh, gi.sum(axis=0), gh.sum(axis=0)


def _zeros_state(x, hidden):
    return np.zeros((x.shape[0], hidden), dtype=x.dtype)


# -- Elman RNN, h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) -------------------------

def rnn_forward(x, h0, W_ih, W_hh, b_ih, b_hh):
    hidden = W_hh.shape[1]
    h = _zeros_state(x, hidden) if h0 is None else h0
    pre = _input_projection(x, W_ih, b_ih + b_hh)
    hs = np.empty(pre.shape, dtype=pre.dtype)
    h_prev = np.empty_like(hs)
    for t in range(x.shape[1]):
        h_prev[:, t] = h
        h = np.tanh(pre[:, t] + h @ W_hh.T)
        hs[:, t] = h
    return hs, (x, hs, h_prev, W_ih, W_hh)


def rnn_backward(dhs, cache):
    x, hs, h_prev, W_ih, W_hh = cache
    dpre = np.empty_like(hs)
    dh = np.zeros_like(hs[:, 0])
    for t in reversed(range(x.shape[1])):
        dh = dh + dhs[:, t]
        dpre[:, t] = dh * (1 - hs[:, t] * hs[:, t])
        dh = dpre[:, t] @ W_hh
    dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(dpre, dpre, x, h_prev, W_ih)
    return dx, dh, dW_ih, dW_hh, db_ih, db_hh


# -- LSTM (Hochreiter & Schmidhuber 1997, with forget gate) -------------------------------------

def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh):
    H = W_hh.shape[1]
    h = _zeros_state(x, H) if h0 is None else h0
    c = _zeros_state(x, H) if c0 is None else c0
    pre = _input_projection(x, W_ih, b_ih + b_hh)
    b, T, _ = pre.shape
    acts = np.empty_like(pre)                       # i, f, g, o after their nonlinearities
    cs = np.empty((b, T, H), dtype=pre.dtype)
    tanh_cs = np.empty_like(cs)
    hs = np.empty_like(cs)
    h_prev = np.empty_like(cs)
    c_prev = np.empty_like(cs)
    for t in range(T):
        h_prev[:, t], c_prev[:, t] = h, c
        z = pre[:, t] + h @ W_hh.T
        a = acts[:, t]
        a[:, :2 * H] = _sigmoid(z[:, :2 * H])
        a[:, 2 * H:3 * H] = np.tanh(z[:, 2 * H:3 * H])
        a[:, 3 * H:] = _sigmoid(z[:, 3 * H:])
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        c = f * c + i * g
        tanh_cs[:, t] = np.tanh(c)
        h = o * tanh_cs[:, t]
        cs[:, t], hs[:, t] = c, h
    return hs, (x, acts, cs, tanh_cs, h_prev, c_prev, W_ih, W_hh)


def lstm_backward(dhs, cache, dc_last=None):
    """dc_last: gradient on the final cell state, if the caller used it."""
    x, acts, cs, tanh_cs, h_prev, c_prev, W_ih, W_hh = cache
    H = W_hh.shape[1]
    dz = np.empty_like(acts)
    dh = np.zeros_like(cs[:, 0])
    dc = np.zeros_like(cs[:, 0]) if dc_last is None else dc_last.copy()
    for t in reversed(range(x.shape[1])):
        a = acts[:, t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        dh = dh + dhs[:, t]
        tc = tanh_cs[:, t]
        dc = dc + dh * o * (1 - tc * tc)
        d = dz[:, t]
        d[:, :H] = dc * g * i * (1 - i)
        d[:, H:2 * H] = dc * c_prev[:, t] * f * (1 - f)
        d[:, 2 * H:3 * H] = dc * i * (1 - g * g)
        d[:, 3 * H:] = dh * tc * o * (1 - o)
        dc = dc * f
        dh = d @ W_hh
    dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(dz, dz, x, h_prev, W_ih)
    return dx, dh, dc, dW_ih, dW_hh, db_ih, db_hh


# -- GRU in PyTorch's formulation (Cho et al. 2014, reset applied after the W_hn product) --------
#   r = s(W_ir x + b_ir + W_hr h + b_hr),  z = s(W_iz x + b_iz + W_hz h + b_hz)
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h

def gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh):
    H = W_hh.shape[1]
    h = _zeros_state(x, H) if h0 is None else h0
    gi = _input_projection(x, W_ih, b_ih)
    b, T, _ = gi.shape
    acts = np.empty_like(gi)          # r, z, n after their nonlinearities
    hn = np.empty((b, T, H), dtype=gi.dtype)   # W_hn h + b_hn, which the reset gate scales
    hs = np.empty_like(hn)
    h_prev = np.empty_like(hn)
    for t in range(T):
        h_prev[:, t] = h
        gh = h @ W_hh.T + b_hh
        a = acts[:, t]
        a[:, :2 * H] = _sigmoid(gi[:, t, :2 * H] + gh[:, :2 * H])
        r, z = a[:, :H], a[:, H:2 * H]
        hn[:, t] = gh[:, 2 * H:]
        a[:, 2 * H:] = np.tanh(gi[:, t, 2 * H:] + r * hn[:, t])
        n = a[:, 2 * H:]
        h = n + z * (h - n)
        hs[:, t] = h
    return hs, (x, acts, hn, h_prev, W_ih, W_hh)


def gru_backward(dhs, cache):
    x, acts, hn, h_prev, W_ih, W_hh = cache
    H = W_hh.shape[1]
    d_in = np.empty_like(acts)     # gradients on the input-side pre-activations
    d_hid = np.empty_like(acts)    # and on the hidden-side ones (differ in the n block)
    dh = np.zeros_like(hn[:, 0])
    for t in reversed(range(x.shape[1])):
        a = acts[:, t]
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        dh = dh + dhs[:, t]
        dn_pre = dh * (1 - z) * (1 - n * n)
        dz_pre = dh * (h_prev[:, t] - n) * z * (1 - z)
        dr_pre = dn_pre * hn[:, t] * r * (1 - r)
        di, dg = d_in[:, t], d_hid[:, t]
        di[:, :H] = dr_pre
        di[:, H:2 * H] = dz_pre
        di[:, 2 * H:] = dn_pre
        dg[:, :2 * H] = di[:, :2 * H]
        dg[:, 2 * H:] = dn_pre * r
        dh = dh * z + dg @ W_hh
    dx, dW_ih, dW_hh, db_ih, db_hh = _weight_grads(d_in, d_hid, x, h_prev, W_ih)
    return dx, dh, dW_ih, dW_hh, db_ih, db_hh
