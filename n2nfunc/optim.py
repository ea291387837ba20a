"""Optimizers as pure gradient transformations, in the style of optax.

An optimizer is ``GradientTransformation(init, update)``:

* ``init(params) -> state``
* ``update(grads, state, params) -> (updates, new_state)``

and ``apply_updates(params, updates)`` returns ``params + updates``. States are dicts of
an int step count and parameter-shaped trees, so they can be saved with the params.
Each optimizer matches its ``torch.optim`` namesake step for step.

A learning rate may be a number or a schedule ``lr(step) -> float`` (``step`` counts the
updates made before this one, from 0).
"""

import math
from collections.abc import Callable
from typing import NamedTuple

from . import tree

Schedule = Callable[[int], float]
LearningRate = float | Schedule


class GradientTransformation(NamedTuple):
    init: Callable
    update: Callable


def _lr_at(lr: LearningRate, step: int) -> float:
    return lr(step) if callable(lr) else lr


def check_hyperparameters(name: str, **values) -> None:
    for key, v in values.items():
        if not callable(v) and (
            not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0
        ):
            raise ValueError(f"{name}: {key} must be a finite number >= 0, got {v!r}")


def sgd(
    lr: LearningRate,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    dampening: float = 0.0,
) -> GradientTransformation:
    """Stochastic gradient descent, as ``torch.optim.SGD``:

    ``d = g + wd * p``; with momentum, ``b = d`` on the first step and
    ``b = momentum * b + (1 - dampening) * d`` after; ``d = d + momentum * b`` (Nesterov)
    or ``d = b``; update ``-lr * d``.
    """
    check_hyperparameters(
        "sgd", lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening
    )
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd: Nesterov momentum requires momentum > 0 and dampening = 0")

    def init(params):
        state = {"step": 0}
        if momentum:
            state["momentum"] = tree.zeros_like(params)
        return state

    def update(grads, state, params):
        step = state["step"]
        lr_now = _lr_at(lr, step)
        d = tree.map(lambda g, p: g + weight_decay * p, grads, params) if weight_decay else grads
        new_state = {"step": step + 1}
        if momentum:
            if step == 0:
                buf = tree.map(lambda x: x.clone(), d)
            else:
                buf = tree.map(
                    lambda b, x: b * momentum + (1 - dampening) * x, state["momentum"], d
                )
            new_state["momentum"] = buf
            d = tree.map(lambda x, b: x + momentum * b, d, buf) if nesterov else buf
        return tree.map(lambda x: x * -lr_now, d), new_state

    return GradientTransformation(init, update)


def adam(
    lr: LearningRate = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
) -> GradientTransformation:
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient):

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, and with ``t`` the step number,
    update ``-lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """
    b1, b2 = betas
    check_hyperparameters("adam", lr=lr, eps=eps, weight_decay=weight_decay, beta1=b1, beta2=b2)
    if not (b1 < 1 and b2 < 1):
        raise ValueError(f"adam: betas must be in [0, 1), got {betas!r}")

    def init(params):
        return {"step": 0, "m": tree.zeros_like(params), "v": tree.zeros_like(params)}

    def update(grads, state, params):
        t = state["step"] + 1
        lr_now = _lr_at(lr, t - 1)
        g = tree.map(lambda g_, p: g_ + weight_decay * p, grads, params) if weight_decay else grads
        m = tree.map(lambda m_, x: m_ * b1 + (1 - b1) * x, state["m"], g)
        v = tree.map(lambda v_, x: v_ * b2 + (1 - b2) * (x * x), state["v"], g)
        step_size = lr_now / (1 - b1**t)
        root_bc2 = math.sqrt(1 - b2**t)
        updates = tree.map(lambda m_, v_: m_ / (v_.sqrt() / root_bc2 + eps) * -step_size, m, v)
        return updates, {"step": t, "m": m, "v": v}

    return GradientTransformation(init, update)


def apply_updates(params, updates):
    """``params + updates``, leafwise, as a new tree."""
    return tree.add(params, updates)


def apply_updates_(params, updates):
    """``params += updates`` in place (for holders of parameter references); returns ``params``."""
    return tree.add_(params, updates)


def cosine_decay(
    init_lr: float, decay_steps: int, final_fraction: float = 0.0, warmup_steps: int = 0
) -> Schedule:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay from ``init_lr`` to
    ``final_fraction * init_lr`` at ``decay_steps``, constant after."""
    if decay_steps < 1 or warmup_steps < 0 or warmup_steps >= decay_steps:
        raise ValueError("cosine_decay: need 0 <= warmup_steps < decay_steps")

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return init_lr * (step + 1) / warmup_steps
        frac = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
        return init_lr * (
            final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        )

    return schedule
