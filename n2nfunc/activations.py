"""Parameterless elementwise layers: ``relu``, ``sigmoid``, ``identity``.

They accept any shape (``init`` passes the shape through) and keep the input's memory
layout, so channels-last activations stay channels-last.
"""

from .base import Layer, apply_via_vjp, check_cotangent, check_params, check_tensor


def _elementwise(name: str, forward, derivative_times) -> Layer:
    """A layer ``y = f(x)`` with pullback ``ct -> derivative_times(x, y, ct)``."""

    def init(generator, in_shape):
        return tuple(in_shape), {}

    def vjp(params, x):
        check_params(params, name, {})
        y = forward(check_tensor(x, name))

        def pullback(ct):
            return {}, derivative_times(x, y, check_cotangent(ct, y, name))

        return y, pullback

    return Layer(init, lambda params, x: forward(check_tensor(x, name)), vjp)


def relu() -> Layer:
    """``y = max(x, 0)``; ``dx = ct * [y > 0]`` (the subgradient 0 at x = 0, like PyTorch).

    The mask is ``sign(y)`` (y >= 0, so 0 or 1) multiplied in: one float pass, several
    times faster than a boolean mask and ``masked_fill`` on channels-last tensors.
    """
    return _elementwise("relu", lambda x: x.clamp(min=0), lambda x, y, ct: y.sign().mul_(ct))


def _sigmoid(x):
    # 1 / (1 + exp(-x)): exp overflows to inf for x << 0, and 1/inf = 0, so no NaN for any |x|.
    return x.neg().exp_().add_(1).reciprocal_()


def sigmoid() -> Layer:
    """``y = 1 / (1 + exp(-x))``; ``dx = ct * y * (1 - y)``."""
    return _elementwise("sigmoid", _sigmoid, lambda x, y, ct: y.neg().add_(1).mul_(y).mul_(ct))


def identity() -> Layer:
    """``y = x``; for skip connections."""

    def init(generator, in_shape):
        return in_shape, {}

    def vjp(params, x):
        return x, lambda ct: ({}, ct)

    return Layer(init, apply_via_vjp(vjp), vjp)
