"""Training steps as functions: ``value_and_grad`` and ``make_train_step``.

For a plain network::

    value, grads = value_and_grad(net, loss)(params, x, target)
    params, opt_state, value = train_step(params, opt_state, x, target)

For a :class:`~n2nfunc.stateful.StatefulLayer` (batch norm, dropout; always in training
mode)::

    value, grads, state = value_and_grad(net, loss)(params, state, x, target, rng)
    params, state, opt_state, value = train_step(params, state, opt_state, x, target, rng)
"""

from collections.abc import Callable
from typing import Any, overload

from torch import Tensor

from . import tree
from .base import Layer, Params, public_name, pull
from .losses import Loss
from .optim import GradientTransformation, added
from .stateful import State, StatefulLayer, no_state_error


def described(value) -> str:
    """What was passed, as an error names it: a named function gets a hint that it may be a
    factory to call (``n2nfunc.huber``, ``optim.adam``), a class wrapper that its layer is
    ``.layer``."""
    if isinstance(value, type(_check_parts)) and value.__name__ != "<lambda>":  # a def
        if not (getattr(value, "__module__", None) or "").startswith("n2nfunc"):
            return f"the function {value.__name__}"
        return f"the function {value.__name__} (a factory? call it: {value.__name__}(...))"
    if isinstance(getattr(value, "layer", None), (Layer, StatefulLayer)):
        return f"a {type(value).__name__} block (its functional layer is .layer, params .params)"
    if isinstance(value, type):  # a class: torch.optim.SGD, or a class wrapper such as n2nfunc.MSE
        ours = value.__module__.startswith("n2nfunc")
        wrapper = " (a class wrapper; the functional parts are lowercase)" if ours else ""
        return f"the class {public_name(value)}{wrapper}"
    return type(value).__name__


_MISSING = object()  # an argument not given (None is a target a loss may ignore)


def _check_parts(layer, loss, name: str) -> None:
    if not isinstance(layer, (Layer, StatefulLayer)):
        raise TypeError(f"{name}: layer must be a Layer, got {described(layer)}")
    if not callable(getattr(loss, "value_and_grad", None)):
        raise TypeError(
            f"{name}: loss must be a Loss such as n2nfunc.mse, got {described(loss)} (your "
            "own loss: n2nfunc.Loss(value, value_and_grad), the gradient written by hand)"
        )


def value_and_grad(layer: Layer | StatefulLayer, loss: Loss) -> Callable:
    """``f(params, x, target) -> (loss value, d loss / d params)`` for
    ``loss(layer(params, x), target)``; for a stateful layer
    ``f(params, state, x, target, rng) -> (loss value, d loss / d params, new state)``."""
    _check_parts(layer, loss, "value_and_grad")
    return _value_and_grad(layer, loss, detach=True)


def _value_and_grad(layer, loss, detach: bool) -> Callable:
    """:func:`value_and_grad`; with ``detach`` False its arguments must already be cut from
    autograd's graph (:func:`make_train_step` cuts them once for the whole step)."""
    cut = tree.detach if detach else (lambda t: t)
    if isinstance(layer, StatefulLayer):
        stateful = layer

        def f_stateful(params, state, x=_MISSING, target=_MISSING, rng=None):
            if x is _MISSING or target is _MISSING:
                raise TypeError(
                    "value_and_grad: the network is stateful (batch norm, dropout, ...): call "
                    "f(params, state, x, target, rng), with the state from its init, which "
                    "returns (out_shape, params, state)"
                )
            params, state, x, target = cut((params, state, x, target))
            pred, new_state, pullback = stateful.vjp(params, state, x, train=True, rng=rng)
            value, ct = loss.value_and_grad(pred, target)
            # x is data; one backward pass, so what the forward kept is freed as it goes
            grads, _ = pull(stateful.vjp, pullback, ct, input_grad=False, release=True)
            return value, grads, new_state

        return f_stateful

    def f(params, x, target, *extra):
        if extra:
            call = "f(params, x, target)"
            raise TypeError(no_state_error("value_and_grad", call, 3 + len(extra)))
        params, x, target = cut((params, x, target))  # (no autograd graph recorded)
        pred, pullback = layer.vjp(params, x)
        value, ct = loss.value_and_grad(pred, target)
        # x is data; one backward pass, so what the forward kept is freed as it goes
        grads, _ = pull(layer.vjp, pullback, ct, input_grad=False, release=True)
        return value, grads

    return f


# train_step(params, opt_state, x, target) -> (params, opt_state, loss value)
TrainStep = Callable[[Params, Any, Tensor, Tensor], tuple[Params, Any, Tensor]]
# train_step(params, state, opt_state, x, target, rng) -> (params, state, opt_state, loss value)
StatefulTrainStep = Callable[..., tuple[Params, State, Any, Tensor]]


@overload
def make_train_step(
    layer: StatefulLayer, loss: Loss, optimizer: GradientTransformation
) -> StatefulTrainStep: ...
@overload
def make_train_step(layer: Layer, loss: Loss, optimizer: GradientTransformation) -> TrainStep: ...
def make_train_step(
    layer: Layer | StatefulLayer, loss: Loss, optimizer: GradientTransformation
) -> TrainStep | StatefulTrainStep:
    """A pure ``train_step(params, opt_state, x, target) -> (params, opt_state, loss value)``:
    one gradient evaluation and one optimizer update. For a stateful layer:
    ``train_step(params, state, opt_state, x, target, rng) -> (params, state, opt_state,
    loss value)``."""
    _check_parts(layer, loss, "make_train_step")
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "make_train_step: optimizer must be a GradientTransformation such as "
            f"n2nfunc.optim.adam(1e-3), got {described(optimizer)}"
        )
    grad_fn = _value_and_grad(layer, loss, detach=False)
    if isinstance(layer, StatefulLayer):

        def train_step_stateful(params, state, opt_state, x=_MISSING, target=_MISSING, rng=None):
            if x is _MISSING or target is _MISSING:
                raise TypeError(
                    "train_step: the network is stateful (batch norm, dropout, ...): call "
                    "train_step(params, state, opt_state, x, target, rng), with the state from "
                    "its init, which returns (out_shape, params, state)"
                )
            params, state, x, target = tree.detach((params, state, x, target))  # once a step
            value, grads, state = grad_fn(params, state, x, target, rng)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return added(params, updates), state, opt_state, value

        return train_step_stateful

    def train_step(params, opt_state, x, target, *extra):
        if extra:
            raise TypeError(
                no_state_error(
                    "train_step", "train_step(params, opt_state, x, target)", 4 + len(extra)
                )
            )
        params, x, target = tree.detach((params, x, target))  # once for the step
        value, grads = grad_fn(params, x, target)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return added(params, updates), opt_state, value

    return train_step
