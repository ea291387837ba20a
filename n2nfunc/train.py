"""Training steps as functions: ``value_and_grad`` and ``make_train_step``."""

from collections.abc import Callable

from .base import Layer, pull
from .losses import Loss
from .optim import GradientTransformation, apply_updates


def value_and_grad(layer: Layer, loss: Loss) -> Callable:
    """``f(params, x, target) -> (loss value, d loss / d params)`` for
    ``loss(layer(params, x), target)``."""

    def f(params, x, target):
        pred, pullback = layer.vjp(params, x)
        value, ct = loss.value_and_grad(pred, target)
        grads, _ = pull(layer.vjp, pullback, ct, input_grad=False)  # x is data
        return value, grads

    return f


def make_train_step(layer: Layer, loss: Loss, optimizer: GradientTransformation) -> Callable:
    """A pure ``train_step(params, opt_state, x, target) -> (params, opt_state, loss value)``:
    one gradient evaluation and one optimizer update."""
    grad_fn = value_and_grad(layer, loss)

    def train_step(params, opt_state, x, target):
        value, grads = grad_fn(params, x, target)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state, value

    return train_step
