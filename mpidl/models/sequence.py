"""Sequence models: RNN, LSTM, GRU and a Transformer encoder, reading an image row by row
(rows time steps of channels*cols features: 28 x 28 on MNIST-style data, 8 x 8 on the digits)."""

from __future__ import annotations

from mpidl.models.base import ModelSpec, register
from mpidl.nn import (ImageRows, LayerNorm, Linear, MeanOverTime, Recurrent, Sequential, SinusoidalPositions,
                      TransformerBlock)

RECURRENT_HIDDEN = 128
TRANSFORMER = dict(dim=64, heads=4, blocks=2, mlp_ratio=4)


def _rows(shape):
    c, h, w = shape if len(shape) == 3 else (1, *shape)
    return h, c * w


def _recurrent_builder(kind):
    def build(shape, n_out, options):
        steps, features = _rows(shape)
        return Sequential({"rows": ImageRows(), kind: Recurrent(kind, features, RECURRENT_HIDDEN),
                           "head": Linear(RECURRENT_HIDDEN, n_out, init="xavier")})
    return build


def build_transformer(shape, n_out, options):
    """Rows embedded linearly, sinusoidal positions, pre-norm blocks, final LayerNorm, mean pooling."""
    steps, features = _rows(shape)
    d = TRANSFORMER["dim"]
    layers = {"rows": ImageRows(), "embed": Linear(features, d, init="xavier"),
              "positions": SinusoidalPositions(steps, d)}
    for i in range(TRANSFORMER["blocks"]):
        layers[f"block{i}"] = TransformerBlock(d, TRANSFORMER["heads"], TRANSFORMER["mlp_ratio"])
    layers.update(ln_final=LayerNorm(d), pool=MeanOverTime(), head=Linear(d, n_out, init="xavier"))
    return Sequential(layers)


_ADAM = dict(dataset="digits", optimizer="adam", batch_size=64)
for _kind, _epochs, _lr in (("rnn", 30, 1e-3), ("lstm", 20, 2e-3), ("gru", 20, 2e-3)):
    register(_kind, ModelSpec(_recurrent_builder(_kind), "cross_entropy", "classification",
                              dict(_ADAM, epochs=_epochs, lr=_lr),
                              f"{'tanh RNN' if _kind == 'rnn' else _kind.upper()} ({RECURRENT_HIDDEN} units) "
                              "over image rows, last state -> classes"))
register("transformer", ModelSpec(build_transformer, "cross_entropy", "classification",
                                  dict(_ADAM, epochs=30, lr=1e-3),
                                  "pre-norm Transformer encoder ({blocks} blocks, dim {dim}, {heads} heads) "
                                  "over image rows, mean pooled".format(**TRANSFORMER)))
