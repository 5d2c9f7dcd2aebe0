"""Checks for layers of your own: backward against central finite differences in float64.

    from mpidl import nn, testing
    report = testing.check_module(MyLayer(8, 4), x)      # x: a float64 input batch
    assert report.worst < 1e-6, report

For f(x) = <module(x), w> with a random w, the derivative along a random direction v must
equal <grad f, v> (chainer's gradient_check idea): two evaluations check the whole
Jacobian-vector product, for the input gradient and every parameter's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mpidl.params import ParamStore


@dataclass
class GradReport:
    worst: float                                      # worst relative error over all checks
    errors: dict = field(default_factory=dict)        # what -> worst relative error ('input', param names)

    def __str__(self):
        parts = ", ".join(f"{k} {v:.2e}" for k, v in self.errors.items())
        return f"worst relative error {self.worst:.2e} ({parts})"


def _relative(numeric: float, analytic: float, atol: float) -> float:
    return abs(numeric - analytic) / max(abs(numeric), abs(analytic), atol)


def directional_check(f, grads, inputs, rng, eps=1e-6, trials=3, rtol=1e-6, atol=1e-9):
    """f(*inputs) -> scalar; grads: analytic gradients of f w.r.t. each input (same order).
    Raises AssertionError when finite differences and the gradients disagree."""
    for _ in range(trials):
        dirs = [rng.normal(size=a.shape) for a in inputs]
        plus = [a + eps * d for a, d in zip(inputs, dirs)]
        minus = [a - eps * d for a, d in zip(inputs, dirs)]
        numeric = (f(*plus) - f(*minus)) / (2 * eps)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
        assert abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic)), \
            f"directional derivative: finite differences {numeric:.10g} vs backward {analytic:.10g}"


def check_module(module, x, rng=None, *, eps: float = 1e-6, trials: int = 3, seed: int = 0,
                 atol: float = 1e-9) -> GradReport:
    """Compare `module`'s backward with central finite differences in float64 along random
    directions, separately for the input and for each parameter; returns the worst relative
    errors. A module not yet in a model gets float64 buffers of its own (initialised from
    `seed`); one already in a model must use float64 buffers."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    params = module.parameters()
    if params and params[0].data is None:
        ParamStore(module).allocate(np.float64, np.random.default_rng(seed))
    if params and params[0].data.dtype != np.float64:
        raise TypeError("check_module needs float64 parameters (build the model with dtype='float64')")
    x = np.asarray(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
    y = module.forward(x, True)
    w = rng.normal(size=y.shape)
    for p in params:
        p.grad[...] = 0
        p.grad_is_zero = True
    dx = module.backward(w.copy())
    errors = {}

    def loss_at(xv):
        return float((module.forward(xv, True) * w).sum())

    checks = []
    if dx is not None and x.dtype.kind == "f":
        checks.append(("input", x, dx.copy(), lambda v: loss_at(v)))
    for p in params:
        saved = p.data.copy()

        def with_param(v, p=p, saved=saved):
            p.data[...] = v
            out = loss_at(x)
            p.data[...] = saved
            return out
        checks.append((p.name, saved, p.grad.copy(), with_param))
    for what, value, grad, f in checks:
        worst = 0.0
        for _ in range(trials):
            d = rng.normal(size=value.shape)
            numeric = (f(value + eps * d) - f(value - eps * d)) / (2 * eps)
            analytic = float((grad * d).sum())
            worst = max(worst, _relative(numeric, analytic, atol))
        errors[what] = worst
    module.forward(x, True)  # leave the module as a plain forward would
    return GradReport(max(errors.values(), default=0.0), errors)
