"""Losses: ``loss_fn(output, target) -> (mean loss over the batch, d loss / d output)``.

All return the mean over the local batch; the trainer reweights the gradient when
ranks hold different numbers of samples, so the update equals the global-batch one.
"""

from __future__ import annotations

import numpy as np

from mpidl.ops.activations import log_softmax


def softmax_cross_entropy(logits, labels):
    """Integer labels of shape (n,), logits (n, classes). Fused for stability."""
    n = logits.shape[0]
    logp = log_softmax(logits)
    loss = -logp[np.arange(n), labels].sum() / max(n, 1)
    dlogits = np.exp(logp)
    dlogits[np.arange(n), labels] -= 1
    dlogits /= max(n, 1)
    return float(loss), dlogits


def mse(pred, target):
    """Squared error summed over outputs, mean over samples; the gradient has pred's dtype."""
    n = pred.shape[0]
    diff = pred - target.reshape(pred.shape).astype(pred.dtype, copy=False)
    loss = (diff * diff).sum() / max(n, 1)
    return float(loss), (2.0 / max(n, 1)) * diff


LOG_FLOOR = -100.0  # log(p) and log(1-p) are clamped here, as PyTorch's BCELoss does


def binary_cross_entropy(prob, target, eps=1e-12):
    """BCE on probabilities (after a Sigmoid layer), summed over outputs, mean over samples.
    Finite for p exactly 0 or 1 in any precision (a float32 sigmoid rounds to 1.0 at 17):
    each log is clamped at -100 and the gradient's denominator at eps, as in PyTorch."""
    n = prob.shape[0]
    t = target.reshape(prob.shape).astype(prob.dtype)
    p = prob.astype(np.float64)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p), LOG_FLOOR), np.maximum(np.log1p(-p), LOG_FLOOR)
    loss = -(t * log_p + (1 - t) * log_q).sum() / max(n, 1)
    dprob = (p - t) / np.maximum(p * (1 - p), eps) / max(n, 1)
    return float(loss), dprob.astype(prob.dtype)


def binary_cross_entropy_with_logits(logits, target):
    """BCE on logits, stable for any logit: max(z,0) - z*t + log(1+exp(-|z|))."""
    n = logits.shape[0]
    t = target.reshape(logits.shape).astype(logits.dtype)
    z = logits
    loss = (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).sum() / max(n, 1)
    sig = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
    return float(loss), ((sig - t) / max(n, 1)).astype(logits.dtype, copy=False)


def multiclass_hinge(scores, labels, margin=1.0):
    """Weston-Watkins multiclass SVM loss: sum over wrong classes j of max(0, margin + s_j - s_y),
    mean over samples (torch.nn.MultiMarginLoss averages over classes too: ours = its value x classes)."""
    n = scores.shape[0]
    rows = np.arange(n)
    slack = margin + scores - scores[rows, labels][:, None]
    slack[rows, labels] = 0
    active = (slack > 0).astype(scores.dtype)
    loss = (slack * active).sum() / max(n, 1)
    dscores = active
    dscores[rows, labels] = -active.sum(axis=1)
    dscores /= max(n, 1)
    return float(loss), dscores


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent units, mean over samples.
    Returns (loss, dmu, dlogvar)."""
    n = mu.shape[0]
    var = np.exp(logvar)
    loss = 0.5 * (mu * mu + var - 1 - logvar).sum() / max(n, 1)
    return float(loss), mu / max(n, 1), 0.5 * (var - 1) / max(n, 1)


BY_NAME = {
    "cross_entropy": softmax_cross_entropy,
    "mse": mse,
    "bce": binary_cross_entropy,
    "bce_logits": binary_cross_entropy_with_logits,
    "hinge": multiclass_hinge,
}
