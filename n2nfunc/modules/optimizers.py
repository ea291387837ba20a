"""Optimizers as classes with ``torch.optim``'s names and methods (``step``, ``zero_grad``,
``param_groups``, ``state_dict``), each applying a functional optimizer of
:mod:`n2nfunc.optim` in place to ``(parameter, gradient)`` pairs."""

import copy
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

from .. import optim, tree
from ..base import flag
from ..optim import LearningRate
from .module import Module, Unpicklable

ParamPairs = Module | Iterable[tuple[Tensor, Tensor]]  # a block, or its param() pairs


class Optimizer(Unpicklable):
    """Applies a functional optimizer in place to ``(parameter, gradient)`` pairs.

    ``lr`` (a number or a schedule ``step -> lr``) is read at every step, so it may be
    changed between steps. A parameter listed twice is updated once, as ``torch.optim`` does
    with ``parameters()``: with the sum of its distinct gradient tensors (one for a block used
    twice in a ``Sequential``; two for weights tied by assignment, ``dec.weight =
    enc.weight``, each block keeping its own gradient, which torch would accumulate).

    ``zero_grad`` fills the gradients with zeros, as torch's ``zero_grad(set_to_none=False)``
    and optax do: every parameter moves at every ``step``, so one that got no gradient since
    (an unused branch, a network that trains in turns with another under the same optimizer)
    still gets its weight decay, momentum and Adam step, where torch's default (gradients set
    to None) skips it. Give such networks an optimizer each.

    As in torch: ``param_groups`` (one group; its ``"lr"`` may be set, the other
    hyperparameters are read-only), and ``state_dict()`` / ``load_state_dict()`` (the state
    tree and a fixed ``lr``; :func:`n2nfunc.save` stores the dict). The parameters are updated
    in place through detached views, so ``nn.Parameter`` objects are stepped as
    ``torch.optim`` steps them, under no grad.
    """

    save_instead = "save its state_dict() with n2nfunc.save instead and load_state_dict it"

    def __init__(
        self,
        params: ParamPairs,
        transformation: Callable[..., optim.GradientTransformation],
        name: str,
        lr: LearningRate,
        **hyperparameters: Any,
    ):
        """``transformation(lr, **hyperparameters)`` (:mod:`n2nfunc.optim`'s function) over
        ``params``; numeric hyperparameters are checked here, errors naming the class."""
        numbers = {
            k: v for k, v in hyperparameters.items() if not isinstance(v, (bool, tuple, list))
        }
        optim.check_hyperparameters(name, lr=lr, **numbers)
        if isinstance(params, Module):
            params = params.param()
        params = list(params)
        if any(isinstance(pg, dict) for pg in params):
            raise TypeError(
                f"{name}: takes one group of (parameter, gradient) pairs; for torch.optim's "
                "parameter groups (dicts), use the functional n2nfunc.multi_transform"
            )
        if not all(isinstance(pg, (tuple, list)) and len(pg) == 2 for pg in params):
            raise TypeError(
                f"{name}: params must be a list of (parameter, gradient) pairs "
                "as returned by Module.param()"
            )
        for i, (p, g) in enumerate(params):
            if not isinstance(p, Tensor) or not isinstance(g, Tensor) or p.shape != g.shape:
                raise ValueError(f"{name}: pair {i} must hold two tensors of equal shape")
        self.name = name
        self._make = lambda lr_: transformation(lr_, **hyperparameters)
        groups: dict = {}
        for p, g in params:
            grads = groups.setdefault(id(p), (p, {}))[1]
            grads.setdefault(id(g), g)
        self.params = [p for p, _ in groups.values()]
        self.param_groups = [ParamGroup(name, params=self.params, lr=lr, **hyperparameters)]
        self.grads = [list(grads.values()) for _, grads in groups.values()]
        self.transform = self._make(self._lr_at)
        if not params:  # after the hyperparameters, as torch.optim: a step would do nothing
            raise ValueError(f"{name}: got an empty parameter list: nothing to train")
        self.state = self.transform.init(self.params)
        self._placement = self._placement_now()

    @property
    def lr(self) -> LearningRate:
        """The learning rate (a number or a schedule ``step -> lr``): ``param_groups[0]["lr"]``."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: LearningRate) -> None:
        self.param_groups[0]["lr"] = value  # checked there

    def _lr_at(self, step):
        """The learning rate at ``step``: ``lr``, or ``lr(step)`` for a schedule (read at every
        step, so that ``lr`` may change between steps)."""
        return self.lr(step) if callable(self.lr) else self.lr

    def state_dict(self) -> dict:
        """``{"state": the optimizer state tree, "lr": the learning rate}`` (no ``"lr"`` for a
        schedule, which is code: give it to the new optimizer). References, not copies, as
        torch's; :func:`n2nfunc.save` writes it."""
        return {"state": self.state, **({} if callable(self.lr) else {"lr": self.lr})}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a :meth:`state_dict` of an optimizer of the same kind over parameters of the
        same shapes and dtypes (copied in, on this optimizer's devices)."""
        what = f"{self.name}.load_state_dict"
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError(f"{what}: expected a dict with a 'state' key, as state_dict() gives")
        unexpected = sorted(set(state_dict) - {"state", "lr"})
        if unexpected:
            raise ValueError(f"{what}: unexpected keys {unexpected}")
        state = _checked_state(state_dict["state"], self.state, what)
        if "lr" in state_dict:
            try:
                self.lr = state_dict["lr"]
            except (TypeError, ValueError) as e:
                raise type(e)(f"{what}: {e}") from None
        self.state = {k: _one_vector(v) for k, v in state.items()}

    def __copy__(self):
        new = super().__copy__()
        new.param_groups = [copy.copy(g) for g in self.param_groups]  # its own lr
        new.transform = new._make(new._lr_at)  # the copy's own lr, not the original's
        return new

    def __deepcopy__(self, memo):
        new = super().__deepcopy__(memo)
        new.transform = new._make(new._lr_at)
        return new

    def step(self) -> None:
        if self._placement_now() != self._placement:
            self._follow_params()
        grads = [sum(gs[1:], gs[0]) for gs in self.grads]
        updates, self.state = self.transform.update(grads, self.state, self.params)
        tree.add_(tree.detach(self.params), updates)  # checked by the update; no autograd

    def _placement_now(self) -> list:
        return [(p.device, p.dtype) for p in self.params]

    def _follow_params(self) -> None:
        """After ``Module.to`` (which moves the parameters in place), move the state's
        parameter-shaped tensors to each parameter's device and dtype."""

        def follow(t, p):
            return t if (t.device, t.dtype) == (p.device, p.dtype) else t.to(p.device, p.dtype)

        for key, value in self.state.items():
            if isinstance(value, list) and len(value) == len(self.params):
                self.state[key] = _one_vector(tree.map(follow, value, self.params))
        self._placement = self._placement_now()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Fill the gradients with zeros (see the class docstring; ``set_to_none`` is taken
        for torch's signature)."""
        flag(set_to_none, "set_to_none", f"{self.name}.zero_grad")
        tree.zero_(self.grads)

    def __repr__(self):
        group = self.param_groups[0]
        settings = ", ".join(f"{k}={v!r}" for k, v in group.items() if k != "params")
        return f"{self.name}({len(self.params)} parameters, {settings})"


def _checked_state(state, like, what: str):
    """A copy of ``state`` with each tensor on the device of ``like``'s and, where both are
    floating, of its dtype (as torch's ``load_state_dict`` casts them), and its step count a
    Python int, if it then has ``like``'s structure, shapes and dtypes."""

    def placed(t, old):
        if not (isinstance(t, Tensor) and isinstance(old, Tensor)):
            return t
        dtype = old.dtype if t.is_floating_point() and old.is_floating_point() else t.dtype
        return t.to(old.device, dtype, copy=True)

    try:
        state = tree.map(placed, state, like)
    except ValueError:
        pass  # a difference of structure, said below
    tree.check_like(state, like, f"{what}: the state given", "optimizer's own state")
    # and a step count that is an int >= 0, as the optimizer's own check asks (a load had
    # taken step=2.5 and left an optimizer whose every step raised)
    optim.check_state(state, {k: 0 if k == "step" else None for k in like}, what)
    return {**state, "step": int(state["step"])} if "step" in state else state


def _one_vector(value):
    """A tree of tensors of the state copied into consecutive pieces of one vector, as
    ``init`` makes them (:func:`~n2nfunc.tree.zeros_like`), so that the steps after a
    ``load_state_dict`` join it with no copy (:func:`~n2nfunc.tree.map_raveled`); other
    values (the step count) as they are."""
    if not isinstance(value, (dict, list, tuple)) or not all(
        isinstance(t, Tensor) for t in tree.leaves(value)
    ):
        return value
    return tree.copy_(tree.zeros_like(value), value)


class ParamGroup(dict):
    """torch.optim's ``param_groups[0]``: the parameters and hyperparameters. Setting ``"lr"``
    (checked here) changes the rate of the next steps; the others are fixed at
    construction, and setting one is refused rather than ignored."""

    def __init__(self, name: str, **items):
        super().__init__(**items)
        self.name = name
        self["lr"] = items["lr"]

    def _checked(self, key, value):
        """``value`` as ``key`` takes it, or the error of setting a fixed one."""
        if key != "lr" and key in self:
            raise ValueError(
                f"{self.name}: param_groups[0][{key!r}] is fixed at construction; only 'lr' "
                "may change between steps (make a new optimizer for other values)"
            )
        if key == "lr":  # a number as a Python float (n2nfunc.save takes no NumPy scalar)
            (value,) = optim.check_hyperparameters(self.name, lr=value)
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, self._checked(key, value))

    def update(self, *args, **kwargs) -> None:
        """Set every entry or, if one is refused, none."""
        items = {k: self._checked(k, v) for k, v in dict(*args, **kwargs).items()}
        for key, value in items.items():
            super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        raise ValueError(f"{self.name}: param_groups[0][{key!r}] cannot be removed")

    def pop(self, key, *default):
        raise ValueError(f"{self.name}: param_groups[0][{key!r}] cannot be removed")

    def __ior__(self, other):  # type: ignore[misc]
        self.update(other)
        return self

    def setdefault(self, key, default=None):  # (torch's schedulers add "initial_lr" so)
        if key not in self:
            self[key] = default
        return self[key]

    def popitem(self):
        raise ValueError(f"{self.name}: param_groups[0]'s entries cannot be removed")

    def clear(self) -> None:
        raise ValueError(f"{self.name}: param_groups[0]'s entries cannot be removed")


class SGD(Optimizer):
    """``torch.optim.SGD``-like: ``SGD(model.param(), lr, momentum=0.9)``, its arguments in
    torch's order and ``lr`` 1e-3 by default as there (``nf.sgd``, optax-like, puts
    ``nesterov`` third)."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        super().__init__(
            params,
            optim.sgd,
            "SGD",
            lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )


class Adam(Optimizer):
    """``torch.optim.Adam``-like: ``Adam(model.param(), lr=1e-3)``."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        hyperparameters = dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, optim.adam, "Adam", lr, **hyperparameters)


class AdamW(Optimizer):
    """``torch.optim.AdamW``-like: ``AdamW(model.param(), lr=1e-3, weight_decay=1e-2)``."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        hyperparameters = dict(betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, optim.adamw, "AdamW", lr, **hyperparameters)


class RMSprop(Optimizer):
    """``torch.optim.RMSprop``-like: ``RMSprop(model.param(), lr=1e-2, momentum=0.9)``."""

    def __init__(
        self,
        params: ParamPairs,
        lr: LearningRate = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ):
        super().__init__(
            params,
            optim.rmsprop,
            "RMSprop",
            lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
        )
