"""Optimizers as pure gradient transformations, in the style of optax.

An optimizer is ``GradientTransformation(init, update)``:

* ``init(params) -> state``
* ``update(grads, state, params) -> (updates, new_state)``

and ``apply_updates(params, updates)`` returns ``params + updates``. A state is a dict of
an int ``"step"`` count and parameter-shaped trees (the empty dict for stateless
transformations; a tuple of states for :func:`chain`), so it can be saved with the params
by :func:`n2nfunc.save`. Each optimizer matches its ``torch.optim`` namesake step for step.

``sgd``, ``adam``, ``adamw`` and ``rmsprop`` are complete optimizers: they turn gradients
into the final updates (already scaled by ``-lr``). Gradient processing therefore goes
*before* them in a :func:`chain`, which reads as in optax and means what torch users
expect::

    chain(clip_by_global_norm(1.0), adam(1e-3))  # clip_grad_norm_, then Adam.step()
    chain(add_decayed_weights(1e-2), sgd(0.1))   # SGD(lr=0.1, weight_decay=1e-2)

A transformation placed *after* an optimizer sees the final updates: ``clip_by_global_norm``
there bounds the length of each step; ``add_decayed_weights`` there would add ``+wd * p``
to a step (growing the weights), so use ``adamw`` or put it first.

Learning rates may be numbers or schedules ``lr(step) -> float``. Every schedule here
takes the same ``step``: the number of updates made before this one (0 for the first),
which is what ``torch.optim.lr_scheduler`` calls the epoch when ``scheduler.step()`` follows
every ``optimizer.step()``. ``exponential_decay`` and ``piecewise_constant`` follow optax
(``init_value`` at step 0, arguments in optax's order); ``cosine_decay``'s warm-up already
gives ``peak_value / warmup_steps`` at step 0, where optax's ``warmup_cosine_decay_schedule``
gives its ``init_value`` (usually 0).
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor, cat

from . import tree
from .base import flag, is_int, real_number

Schedule = Callable[[int], float]
LearningRate = float | Schedule
# a label (or mask flag) per leaf: a tree like the params, or of sub-trees, or a function of them
Labels = Any


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params=None) -> (updates,
    state)``, as optax's."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def _transformation(init: Callable, update: Callable) -> GradientTransformation:
    """``GradientTransformation(init, update)`` whose ``update`` takes its trees cut from
    autograd's graph (params that require grad, ``nn.Parameter``s, had each step's weight
    decay recorded into the moments, a graph growing by a node a step: 711 MB in 20,000
    steps) and ``params`` optional, as optax's (None: no weight decay needs them)."""

    def detached_update(grads, state, params=None):
        params = None if params is None else tree.detach(params)
        return update(tree.detach(grads), tree.detach(state), params)

    return GradientTransformation(init, detached_update)


def _needed(params, name: str):
    if params is None:
        raise ValueError(f"{name}: weight decay needs the params: update(grads, state, params)")
    return params


def _check_grads(grads, like, name: str) -> None:
    """The gradients must match the params (or, without them, the optimizer's state) leaf
    for leaf, in shape and dtype: nothing is broadcast, as torch refuses such a ``.grad``."""
    check_real_floats(grads, f"{name}: gradients")
    tree.check_like(grads, like, f"{name}: gradients", "parameter", device=True)


def check_real_floats(grads, what: str) -> None:
    """Every leaf must be a real floating-point tensor: the optimizers' formulas (``g * g``
    for a squared magnitude) would be silently wrong on complex numbers and fail deep inside
    on integers."""
    if all(getattr(g, "is_floating_point", lambda: False)() for g in tree.leaves(grads)):
        return  # the usual case, without building paths
    for path, g in tree.flatten(grads):
        if not getattr(g, "is_floating_point", lambda: False)():
            kind = f"dtype {g.dtype}" if isinstance(g, Tensor) else f"a {type(g).__name__}"
            where = f"'{path}' " if path else ""
            raise ValueError(f"{what}: {where}is {kind}; expected real floating-point tensors")


