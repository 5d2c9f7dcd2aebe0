"""Stateless kernels: ``name_forward(...) -> (y, cache)`` and ``name_backward(dy, cache) -> grads``.

Each forward caches only what its backward needs. No kernel owns parameters.
"""
