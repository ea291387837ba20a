"""Stateful layers: running statistics and randomness, passed in and returned explicitly.

A :class:`StatefulLayer` is a triple of pure functions, like :class:`~n2nfunc.base.Layer`,
with a ``state`` tree beside the parameters (as Haiku's ``transform_with_state``):

* ``init(generator, in_shape) -> (out_shape, params, state)``
* ``apply(params, state, x, *, train, rng) -> (y, new_state)``
* ``vjp(params, state, x, *, train, rng) -> (y, new_state, pullback)``

``pullback(ct_y) -> (ct_params, ct_x)`` as for a plain layer: the state is not
differentiated. ``train`` picks the behaviour (batch statistics and dropout masks in
training; running statistics and the identity in evaluation). Nothing is mutated: a call
returns the new state, and the caller passes it to the next call.

**State paths mirror parameter paths.** A combinator's state is ``{"0": s0, "1": s1, ...}``
like its params; a layer without state has ``{}``. So a batch norm at position 2 of a
``serial`` has ``"2.weight"`` in ``tree.flatten(params)`` and ``"2.running_mean"`` in
``tree.flatten(state)`` -- the names of the equivalent ``torch.nn.Sequential``'s state_dict.

**Mixing kinds.** The combinators accept both kinds. A plain layer is lifted to a stateful
one with the empty state ``{}`` by :func:`lift` (the one place that does it). A network
with at least one stateful child is a ``StatefulLayer``; a network with none stays a
plain ``Layer`` (see :func:`fixed`), so plain networks keep their two-argument signatures.

**Randomness.** ``rng`` is a ``torch.Generator`` (or ``None`` where nothing random runs,
e.g. in evaluation); a call draws from it, so the same generator state gives the same
result. A combinator gives its children independent, deterministic randomness: at the
start of a call it draws one 64-bit seed per child from ``rng`` (one draw of ``n`` int64s),
and child ``i`` gets a fresh generator (on ``rng``'s device) seeded with seed ``i``. A
child's masks therefore depend only on the parent generator's state and the child's
position, not on what its siblings draw; ``apply`` and ``vjp`` draw the same masks.

Example::

    net = serial(conv2d(8, 3, padding=1), batch_norm2d(), relu(), dropout(0.2))
    _, params, state = net.init(Generator().manual_seed(0), (-1, 3, 32, 32))
    rng = Generator().manual_seed(1)
    y, state, pullback = net.vjp(params, state, x, train=True, rng=rng)   # training
    ct_params, ct_x = pullback(ct_y)
    y, _ = net.apply(params, state, x, train=False, rng=None)             # evaluation
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Generator, Tensor, empty

from . import tree
from .base import Layer, Params, Pullback, Shape, flag, is_int, marked_like

State = Any  # a dict (possibly nested) of tensors


class StatefulLayer(NamedTuple):
    """A layer with state and randomness as three pure functions (see the module docstring)."""

    init: Callable[[Generator | None, Shape], tuple[Shape, Params, State]]
    apply: Callable[..., tuple[Any, State]]
    vjp: Callable[..., tuple[Any, State, Pullback]]

    def __call__(self, *args, **kwargs):
        """Refused with the calls to make: a layer holds no params or state."""
        raise TypeError(
            "a StatefulLayer is not called: out_shape, params, state = layer.init(generator, "
            "in_shape), then y, state = layer.apply(params, state, x, train=..., rng=...); "
            "n2nfunc.Module.from_layer(layer, in_shape) makes a block with forward/backward"
        )


_MISSING = object()


def stateful_call(fn, kind: str, who: str):
    """``fn(params, state, x, *, train, rng)`` (a stateful layer's ``apply`` or ``vjp``, as
    ``kind`` says), with a call in a plain layer's form (``net.apply(params, x)``) named as
    such rather than as a missing argument; ``who`` names the layer or network."""

    def call(params, state=_MISSING, x=_MISSING, *, train=_MISSING, rng=None):
        if isinstance(state, dict) and isinstance(x, Tensor) and train is _MISSING:
            raise TypeError(
                f"{kind}: {who} is stateful: say whether it trains, {kind}(params, state, x, "
                "train=True or False): batch norm uses the batch's statistics and updates its "
                "running ones in training, and dropout drops, but neither in evaluation"
            )
        if x is _MISSING or train is _MISSING:
            raise TypeError(
                f"{kind}: {who} is stateful (it keeps state or draws random numbers, as batch "
                f"norm and dropout do): call {kind}(params, state, x, train=True or False, "
                "rng=a torch.Generator or None), with the state from its init, which returns "
                "(out_shape, params, state); or make it a plain layer with "
                "n2nfunc.stateful.fixed(layer, state, train=False)"
            )
        return fn(params, state, x, train=flag(train, "train", f"{kind} of {who}"), rng=rng)

    return call


def lift(layer: Layer | StatefulLayer) -> StatefulLayer:
    """``layer`` as a :class:`StatefulLayer`: a plain layer gets the empty state ``{}`` and
    ignores ``train`` and ``rng``; a stateful layer is returned as it is."""
    if isinstance(layer, StatefulLayer):
        return layer
    if not isinstance(layer, Layer):
        raise TypeError(f"expected a Layer or StatefulLayer, got {type(layer).__name__}")

    def init(generator, in_shape):
        out, params = layer.init(generator, in_shape)
        return out, params, {}

    def apply(params, state, x, *, train, rng=None):
        _check_empty(state)
        return layer.apply(params, x), state

    def vjp(params, state, x, *, train, rng=None):
        _check_empty(state)
        y, pullback = layer.vjp(params, x)
        return y, state, pullback

    return StatefulLayer(init, apply, marked_like(vjp, layer.vjp))


def _check_empty(state) -> None:
    # None: run by a plain network (see `fixed`), which has no state tree at all.
    if state is not None and state != {}:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"a layer without state was given the state {got}")


def fixed(
    layer: StatefulLayer, state: State, *, train: bool, rng: Generator | None = None
) -> Layer:
    """The plain :class:`~n2nfunc.base.Layer` ``(params, x) -> layer(params, state, x)`` with
    ``state``, ``train`` and ``rng`` held fixed; the new state is dropped.

    Every call draws from a fresh copy of ``rng`` as it is now, so every call uses the same
    random masks (what :func:`n2nfunc.check_vjp` needs). With ``state=None`` and
    ``train=False`` this is how a network of plain layers stays a plain layer.

    The held state follows the parameters as a module's buffers follow ``.double()`` and
    ``.to(device)``, where that loses nothing: its float leaves are widened to a wider
    parameter dtype (float32 statistics for float64 parameters, as ``check_vjp`` passes)
    and its leaves moved to the parameters' device; a narrower parameter dtype is still
    refused by the layer.
    """
    train = flag(train, "train", "fixed")
    rng_state = rng.get_state() if rng is not None else None

    def state_for(params):  # converted at each call: the held state may change in place
        if state is None:
            return state
        first = next((t for t in tree.leaves(params) if _is_float_tensor(t)), None)
        if first is None:
            return state
        return tree.map(lambda t: _follow(t, first), state)

    def fresh_rng():
        if rng is None:
            return None
        g = Generator(device=rng.device)
        g.set_state(rng_state)
        return g

    def init(generator, in_shape):
        out, params, _ = layer.init(generator, in_shape)
        return out, params

    def apply(params, x, *extra, **options):
        if extra or options:
            raise TypeError(no_state_error("apply", "apply(params, x)", 2 + len(extra), options))
        return layer.apply(params, state_for(params), x, train=train, rng=fresh_rng())[0]

    def vjp(params, x, *extra, **options):
        if extra or options:
            raise TypeError(no_state_error("vjp", "vjp(params, x)", 2 + len(extra), options))
        y, _, pullback = layer.vjp(params, state_for(params), x, train=train, rng=fresh_rng())
        return y, pullback

    vjp = marked_like(vjp, layer.vjp)
    if state is not None:
        vjp.holds_state = True  # type: ignore[attr-defined]
    return Layer(init, apply, vjp)


def _is_float_tensor(t) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


def _follow(t, like: Tensor):
    """A state leaf on ``like``'s device, and in its dtype where that is a wider float."""
    if not isinstance(t, Tensor):
        return t
    wider = t.is_floating_point() and like.element_size() > t.element_size()
    return t.to(device=like.device, dtype=like.dtype if wider else t.dtype)