def check_state(state, like: dict, what: str, like_what: str = "new state") -> None:
    """``state`` must be an optimizer state of ``like``'s form (a fresh ``init``'s, or the
    params' trees): the same keys, a step count that is an int >= 0, and each tree leaf for
    leaf a tensor of ``like``'s shape and dtype (nothing is broadcast; a ``like`` of None:
    any tree of tensors)."""
    if not isinstance(state, dict) or set(state) != set(like):
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{what}: expected an optimizer state with keys {sorted(like)}, got {got}")
    for key, value in like.items():
        if key == "step":
            step = state[key]
            if not is_int(step) or not 0 <= step < 2**53:  # (bias corrections b ** step)
                shown = "a larger int" if is_int(step) and step >= 2**53 else repr(step)
                raise ValueError(f"{what}: step must be an int from 0 to 2**53 - 1, got {shown}")
        elif value is None:
            for path, leaf in tree.flatten(state[key]):
                if not hasattr(leaf, "shape"):
                    kind = type(leaf).__name__
                    raise ValueError(f"{what}: '{key}': '{path}' is a {kind}, not a tensor")
        else:
            tree.check_like(state[key], value, f"{what}: '{key}'", like_what)


def _check_state(state, keys, params, name: str) -> None:
    """Each of the state's ``keys`` must be a tree like the params; without them, each a
    tree like the first, ``keys[0]``, a tree of tensors against which the gradients are
    then checked. Checked before the state is used."""
    what = f"{name}: state"
    if params is not None or not keys:
        check_state(state, {"step": 0, **{k: params for k in keys}}, what, "parameter")
        return
    check_state(state, {"step": 0, **{k: None for k in keys}}, what)
    first = state[keys[0]]
    check_state(state, {"step": 0, **{k: first for k in keys}}, what, f"'{keys[0]}' tree")


