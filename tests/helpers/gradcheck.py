"""Central finite differences in float64 along random directions (chainer's gradient_check idea):
for f(x) = <y(x), w> with a random w, the directional derivative along a random v must equal
<grad f, v>, which checks the whole Jacobian-vector product in two evaluations."""

from __future__ import annotations

from mpidl.testing import directional_check  # noqa: F401  (the tests import it from here)


def layer_check(layer, x, rng, params=(), eps=1e-6, rtol=1e-6, atol=1e-9):
    """Check a layer's input gradient and its parameter gradients against finite differences
    of L = <layer(x), w> for a random w."""
    y = layer.forward(x, True)
    w = rng.normal(size=y.shape)
    for p in params:
        p.grad[...] = 0
    dx = layer.backward(w.copy())
    grads = ([] if dx is None else [dx]) + [p.grad.copy() for p in params]

    def f(*values):
        if dx is not None:
            xv, pv = values[0], values[1:]
        else:
            xv, pv = x, values
        saved = [p.data.copy() for p in params]
        for p, v in zip(params, pv):
            p.data[...] = v
        out = float((layer.forward(xv, True) * w).sum())
        for p, s in zip(params, saved):
            p.data[...] = s
        return out

    inputs = ([] if dx is None else [x]) + [p.data.copy() for p in params]
    directional_check(f, grads, inputs, rng, eps=eps, rtol=rtol, atol=atol)


REL_TOL = 1e-6
H = 1e-6


def named_directional_check(forward, inputs, grads, rng):
    """forward(**inputs) -> y; grads: name -> analytic d(sum(y*R))/d input, computed with the same R."""
    for name, g in grads.items():
        d = rng.standard_normal(inputs[name].shape)
        plus = dict(inputs, **{name: inputs[name] + H * d})
        minus = dict(inputs, **{name: inputs[name] - H * d})
        numeric = (forward(**plus) - forward(**minus)) / (2 * H)
        analytic = float((g * d).sum())
        assert abs(numeric - analytic) <= REL_TOL * max(1.0, abs(analytic)), (name, numeric, analytic)