def no_state_error(name: str, call: str, got: int, options: dict | None = None) -> str:
    """The error for a plain network (or a training step built on one) called in the stateful
    form (a state, ``train=``, ``rng=``): easy to do after taking the last batch norm or
    dropout out of a network."""
    keywords = "".join(f", {k}=..." for k in options or {})
    return (
        f"{name}: this network has no state (no batch norm or dropout): call {call}; got {got} "
        f"arguments{keywords}"
    )


def split_rng(rng: Generator | None, n: int) -> list:
    """``n`` independent generators derived from ``rng`` (one draw of ``n`` seeds; see the
    module docstring), or ``n`` times ``None`` when ``rng`` is ``None``."""
    if rng is None:
        return [None] * n
    if not isinstance(rng, Generator):
        seed = " (a seed goes in torch.Generator().manual_seed(seed))" if is_int(rng) else ""
        raise TypeError(f"rng must be a torch.Generator or None, got {type(rng).__name__}{seed}")
    seeds = empty(n, device=rng.device).long().random_(generator=rng).tolist()
    return [Generator(device=rng.device).manual_seed(s) for s in seeds]


def child_entry(tree: Any, key: str, name: str, what: str = "state") -> Any:
    """Child ``key``'s entry in combinator ``name``'s ``what`` ("params" or "state") tree
    (a ``None`` state stays ``None``), with an error naming what is missing."""
    if tree is None and what == "state":
        return None
    if not isinstance(tree, dict) or key not in tree:
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        message = f"the {what} tree has no entry '{key}' for child {key} (got {got})"
        if isinstance(tree, Tensor):  # an image where a tree goes: arguments swapped?
            message += (
                ": are the arguments in their order, apply(params, x), or apply(params, "
                "state, x, ...) for a network with state?"
            )
        raise ValueError(f"{name}: {message}")
    return tree[key]
