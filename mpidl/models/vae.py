"""The variational auto-encoder (Kingma & Welling 2014): network, objective and picture."""

from __future__ import annotations

import os

import numpy as np

from mpidl.losses import binary_cross_entropy_with_logits, gaussian_kl
from mpidl.models.base import ModelSpec, register
from mpidl.nn import Linear, Module, ReLU, Sequential
from mpidl.ops.activations import sigmoid

VAE_SIZES = dict(hidden=400, latent=20)


class VAE(Module):
    """encoder: x -> hidden -> (mu, logvar); z = mu + exp(logvar/2) * eps with eps from this
    rank's generator; decoder: z -> hidden -> pixel logits shaped like x. Sampling happens in
    evaluation too, so the reported loss is a true (negative) ELBO estimate."""

    TERMS = ("recon_bce", "kl")

    def __init__(self, sample_shape, hidden: int, latent: int, rng=None):
        pixels = int(np.prod(sample_shape))
        self.sample_shape, self.latent = tuple(sample_shape), latent
        self.rng = rng
        self.enc = Sequential({"fc1": Linear(pixels, hidden), "relu": ReLU(),
                               "fc2": Linear(hidden, 2 * latent, init="xavier")})
        self.dec = Sequential({"fc1": Linear(latent, hidden), "relu": ReLU(),
                               "fc2": Linear(hidden, pixels, init="xavier")})
        self.enc.layers[0].need_input_grad = False  # pixels need no gradient
        self._kl_weight = 0.0

    def attach(self, rng, comm):
        self.rng = rng

    def encode(self, x, train=False):
        stats = self.enc.forward(x.reshape(len(x), -1), train)
        return stats[:, :self.latent], stats[:, self.latent:]

    def decode(self, z, train=False):
        return self.dec.forward(z, train).reshape(len(z), *self.sample_shape)

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
        dz = self.dec.backward(dlogits.reshape(len(dlogits), -1))
        _, dmu_kl, dlogvar_kl = gaussian_kl(mu, logvar)
        dmu = dz + self._kl_weight * dmu_kl
        dlogvar = dz * eps * 0.5 * std + self._kl_weight * dlogvar_kl
        self.enc.backward(np.concatenate([dmu, dlogvar], axis=1))
        self._cache = None
        return None


def build_vae(shape, n_out, options):
    return VAE(shape, VAE_SIZES["hidden"], VAE_SIZES["latent"])


def vae_objective(net, out, x, y, weight=1.0):
    return net.objective(out, x, weight)


def vae_pictures(model, data, out_dir, n=10, seed=0):
    """PNG: test inputs, their reconstructions (from the posterior mean) and samples from the prior.
    Returns the file written, or None without matplotlib (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    vae = model.net
    dtype = model.store.data.dtype
    x = data.inputs(data.x_val[:n], dtype)
    mu, _ = vae.encode(x)
    recon = sigmoid(vae.decode(mu))
    z = np.random.default_rng(seed).standard_normal((n, vae.latent)).astype(dtype)
    samples = sigmoid(vae.decode(z))
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


register("vae", ModelSpec(build_vae, "bce_logits", "generative",
                          dict(dataset="digits", optimizer="adam", batch_size=128, epochs=30, lr=1e-3),
                          "variational auto-encoder (MLP, {latent}-d latent); loss = BCE + KL; "
                          "writes vae_samples.png".format(**VAE_SIZES),
                          objective=vae_objective, terms=VAE.TERMS, finish=vae_pictures))
