"""Tensor parallelism: dense and attention layers split across the T ranks of a tensor group.

Megatron-LM's scheme (Shoeybi et al. 2019): a dense pair ``Linear -> activation -> Linear``
becomes a column-parallel layer (each rank computes out/T of the outputs: its rows of W) and a
row-parallel layer (each rank multiplies its in/T slice of the input by its columns of W, and
one Allreduce sums the partial outputs). The activation between them is element-wise, so it
runs on the shards unchanged. One Allreduce in the forward pass (after the row layer) and one
in the backward pass (the input gradient of the column layer); every other array stays local.
Self-attention splits the same way by heads: each rank projects the queries, keys and values
of its H/T heads and multiplies its slice of the context by its columns of the output
projection.

mpidl finds what to split by itself (:func:`split_for_tensor_parallel`): in every Sequential,
each pair of Linear layers with only element-wise layers between them, and every
MultiHeadSelfAttention. Everything else (convolutions, norms, a last Linear without a
partner) is replicated: each rank of the group holds it whole and computes it alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpidl.errors import ConfigError
from mpidl.nn.base import Module, Sequential
from mpidl.nn.basic import GELU, Linear, ReLU, Sigmoid, Tanh
from mpidl.nn.sequence import MultiHeadSelfAttention
from mpidl.ops import attention as attn
from mpidl.ops.linear import linear_backward, linear_forward
from mpidl.params import Param

# Layers that act on each element alone, so they may sit between a column- and a row-parallel layer.
ELEMENTWISE = (ReLU, Tanh, Sigmoid, GELU)


@dataclass(frozen=True)
class Split:
    """How a parameter is cut among T ranks: along `axis`, in T equal parts, within each of
    `blocks` equal blocks (3 for attention's stacked query, key and value projections)."""

    axis: int
    blocks: int = 1

    def _view(self, full: np.ndarray, T: int) -> np.ndarray:
        shape = full.shape
        n = shape[self.axis]
        if n % (self.blocks * T):
            raise ConfigError(f"a parameter of shape {shape} does not split into {T} equal parts along axis {self.axis}")
        return full.reshape(*shape[:self.axis], self.blocks, T, n // (self.blocks * T), *shape[self.axis + 1:])

    def take(self, full: np.ndarray, t: int, T: int) -> np.ndarray:
        part = np.take(self._view(full, T), t, axis=self.axis + 1)
        return part.reshape(*full.shape[:self.axis], -1, *full.shape[self.axis + 1:])

    def put(self, full: np.ndarray, t: int, T: int, shard: np.ndarray) -> None:
        view = self._view(full, T)
        index = (slice(None),) * (self.axis + 1) + (t,)
        view[index] = shard.reshape(view[index].shape)

    def shard_shape(self, shape: tuple, T: int) -> tuple:
        return tuple(s // T if i == self.axis else s for i, s in enumerate(shape))


ROWS, COLUMNS, QKV_ROWS = Split(0), Split(1), Split(0, blocks=3)


def _shard_param(module: Module, source: Param, split: Split | None, T: int) -> Param:
    """A parameter of the shard's shape standing for `source`; `source` and `split` are kept
    on it, so the model can initialise and gather it in the whole model's layout."""
    shape = source.shape if split is None else split.shard_shape(source.shape, T)
    p = module.param(source.local_name, shape, source.init, decay=source.decay)
    p.source, p.split = source, split
    return p


class ColumnParallelLinear(Linear):
    """This rank's out/T outputs of a Linear layer; the input gradient is summed over the group."""

    def __init__(self, whole: Linear, group, T: int, t: int):
        self.group, self.T, self.t = group, T, t
        self.W = _shard_param(self, whole.W, ROWS, T)
        self.b = None if whole.b is None else _shard_param(self, whole.b, ROWS, T)
        self._cache = None
        self.need_input_grad = whole.need_input_grad

    def backward(self, dy):
        dx = super().backward(dy)
        if dx is not None:  # each rank holds its outputs' share of d loss / d x: sum them
            dx = np.ascontiguousarray(dx)
            self.group.allreduce_sum_(dx, what="Allreduce(input gradient of a column-parallel layer)")
        return dx

    def extra_repr(self) -> str:
        return f"(shard {self.t + 1} of {self.T}, weight={'x'.join(map(str, self.W.shape))})"


class RowParallelLinear(Linear):
    """This rank's in/T inputs of a Linear layer; the partial outputs are summed over the
    group, then the (replicated) bias is added."""

    def __init__(self, whole: Linear, group, T: int, t: int):
        self.group, self.T, self.t = group, T, t
        self.W = _shard_param(self, whole.W, COLUMNS, T)
        self.b = None if whole.b is None else _shard_param(self, whole.b, None, T)
        self._cache = None
        self.need_input_grad = True

    def forward(self, x, train=True):
        y, self._cache = linear_forward(x, self.W.data)
        y = np.ascontiguousarray(y)
        self.group.allreduce_sum_(y, what="Allreduce(outputs of a row-parallel layer)")
        if self.b is not None:
            y += self.b.data
        return y

    def extra_repr(self) -> str:
        return f"(shard {self.t + 1} of {self.T}, weight={'x'.join(map(str, self.W.shape))})"


class HeadParallelSelfAttention(Module):
    """H/T heads of a MultiHeadSelfAttention: this rank's rows of the query, key and value
    projections and its columns of the output projection; one Allreduce forward (the output),
    one backward (the input gradient)."""

    def __init__(self, whole: MultiHeadSelfAttention, group, T: int, t: int):
        if whole.heads % T:
            raise ConfigError(f"--tensor-parallel {T}: an attention layer's {whole.heads} heads do not "
                              f"divide by {T}")
        self.group, self.T, self.t = group, T, t
        self.heads, self.causal = whole.heads // T, whole.causal
        self.W_in = _shard_param(self, whole.W_in, QKV_ROWS, T)
        self.b_in = _shard_param(self, whole.b_in, QKV_ROWS, T)
        self.W_out = _shard_param(self, whole.W_out, COLUMNS, T)
        self.b_out = _shard_param(self, whole.b_out, None, T)

    def forward(self, x, train=True):
        width = self.W_out.shape[1]  # this rank's dim / T
        qkv, in_cache = linear_forward(x, self.W_in.data, self.b_in.data)
        q, k, v = (attn._split_heads(qkv[..., i * width:(i + 1) * width], self.heads) for i in range(3))
        mask = attn.causal_mask(x.shape[1]) if self.causal else None
        ctx, attn_cache = attn.sdpa_forward(q, k, v, mask)
        y, out_cache = linear_forward(attn._merge_heads(ctx), self.W_out.data)
        y = np.ascontiguousarray(y)
        self.group.allreduce_sum_(y, what="Allreduce(outputs of head-parallel attention)")
        y += self.b_out.data
        self._cache = (in_cache, attn_cache, out_cache)
        return y

    def backward(self, dy):
        in_cache, attn_cache, out_cache = self._cache
        dctx, dW_out, db_out = linear_backward(dy, out_cache)
        dq, dk, dv = attn.sdpa_backward(attn._split_heads(dctx, self.heads), attn_cache)
        dqkv = np.concatenate([attn._merge_heads(g) for g in (dq, dk, dv)], axis=-1)
        dx, dW_in, db_in = linear_backward(dqkv, in_cache)
        self.W_in.grad += dW_in
        self.b_in.grad += db_in
        self.W_out.grad += dW_out
        self.b_out.grad += db_out
        self._cache = None
        dx = np.ascontiguousarray(dx)
        self.group.allreduce_sum_(dx, what="Allreduce(input gradient of head-parallel attention)")
        return dx

    def extra_repr(self) -> str:
        return f"(heads {self.heads} of {self.heads * self.T}, shard {self.t + 1} of {self.T})"


def dense_pairs(seq: Sequential) -> list[tuple[int, int]]:
    """(i, j) for each Linear at i whose output feeds the Linear at j through element-wise
    layers only; pairs do not overlap."""
    pairs, i, layers = [], 0, seq.layers
    while i < len(layers):
        if type(layers[i]) is Linear:
            j = i + 1
            while j < len(layers) and isinstance(layers[j], ELEMENTWISE):
                j += 1
            if j < len(layers) and type(layers[j]) is Linear:
                pairs.append((i, j))
                i = j + 1
                continue
        i += 1
    return pairs


def split_for_tensor_parallel(net: Module, group, T: int, t: int) -> int:
    """Replace, in place, the dense pairs and attention layers of `net` by this rank's shards
    (t of T). Returns how many layers were split; raises ConfigError for a layer that does not
    divide by T."""
    split = 0
    for module in net.modules():
        if isinstance(module, Sequential):
            for i, j in dense_pairs(module):
                first, second = module.layers[i], module.layers[j]
                width = first.W.shape[0]
                if width % T:
                    raise ConfigError(f"--tensor-parallel {T}: the dense pair {module.names[i]} -> "
                                      f"{module.names[j]} has {width} hidden units, which do not divide by {T}")
                module.layers[i] = ColumnParallelLinear(first, group, T, t)
                module.layers[j] = RowParallelLinear(second, group, T, t)
                split += 2
        for key, value in list(vars(module).items()):
            if type(value) is MultiHeadSelfAttention:
                setattr(module, key, HeadParallelSelfAttention(value, group, T, t))
                split += 1
        if isinstance(module, Sequential):
            for i, layer in enumerate(module.layers):
                if type(layer) is MultiHeadSelfAttention:
                    module.layers[i] = HeadParallelSelfAttention(layer, group, T, t)
                    split += 1
    return split