def _lr_at(lr: LearningRate, step: int, name: str) -> float:
    """The learning rate at ``step``: a schedule's value must be a finite number >= 0, as a
    fixed rate is (a negative one would climb the loss without a word)."""
    if not callable(lr):
        return lr
    value = lr(step)
    number = real_number(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise ValueError(
            f"{name}: the learning-rate schedule gave {value!r} at step {step}; expected a "
            "finite number >= 0"
        )
    return number  # a float, as a fixed rate is made (a 0-d float64 tensor gave float64)


def check_hyperparameters(name: str, **values) -> list:
    """Each value must be a finite real number >= 0 -- a Python, NumPy or 0-dim tensor
    scalar -- and only ``lr`` may also be a schedule. Returns the values in order, numbers as
    Python floats."""
    out = []
    for key, v in values.items():
        if key == "lr" and callable(v):
            out.append(v)
            continue
        number = real_number(v)
        if number is None or not math.isfinite(number) or number < 0:
            raise (TypeError if number is None else ValueError)(
                f"{name}: {key} must be a finite number >= 0, got {v!r}"
                + (f" ({type(v).__name__})" if number is None else "")
            )
        out.append(number)
    return out


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
    lr, momentum, weight_decay, dampening = check_hyperparameters(
        "sgd", lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening
    )
    nesterov = flag(nesterov, "nesterov", "sgd")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd: Nesterov momentum requires momentum > 0 and dampening = 0")

    def init(params):
        check_real_floats(params, "sgd: params")
        state = {"step": 0}
        if momentum:
            state["momentum"] = tree.zeros_like(params)
        return state

    def update(grads, state, params):
        _check_state(state, ["momentum"] if momentum else [], params, "sgd")
        _check_grads(grads, params if params is not None else state.get("momentum", grads), "sgd")
        step = int(state["step"])  # a NumPy int would carry its dtype into the new state
        if momentum and step == 0 and any(bool(t.any()) for t in tree.leaves(state["momentum"])):
            raise ValueError(  # (its first step sets the buffer to the gradient, as torch's)
                "sgd: the state's momentum buffers hold values at step 0, where there is no "
                "buffer yet; torch.optim.SGD's momentum_buffer loads with a step of 1 or more"
            )
        lr_now = _lr_at(lr, step, "sgd")
        trees = [grads] + ([state["momentum"]] if momentum else [])
        trees += [_needed(params, "sgd")] if weight_decay else []

        def sgd_step(g, *more):  # leafwise, or on one vector per tree (tree.map_raveled)
            d = g + weight_decay * more[-1] if weight_decay else g
            if not momentum:
                return d * -lr_now
            buf = d.clone() if step == 0 else more[0] * momentum + (1 - dampening) * d
            return (d + momentum * buf if nesterov else buf) * -lr_now, buf

        new_state = {"step": step + 1}
        if not momentum:
            return tree.map_raveled(sgd_step, *trees), new_state
        updates, new_state["momentum"] = tree.map_raveled(sgd_step, *trees, outputs=2)
        return updates, new_state

    return _transformation(init, update)


def _adam(
    name: str, lr, betas, eps: float, weight_decay: float, decoupled: bool, amsgrad: bool
) -> GradientTransformation:
    """Adam and AdamW: the same moments, the weight decay added to the gradient (``adam``)
    or decoupled, ``-lr * wd * p`` added to the update (``adamw``)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        error = ValueError if isinstance(betas, (tuple, list)) else TypeError
        raise error(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
    lr, eps, weight_decay, b1, b2 = check_hyperparameters(
        name, lr=lr, eps=eps, weight_decay=weight_decay, beta1=betas[0], beta2=betas[1]
    )
    if not (b1 < 1 and b2 < 1):
        raise ValueError(f"{name}: betas must be in [0, 1), got {betas!r}")
    amsgrad = flag(amsgrad, "amsgrad", name)
    l2 = 0.0 if decoupled else weight_decay

    def init(params):
        check_real_floats(params, f"{name}: params")
        state = {"step": 0, "m": tree.zeros_like(params), "v": tree.zeros_like(params)}
        if amsgrad:
            state["v_max"] = tree.zeros_like(params)
        return state

    def update(grads, state, params):
        _check_state(state, ["m", "v"] + (["v_max"] if amsgrad else []), params, name)
        _check_grads(grads, params if params is not None else state["m"], name)
        if weight_decay:
            _needed(params, name)
        t = int(state["step"]) + 1  # (a NumPy int: see sgd)
        lr_now = _lr_at(lr, t - 1, name)
        step_size = lr_now / (1 - b1**t)
        root_bc2 = math.sqrt(1 - b2**t)
        decay = lr_now * weight_decay if decoupled else 0.0

        def adam_step(m, g, v, *more):  # the state first: the results take its structure
            v_max = more[0] if amsgrad else None
            p = more[-1] if weight_decay else None
            if l2:
                g = g.add(p, alpha=l2)
            m = m.lerp(g, 1 - b1)
            v = v.mul(b2).addcmul_(g, g, value=1 - b2)
            if amsgrad:
                v_max = v_max.maximum(v)
            u = m.div((v_max if amsgrad else v).sqrt().div_(root_bc2).add_(eps)).mul_(-step_size)
            if decay:
                u = u - decay * p
            return (u, m, v) + ((v_max,) if amsgrad else ())

        trees = [state["m"], grads, state["v"]] + ([state["v_max"]] if amsgrad else [])
        trees += [params] * bool(weight_decay)
        updates, m, v, *v_max = tree.map_raveled(adam_step, *trees, outputs=3 + amsgrad)
        new_state = {"step": t, "m": m, "v": v}
        if amsgrad:
            new_state["v_max"] = v_max[0]
        return updates, new_state

    return _transformation(init, update)


def adam(
    lr: LearningRate = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> GradientTransformation:
    """Adam, as ``torch.optim.Adam`` (L2 weight decay added to the gradient):

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, and with ``t`` the step number,
    update ``-lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. With ``amsgrad``
    the running maximum of ``v`` replaces ``v`` in the denominator.
    """
    return _adam("adam", lr, betas, eps, weight_decay, decoupled=False, amsgrad=amsgrad)


def adamw(
    lr: LearningRate = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
) -> GradientTransformation:
    """AdamW, as ``torch.optim.AdamW``: Adam's update on the raw gradient, plus the
    decoupled weight decay ``-lr * wd * p`` (``p`` before the step)."""
    return _adam("adamw", lr, betas, eps, weight_decay, decoupled=True, amsgrad=amsgrad)


def rmsprop(
    lr: LearningRate = 0.01,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
) -> GradientTransformation:
    """RMSprop, as ``torch.optim.RMSprop``:

    ``g = g + wd * p``, ``s = alpha s + (1 - alpha) g^2``; centered, ``a = alpha a +
    (1 - alpha) g`` and ``d = sqrt(s - a^2) + eps``, else ``d = sqrt(s) + eps``; update
    ``-lr * g / d``, or with momentum ``b = momentum * b + g / d`` and update ``-lr * b``.
    """
    lr, alpha, eps, weight_decay, momentum = check_hyperparameters(
        "rmsprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum
    )
    if not alpha < 1:
        raise ValueError(f"rmsprop: alpha must be in [0, 1), got {alpha!r}")
    centered = flag(centered, "centered", "rmsprop")

    def init(params):
        check_real_floats(params, "rmsprop: params")
        state = {"step": 0, "square_avg": tree.zeros_like(params)}
        if centered:
            state["grad_avg"] = tree.zeros_like(params)
        if momentum:
            state["momentum"] = tree.zeros_like(params)
        return state

    def update(grads, state, params):
        keys = ["square_avg"] + (["grad_avg"] if centered else []) + (["momentum"] * bool(momentum))
        _check_state(state, keys, params, "rmsprop")
        _check_grads(grads, params if params is not None else state["square_avg"], "rmsprop")
        step = int(state["step"])  # a NumPy int would carry its dtype into the new state
        lr_now = _lr_at(lr, step, "rmsprop")
        trees = [state["square_avg"], grads] + [state[k] for k in keys[1:]]
        trees += [_needed(params, "rmsprop")] if weight_decay else []

        def rmsprop_step(s, g, *more):  # the state first: the results take its structure
            more = list(more)
            a = more.pop(0) if centered else None
            b = more.pop(0) if momentum else None
            if weight_decay:
                g = g.add(more[0], alpha=weight_decay)
            s = s.mul(alpha).addcmul_(g, g, value=1 - alpha)  # torch's order: g^2 never alone
            out = [s]
            if centered:
                a = a.lerp(g, 1 - alpha)
                out.append(a)
            d = (s.addcmul(a, a, value=-1) if centered else s).sqrt().add_(eps)
            if momentum:
                b = b * momentum + g / d
                out.append(b)
                return (b * -lr_now, *out)
            return (g / d * -lr_now, *out)

        updates, *new = tree.map_raveled(rmsprop_step, *trees, outputs=1 + len(keys))
        return updates, {"step": step + 1, **dict(zip(keys, new))}

    return _transformation(init, update)


def chain(*transformations: GradientTransformation) -> GradientTransformation:
    """Apply ``transformations`` in order, each to the updates of the one before (the first
    gets the gradients); the state is the tuple of their states."""
    for i, t in enumerate(transformations):
        if not isinstance(t, GradientTransformation):
            raise TypeError(
                f"chain: argument {i} must be a GradientTransformation, got {type(t).__name__}"
            )

    def init(params):
        return tuple(t.init(params) for t in transformations)

    def update(grads, state, params=None):
        if not isinstance(state, (tuple, list)) or len(state) != len(transformations):
            raise ValueError(
                f"chain: state must be a tuple of {len(transformations)} states "
                f"(one per transformation), got {type(state).__name__}"
                + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        new_state = []
        for t, s in zip(transformations, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update)  # (each library part detaches its own)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all updates by ``min(1, max_norm / (norm + 1e-6))``, where ``norm`` is the
    Euclidean norm of all leaves together, as ``torch.nn.utils.clip_grad_norm_``. Stateless
    (state ``{}``); the norm stays a tensor, so no device synchronisation."""
    (max_norm,) = check_hyperparameters("clip_by_global_norm", max_norm=max_norm)

    def init(params):
        return {}

    def update(grads, state, params):
        # checked against themselves: no None leaves (check_real_floats below: float tensors)
        tree.check_like(grads, grads, "clip_by_global_norm: gradients")
        check_real_floats(grads, "clip_by_global_norm: gradients")
        leaves = tree.leaves(grads)
        if not leaves:
            return grads, state
        device = leaves[0].device
        total = cat([g.norm().reshape(1).to(device) for g in leaves]).norm()
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        return tree.map(lambda g: g * coef.to(g.device, g.dtype), grads), state  # dtypes kept

    return _transformation(init, update)


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (as optax; placed before an optimizer,
    the L2 decay of ``torch.optim``'s ``weight_decay``). Stateless (state ``{}``)."""
    (weight_decay,) = check_hyperparameters("add_decayed_weights", weight_decay=weight_decay)

    def init(params):
        return {}

    def update(grads, state, params):
        _check_grads(grads, _needed(params, "add_decayed_weights"), "add_decayed_weights")
        if weight_decay:
            grads = tree.map(lambda g, p: g + weight_decay * p, grads, params)
        return grads, state

    return _transformation(init, update)


def set_to_zero() -> GradientTransformation:
    """Updates of zero (as optax's): the leaves it is given stay where they are -- frozen
    parameters, in a :func:`multi_transform` group of their own. Stateless (state ``{}``)."""

    def init(params):
        return {}

    def update(grads, state, params):
        check_real_floats(grads, "set_to_zero: gradients")
        return tree.map(lambda g: g.new_zeros(g.shape), grads), state

    return _transformation(init, update)


def multi_transform(
    transforms: dict[str, GradientTransformation], param_labels: Labels
) -> GradientTransformation:
    """Each leaf updated by the transformation that its label names: torch.optim's parameter
    groups, as optax's ``multi_transform``::

        labels = tree.map(lambda p: "decay" if p.ndim > 1 else "no_decay", params)
        multi_transform({"decay": adamw(1e-3), "no_decay": adam(1e-3)}, labels)

    ``param_labels`` holds a key of ``transforms`` for each leaf: a tree like the params, or
    one whose leaves label whole sub-trees (``{"encoder": "frozen", "decoder": "train"}``; a
    single label labels everything), or a function ``params -> such a tree`` (called on the
    params at ``init`` and at every update -- where they are detached, or on the gradients
    where ``update`` is given none -- so it must read paths, shapes or dtypes, not
    ``requires_grad``; labels that move a leaf out of a group whose state holds it are
    refused). Each transformation sees only its own leaves, as one flat dict keyed by their
    dotted paths (``{"0.weight": w, ...}``), so its state holds nothing for the others, and a
    label tree, looked up by path, fits it too (groups nest); the state is ``{label: that
    transformation's state}``."""
    if not isinstance(transforms, dict) or not transforms:
        raise TypeError(
            "multi_transform: transforms must be a non-empty dict label -> transformation"
        )
    for label, t in transforms.items():
        if not isinstance(t, GradientTransformation):
            raise TypeError(
                f"multi_transform: transforms[{label!r}] must be a GradientTransformation, "
                f"got {type(t).__name__}"
            )

    def groups(like) -> dict:
        """label -> the dotted paths of its leaves in ``like``."""
        labels = param_labels(like) if callable(param_labels) else param_labels
        out: dict = {label: [] for label in transforms}
        for path, lab in labelled(labels, like, "multi_transform: param_labels"):
            if not _hashable(lab) or lab not in out:
                raise ValueError(
                    f"multi_transform: '{path}' has the label {lab!r}, which names no "
                    f"transformation; the labels are {list(transforms)}"
                )
            out[lab].append(path)
        return out

    def split(whole, paths_by_label: dict) -> dict:
        """label -> the flat dict ``{path: leaf}`` of ``whole``'s leaves with that label."""
        leaves = dict(tree.flatten(whole))
        return {label: {p: leaves[p] for p in paths} for label, paths in paths_by_label.items()}

    def init(params):
        parts = split(params, groups(params))
        return {label: transforms[label].init(part) for label, part in parts.items()}

    def update(grads, state, params=None):
        if not isinstance(state, dict) or set(state) != set(transforms):
            got = list(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                "multi_transform: state must be a dict of one state per label "
                f"{list(transforms)}, got {got}"
            )
        if params is not None:  # (before the split, which looks up each param's gradient)
            tree.check_like(grads, params, "multi_transform: gradients", device=True)
        paths = groups(grads if params is None else params)
        every = {p for group in paths.values() for p in group}
        grad_parts = split(grads, paths)
        param_parts = None if params is None else split(params, paths)
        updates, new_state = {}, {}
        for label, part in grad_parts.items():
            held = _state_paths(state[label])  # (a masked part's state holds some leaves)
            moved = sorted((held or set()) & every - set(part))
            if moved:
                raise ValueError(
                    f"multi_transform: this update labels {moved[:4]} otherwise than the state "
                    f"of group {label!r} holds: labels must stay the same from init on (a label "
                    "function is called again on the params, detached, or on the gradients: "
                    "let it read paths, shapes and dtypes, not requires_grad)"
                )
            sub_params = None if param_parts is None else param_parts[label]
            u, new_state[label] = transforms[label].update(part, state[label], sub_params)
            updates.update(tree.flatten(u))
        return tree.unflatten(grads, updates, "multi_transform: updates"), new_state

    return GradientTransformation(init, update)  # (each library part detaches its own)


def labelled(labels, like, what: str) -> list[tuple[str, object]]:
    """Each leaf path of ``like`` with its label: the leaf of ``labels`` on the same dotted
    path, or on the longest path that leads to it (a label for a whole sub-tree; the root's,
    ``""``, for everything). Extra labels are ignored, so a tree of labels for all the params
    also labels a flat dict of some of them."""
    given = dict(tree.flatten(labels))
    leaf_paths = [path for path, _ in tree.flatten(like)]
    leaves = set(leaf_paths)
    out = []
    for path in leaf_paths:
        key = path  # then the sub-trees that hold it (not a leaf "a" for a leaf "a.b")
        while (key not in given or (key != path and key in leaves)) and key:
            key = key.rpartition(".")[0]
        if key not in given:
            shown = sorted(given)[:6]
            raise ValueError(
                f"{what} has nothing for '{path}' (its paths: {shown}"
                f"{' ...' if len(given) > 6 else ''}; a path may also name a whole sub-tree)"
            )
        out.append((path, given[key]))
    return out


def masked(inner: GradientTransformation, mask: Labels) -> GradientTransformation:
    """``inner`` on the leaves where ``mask`` is True; the others' updates pass through as
    they came (optax's ``masked``), e.g. weight decay on the weights only::

        chain(masked(add_decayed_weights(1e-2), tree.map(lambda p: p.ndim > 1, params)), sgd(0.1))

    ``mask`` holds Python bools as :func:`multi_transform`'s labels hold labels (a tree like
    the params, or of sub-trees, or a function of the params); the state is ``inner``'s, over
    its leaves alone."""
    if not isinstance(inner, GradientTransformation):
        raise TypeError(
            f"masked: inner must be a GradientTransformation, got {type(inner).__name__}"
        )

    def labels(like):
        flags = labelled(mask(like) if callable(mask) else mask, like, "masked: the mask")
        for path, m in flags:
            if not isinstance(m, bool):
                where = f"'{path}' " if path else ""
                raise ValueError(f"masked: the mask's leaf {where}is {m!r}; expected True or False")
        return {path: "inner" if m else "rest" for path, m in flags}

    both = multi_transform({"inner": inner, "rest": _identity()}, labels)

    def init(params):
        return both.init(params)["inner"]

    def update(grads, state, params=None):
        updates, new_state = both.update(grads, {"inner": state, "rest": {}}, params)
        return updates, new_state["inner"]

    return GradientTransformation(init, update)


def _state_paths(state) -> set | None:
    """The leaf paths that a state of this module's optimizers holds trees for (the keys of
    its first tree; the first such state in a chain's tuple), or None where it holds none."""
    if isinstance(state, (tuple, list)):
        found = (_state_paths(s) for s in state)
        return next((p for p in found if p is not None), None)
    if isinstance(state, dict) and "step" in state:
        trees = [v for k, v in state.items() if k != "step" and isinstance(v, dict)]
        return set(trees[0]) if trees else None
    return None


def _identity() -> GradientTransformation:
    return GradientTransformation(
        lambda params: {}, lambda grads, state, params=None: (grads, state)
    )


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates``, leafwise, as a new tree (each update of its parameter's shape and
    dtype: nothing is broadcast or promoted); one sum of two vectors where
    :func:`~n2nfunc.tree.map_raveled` joins them."""
    return added(tree.detach(params), tree.detach(updates))  # (no autograd graph kept)


def added(params, updates):
    """:func:`apply_updates` of trees already cut from autograd's graph."""
    tree.check_like(updates, params, "apply_updates: updates", device=True)
    return tree.map_raveled(lambda p, u: p + u, params, updates)


def cosine_decay(
    peak_value: float, decay_steps: int, final_fraction: float = 0.0, warmup_steps: int = 0
) -> Schedule:
    """Linear warm-up over ``warmup_steps`` (``peak_value * (step + 1) / warmup_steps``), then
    cosine decay from ``peak_value`` to ``final_fraction * peak_value`` (optax's ``alpha``) at
    ``decay_steps``, constant after."""
    peak_value, final_fraction = check_hyperparameters(
        "cosine_decay", peak_value=peak_value, final_fraction=final_fraction
    )
    if not (is_int(decay_steps) and is_int(warmup_steps)):
        raise TypeError(
            f"cosine_decay: decay_steps and warmup_steps must be ints, got {decay_steps!r} and "
            f"{warmup_steps!r}"
        )
    decay_steps, warmup_steps = int(decay_steps), int(warmup_steps)
    if decay_steps < 1 or warmup_steps < 0 or warmup_steps >= decay_steps:
        raise ValueError("cosine_decay: need 0 <= warmup_steps < decay_steps")
    if final_fraction > 1:
        raise ValueError(f"cosine_decay: final_fraction must be at most 1, got {final_fraction!r}")

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return peak_value * (step + 1) / warmup_steps
        frac = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
        return peak_value * (
            final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * frac))
        )

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """``init_value * decay_rate ** ((step - transition_begin) / transition_steps)`` (the
    exponent floored when ``staircase``), ``init_value`` before ``transition_begin``, and
    every value bounded by ``end_value`` if given (from below when ``decay_rate`` < 1, else
    from above; ``init_value`` too): optax's ``exponential_decay``, arguments in its order.

    ``exponential_decay(lr, 1, gamma)`` is ``ExponentialLR(gamma)`` and
    ``exponential_decay(lr, n, gamma, staircase=True)`` is ``StepLR(n, gamma)``.
    """
    name = "exponential_decay"
    (init_value,) = check_hyperparameters(name, init_value=init_value)
    check_hyperparameters(name, transition_begin=transition_begin)
    rate = real_number(decay_rate)
    if rate is None or not (math.isfinite(rate) and rate > 0):
        error = TypeError if rate is None else ValueError
        raise error(f"{name}: decay_rate must be a finite number > 0, got {decay_rate!r}")
    decay_rate = rate
    if not is_int(transition_steps) or transition_steps < 1:
        error = ValueError if is_int(transition_steps) else TypeError
        raise error(f"{name}: transition_steps must be an int >= 1, got {transition_steps!r}")
    transition_steps = int(transition_steps)
    staircase = flag(staircase, "staircase", name)
    if end_value is not None:
        (end_value,) = check_hyperparameters(name, end_value=end_value)

    def bounded(value: float) -> float:
        if end_value is None:
            return value
        return max(value, end_value) if decay_rate < 1 else min(value, end_value)

    def schedule(step: int) -> float:
        count = step - transition_begin
        if count <= 0 or not init_value:  # (bounded too, as optax's: an end_value beyond
            return bounded(init_value)  # init_value on the side it decays to holds throughout)
        p = count // transition_steps if staircase else count / transition_steps
        try:
            factor = decay_rate**p
        except OverflowError:  # a growing schedule far out: capped by end_value below
            if end_value is None:
                raise ValueError(
                    f"{name}: at step {step} the rate {init_value} * {decay_rate}**{p} "
                    "overflows; give an end_value to cap a growing schedule"
                ) from None
            factor = math.inf
        return bounded(init_value * factor)

    return schedule


def piecewise_constant(init_value: float, boundaries_and_scales: dict[int, float]) -> Schedule:
    """``init_value`` times the product of the scales of every boundary ``<= step`` (as
    optax's ``piecewise_constant_schedule``): ``piecewise_constant(lr, {m: gamma for m in
    milestones})`` is ``MultiStepLR(milestones, gamma)``."""
    name = "piecewise_constant"
    (init_value,) = check_hyperparameters(name, init_value=init_value)
    if not isinstance(boundaries_and_scales, dict):
        raise TypeError(
            f"{name}: boundaries_and_scales must be a dict {{step: scale}}, "
            f"got {type(boundaries_and_scales).__name__}"
        )
    points = []
    for b, s in boundaries_and_scales.items():
        if not is_int(b) or b < 0:
            error = ValueError if is_int(b) else TypeError
            raise error(f"{name}: boundary {b!r} must be an int >= 0")
        points += [(int(b), *check_hyperparameters(name, **{f"scale at {b}": s}))]
    points.sort()

    def schedule(step: int) -> float:
        value = init_value
        for boundary, scale in points:
            if step < boundary:
                break
            value *= scale
        return value

    return schedule
