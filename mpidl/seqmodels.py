"""Sequence, attention, generative and margin models of the zoo; mpidl.models registers them.

Sequence models read an image (channels, rows, cols) row by row: rows time steps of
channels*cols features (28 x 28 on MNIST-style data, 8 x 8 on the built-in digits).
"""

from __future__ import annotations

import os

import numpy as np

from mpidl.layers import Flatten, Linear, Sequential
from mpidl.seqlayers import (VAE, ImageRows, LayerNorm, MeanOverTime, Recurrent, SinusoidalPositions,
                             TransformerBlock)

RECURRENT_HIDDEN = 128
TRANSFORMER = dict(dim=64, heads=4, blocks=2, mlp_ratio=4)
VAE_SIZES = dict(hidden=400, latent=20)


def _rows(shape):
    c, h, w = shape if len(shape) == 3 else (1, *shape)
    return h, c * w


def _recurrent_builder(kind):
    def build(store, shape, n_out, options):
        steps, features = _rows(shape)
        return Sequential(ImageRows(),
                          Recurrent(store, kind, kind, features, RECURRENT_HIDDEN),
                          Linear(store, "head", RECURRENT_HIDDEN, n_out, init="xavier"))
    return build


def build_transformer(store, shape, n_out, options):
    """Rows embedded linearly, sinusoidal positions, pre-norm blocks, final LayerNorm, mean pooling."""
    steps, features = _rows(shape)
    d = TRANSFORMER["dim"]
    blocks = [TransformerBlock(store, f"block{i}", d, TRANSFORMER["heads"], TRANSFORMER["mlp_ratio"])
              for i in range(TRANSFORMER["blocks"])]
    return Sequential(ImageRows(), Linear(store, "embed", features, d, init="xavier"),
                      SinusoidalPositions(steps, d), *blocks, LayerNorm(store, "ln_final", d),
                      MeanOverTime(), Linear(store, "head", d, n_out, init="xavier"))


def build_vae(store, shape, n_out, options):
    return Sequential(VAE(store, shape, VAE_SIZES["hidden"], VAE_SIZES["latent"], options.get("rng")))


def build_svm(store, shape, n_out, options):
    return Sequential(Flatten(), Linear(store, "linear", int(np.prod(shape)), n_out, init="xavier"))


def vae_objective(net, out, x, y, weight=1.0):
    return net.layers[0].objective(out, x, weight)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def vae_pictures(model, data, out_dir, n=10, seed=0):
    """PNG: test inputs, their reconstructions (from the posterior mean) and samples from the prior.
    Returns the file written, or None without matplotlib (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    vae = model.net.layers[0]
    dtype = model.store.data.dtype
    x = data.inputs(data.x_val[:n], dtype)
    mu, _ = vae.encode(x)
    recon = _sigmoid(vae.decode(mu))
    z = np.random.default_rng(seed).standard_normal((n, vae.latent)).astype(dtype)
    samples = _sigmoid(vae.decode(z))
    rows = [("input", x), ("reconstruction", recon), ("sample", samples)]
    fig, axes = plt.subplots(len(rows), n, figsize=(n, len(rows) * 1.1))
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            img = images[c].reshape(images[c].shape[-2:]) if images[c].shape[0] == 1 else \
                images[c].transpose(1, 2, 0)
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "vae_samples.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def seq_models(ModelSpec) -> dict:
    adam = dict(dataset="digits", optimizer="adam", batch_size=64)
    return {
        "rnn": ModelSpec(_recurrent_builder("rnn"), "cross_entropy", "classification",
                         dict(adam, epochs=30, lr=1e-3),
                         f"tanh RNN ({RECURRENT_HIDDEN} units) over image rows, last state -> classes"),
        "lstm": ModelSpec(_recurrent_builder("lstm"), "cross_entropy", "classification",
                          dict(adam, epochs=20, lr=2e-3),
                          f"LSTM ({RECURRENT_HIDDEN} units) over image rows, last state -> classes"),
        "gru": ModelSpec(_recurrent_builder("gru"), "cross_entropy", "classification",
                         dict(adam, epochs=20, lr=2e-3),
                         f"GRU ({RECURRENT_HIDDEN} units) over image rows, last state -> classes"),
        "transformer": ModelSpec(build_transformer, "cross_entropy", "classification",
                                 dict(adam, epochs=30, lr=1e-3),
                                 "pre-norm Transformer encoder ({blocks} blocks, dim {dim}, {heads} heads) "
                                 "over image rows, mean pooled".format(**TRANSFORMER)),
        "vae": ModelSpec(build_vae, "bce_logits", "generative",
                         dict(adam, epochs=30, lr=1e-3, batch_size=128),
                         "variational auto-encoder (MLP, {latent}-d latent); loss = BCE + KL; "
                         "writes vae_samples.png".format(**VAE_SIZES),
                         objective=vae_objective, terms=VAE.TERMS, finish=vae_pictures),
        "svm": ModelSpec(build_svm, "hinge", "classification",
                         dict(dataset="digits", epochs=30, batch_size=64, optimizer="sgd", lr=0.01,
                              momentum=0.9, weight_decay=1e-4),
                         "linear multiclass SVM (Weston-Watkins hinge loss)"),
    }
