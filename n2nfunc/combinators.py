"""Combinators: networks built from layers are layers again.

* ``serial(l0, l1, ...)``: ``x -> l1(l0(x))``; params ``{"0": p0, "1": p1, ...}``, so
  paths read like a ``torch.nn.Sequential`` state_dict (``"0.weight"``).
* ``parallel(l0, l1, ...)``: a tuple of inputs to the tuple of outputs,
  ``(x0, x1) -> (l0(x0), l1(x1))``.
* ``fanout(n)``: ``x -> (x, ..., x)``; its pullback sums the cotangents.
* ``fanin_sum()``: ``(x0, x1, ...) -> x0 + x1 + ...``.
* ``fanin_concat(axis=1)``: ``(x0, x1, ...) -> cat(..., axis)``; its pullback splits.
* ``fanin_product()``: ``(x0, x1, ...) -> x0 * x1 * ...``, broadcasting (gates, attention).
* ``chunk(n, axis=1)``: ``x -> (x_0, ..., x_{n-1})``, equal parts; its pullback concatenates.
* ``residual(layer)``: ``x -> x + layer(x)``, with ``layer``'s params.

Children may be plain layers or :class:`~n2nfunc.stateful.StatefulLayer` s. ``serial``,
``parallel`` and ``residual`` are written once, for lifted (stateful) children; a network
with a stateful child is stateful (state ``{"0": s0, ...}`` beside the params), one without
stays a plain ``Layer`` (see :mod:`n2nfunc.stateful`).

Errors raised inside a child are re-raised with the child's path (``"in layer 2.1: ..."``).
Called with ``release=True`` (see :func:`~n2nfunc.base.pull`), a combinator's pullback drops
each child's pullback, and with it what that child saved, right after running it, and
passes ``release=True`` on to it.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import overload

from torch import Tensor, cat

from . import tree
from .base import (
    Held,
    Layer,
    Output,
    Unchanged,
    an_int,
    apply_via_vjp,
    check_cotangent,
    check_params,
    check_tensor,
    check_tuple,
    checked_cotangent,
    holding,
    output_of,
    outputs_of,
    positive_int,
    pull,
    releases,
    shape_or_streams,
    skips_input_grad,
    tensor_shape,
)
from .stateful import StatefulLayer, child_entry, fixed, lift, split_rng, stateful_call

NAMED = (ValueError, TypeError, KeyError, RuntimeError)  # errors re-raised naming the path


def layer_error(path: str, error: Exception) -> Exception:
    """The same kind of error, its message prefixed with the layer path; an error of a class
    of one's own (a subclass) is the same error, with the path added as a note."""
    if type(error) not in NAMED:
        notes = getattr(error, "__notes__", None)
        if notes and notes[-1].startswith("in layer "):  # an inner layer's: one path, whole
            notes[-1] = f"in layer {path}." + notes[-1][len("in layer ") :]
        elif hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(f"in layer {path}")
        return error
    message = str(error.args[0]) if error.args else str(error)
    if message.startswith("in layer "):
        message = f"in layer {path}." + message[len("in layer ") :]
    else:
        message = f"in layer {path}: {message}"
    named = type(error)(message)  # (raised from the error's own cause, with its notes)
    if hasattr(named, "add_note"):
        for note in getattr(error, "__notes__", ()):
            named.add_note(note)
    return named


@contextmanager
def at_layer(path: str) -> Iterator[None]:
    """Re-raise a ``ValueError`` / ``TypeError`` / ``KeyError`` / ``RuntimeError`` of the
    block as the same kind of error naming the layer ``path``."""
    try:
        yield
    except NAMED as e:  # the traceback still shows where
        raise layer_error(path, e).with_traceback(e.__traceback__) from e.__cause__


def _no_stray_children(params, state, n: int, name: str) -> None:
    """The params and state of combinator ``name`` hold no entries for children beyond its
    ``n`` (params of a bigger network were taken silently)."""
    for tree_, what in ((params, "params"), (state, "state")):
        if isinstance(tree_, dict) and len(tree_) > n:
            extra = sorted(set(tree_) - {str(j) for j in range(n)})
            raise ValueError(
                f"{name}: the {what} tree has entries {extra} for no child (this network "
                f"has {n} children, '0' to '{n - 1}')"
            )


def _child(params, state, i: int, name: str):
    """Child ``i``'s params and state in combinator ``name``, each checked to be there."""
    key = str(i)
    return child_entry(params, key, name, "params"), child_entry(state, key, name)


def check_input_grad(ct, shape) -> None:
    """A child's pullback must return an input gradient of its input's ``shape`` (a layer of
    one's own that returned another would otherwise be blamed on the layer before it)."""
    if shape is not None and isinstance(ct, Tensor) and ct.shape != shape:
        raise ValueError(
            f"its pullback returned an input gradient of shape {tuple(ct.shape)} for an input "
            f"of shape {tuple(shape)}"
        )


def _check_layers(layers, name):
    for i, layer in enumerate(layers):
        if not isinstance(layer, (Layer, StatefulLayer)):
            raise TypeError(f"{name}: argument {i} is not a Layer but {_what(layer)}")
    return layers


def _what(obj) -> str:
    """The type of ``obj``; for a layer-making function passed uncalled (``relu`` for
    ``relu()``), how to make the layer."""
    if type(obj).__module__.startswith("n2nfunc.modules"):  # a class wrapper, as SiLU()
        return (
            f"a {type(obj).__name__} block (a class wrapper); combinators take functional "
            "layers (as silu() for SiLU()): its .layer, or n2nfunc.Sequential(...) of blocks"
        )
    code = getattr(obj, "__code__", None)
    if code is None or not (getattr(obj, "__module__", None) or "").startswith("n2nfunc"):
        return type(obj).__name__
    required = code.co_argcount - len(getattr(obj, "__defaults__", None) or ())
    call = f"{obj.__name__}({'...' if required else ''})"
    return f"the function {obj.__name__}; call it to make one: {call}"


def _network(layers, init, apply, vjp) -> Layer | StatefulLayer:
    """The combinator built from ``init``/``apply``/``vjp`` written for lifted children:
    stateful if one of ``layers`` is, else a plain ``Layer`` (run with ``state=None``)."""
    vjp = holding(vjp, layers)
    if any(isinstance(layer, StatefulLayer) for layer in layers):
        vjp = stateful_call(vjp, "vjp", "this network")
        return StatefulLayer(
            init, stateful_call(apply, "apply", "this network"), releases(skips_input_grad(vjp))
        )
    return fixed(StatefulLayer(init, apply, releases(skips_input_grad(vjp))), None, train=False)


@overload
def serial(*layers: Layer) -> Layer: ...
@overload
def serial(*layers: Layer | StatefulLayer) -> Layer | StatefulLayer: ...
def serial(*layers: Layer | StatefulLayer) -> Layer | StatefulLayer:
    """Compose ``layers`` left to right. Each position has params of its own (``"0"``,
    ``"1"``, ...): a layer listed twice is two layers with the same recipe, not shared
    weights."""
    children = [lift(layer) for layer in _check_layers(layers, "serial")]

    def init(generator, in_shape):
        params, state, shape = {}, {}, in_shape
        for i, layer in enumerate(children):
            with at_layer(str(i)):
                shape, params[str(i)], state[str(i)] = layer.init(generator, shape)
        return shape, params, state

    def apply(params, state, x, *, train, rng=None):
        new_state = {}
        _no_stray_children(params, state, len(children), "serial")
        for i, (layer, r) in enumerate(zip(children, split_rng(rng, len(children)))):
            p, s = _child(params, state, i, "serial")
            try:  # (a with-block per child cost the steps 1-2%)
                x, new_state[str(i)] = layer.apply(p, s, x, train=train, rng=r)
            except NAMED as e:
                raise layer_error(str(i), e).with_traceback(e.__traceback__) from e.__cause__
        return x, new_state

    def vjp(params, state, x, *, train, rng=None):
        new_state, pullbacks, inputs = {}, [], []
        _no_stray_children(params, state, len(children), "serial")
        for i, (layer, r) in enumerate(zip(children, split_rng(rng, len(children)))):
            p, s = _child(params, state, i, "serial")
            inputs.append(x.shape if isinstance(x, Tensor) else None)
            try:
                x, new_state[str(i)], pb = layer.vjp(p, s, x, train=train, rng=r)
            except NAMED as e:
                raise layer_error(str(i), e).with_traceback(e.__traceback__) from e.__cause__
            pullbacks.append(Held(pb, "serial"))
        out = outputs_of(x)

        def pullback(ct, input_grad=True, release=False):
            ct = checked_cotangent(ct, out, "serial")
            # without the input gradient, the children before the first one with parameters
            # need no output cotangent: their pullbacks are not run at all
            first = 0
            if not input_grad:
                has = [bool(tree.leaves(params[str(i)])) for i in range(len(children))]
                first = has.index(True) if True in has else len(children)
            for held in pullbacks[:first]:  # never run; with release=True let go of them now
                held.take(release)
            grads = {}
            for i in reversed(range(len(children))):
                if i < first and not input_grad:
                    # no parameters: the same (empty) structure, a fresh container
                    grads[str(i)], ct = tree.map(lambda t: t, params[str(i)]), None
                    continue
                need = input_grad or i > first
                try:
                    pb = pullbacks[i].take(release)
                    grads[str(i)], ct = pull(children[i].vjp, pb, ct, need, release)
                    if need:
                        check_input_grad(ct, inputs[i])
                except NAMED as e:
                    raise layer_error(str(i), e).with_traceback(e.__traceback__) from e.__cause__
            return {str(i): grads[str(i)] for i in range(len(children))}, ct

        return x, new_state, pullback

    return _network(layers, init, apply, vjp)


def _check_shapes(in_shapes, n: int, name: str) -> tuple:
    """``init``'s ``in_shapes`` as a tuple of ``n`` shapes (-1: one or more), one per input, each
    a tuple or list (of ints, or of shapes for an input that is a tuple)."""
    if isinstance(in_shapes, (tuple, list)) and not all(
        isinstance(s, (tuple, list)) for s in in_shapes
    ):
        raise ValueError(
            f"{name}: expected a tuple of input shapes, one per input, got {in_shapes!r} "
            "(a single shape?)"
        )
    return check_tuple(in_shapes, n, name)


@overload
def parallel(*layers: Layer) -> Layer: ...
@overload
def parallel(*layers: Layer | StatefulLayer) -> Layer | StatefulLayer: ...
def parallel(*layers: Layer | StatefulLayer) -> Layer | StatefulLayer:
    """Apply ``layers[i]`` to input ``i`` of a tuple; params ``{"0": p0, ...}``."""
    children = [lift(layer) for layer in _check_layers(layers, "parallel")]
    n = len(children)

    def init(generator, in_shapes):
        shapes, params, state = [], {}, {}
        for i, (layer, shape) in enumerate(zip(children, _check_shapes(in_shapes, n, "parallel"))):
            with at_layer(str(i)):
                out, params[str(i)], state[str(i)] = layer.init(generator, shape)
            shapes.append(out)
        return tuple(shapes), params, state

    def vjp(params, state, xs, *, train, rng=None):
        outs, new_state, pullbacks = [], {}, []
        xs = check_tuple(xs, n, "parallel")
        _no_stray_children(params, state, n, "parallel")
        for i, (layer, x, r) in enumerate(zip(children, xs, split_rng(rng, n))):
            p, s = _child(params, state, i, "parallel")
            with at_layer(str(i)):
                y, new_state[str(i)], pb = layer.vjp(p, s, x, train=train, rng=r)
            outs.append(y)
            pullbacks.append(Held(pb, "parallel"))

        out = outputs_of(tuple(outs))

        def pullback(cts, input_grad=True, release=False):
            grads, cxs = {}, []
            for i, ct in enumerate(checked_cotangent(cts, out, "parallel")):
                with at_layer(str(i)):
                    pb = pullbacks[i].take(release)
                    grads[str(i)], cx = pull(children[i].vjp, pb, ct, input_grad, release)
                cxs.append(cx)
            return grads, tuple(cxs) if input_grad else None

        return tuple(outs), new_state, pullback

    def apply(params, state, xs, *, train, rng=None):
        outs, new_state = [], {}
        xs = check_tuple(xs, n, "parallel")
        _no_stray_children(params, state, n, "parallel")
        for i, (layer, x, r) in enumerate(zip(children, xs, split_rng(rng, n))):
            p, s = _child(params, state, i, "parallel")
            with at_layer(str(i)):
                y, new_state[str(i)] = layer.apply(p, s, x, train=train, rng=r)
            outs.append(y)
        return tuple(outs), new_state

    return _network(layers, init, apply, vjp)


def _sum(xs: Sequence[Tensor]) -> Tensor:
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def _sum_streams(cts):
    """The sum of cotangents of one structure: tensors added, tuples part by part."""
    if isinstance(cts[0], (tuple, list)):
        return tuple(_sum_streams(parts) for parts in zip(*cts))
    return _sum(cts)


def _all_tensors(out) -> bool:
    """Whether :func:`~n2nfunc.base.outputs_of` ``out`` stands for a tensor or a tuple of
    them, at any depth (it holds None for anything else)."""
    return isinstance(out, Output) or (isinstance(out, tuple) and all(map(_all_tensors, out)))


def fanout(n: int) -> Layer:
    """``x -> (x,) * n``."""
    n = positive_int(n, "n", "fanout")

    def init(generator, in_shape):
        return (shape_or_streams(in_shape, "fanout"),) * n, {}

    def vjp(params, x):
        check_params(params, "fanout", {})
        out = outputs_of(x)  # x may be a tuple of streams: each output is that tuple
        if not _all_tensors(out):  # (the pullback adds the copies' cotangents)
            raise TypeError(
                f"fanout: expected a tensor or a tuple of them (streams), got {_what(x)}"
            )

        def pullback(cts):
            cts = [
                checked_cotangent(ct, out, f"fanout (output {i})")
                for i, ct in enumerate(check_tuple(cts, n, "fanout", "output gradients"))
            ]
            return {}, _sum_streams(cts)

        return (x,) * n, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def _same_shapes(shapes, name):
    """Equal shapes, a -1 (a size ``init`` does not know) matching any size; returns the
    shapes with each -1 replaced by a known size of that axis where there is one."""
    shapes = [tuple(s) for s in check_tuple(shapes, -1, name)]
    if len({len(s) for s in shapes}) != 1:
        raise ValueError(f"{name}: inputs must have equal shapes, got {shapes}")
    merged = []
    for sizes in zip(*shapes):
        known = {d for d in sizes if d != -1}
        if len(known) > 1:
            raise ValueError(f"{name}: inputs must have equal shapes, got {shapes}")
        merged.append(known.pop() if known else -1)
    return [tuple(merged)] * len(shapes)


def fanin_sum() -> Layer:
    """``(x0, x1, ...) -> x0 + x1 + ...`` (equal shapes)."""

    def init(generator, in_shapes):
        return _same_shapes(_check_shapes(in_shapes, -1, "fanin_sum"), "fanin_sum")[0], {}

    def vjp(params, xs):
        check_params(params, "fanin_sum", {})
        xs = _tensors(xs, "fanin_sum")
        _same_shapes([x.shape for x in xs], "fanin_sum")
        y = _sum(xs)
        y_out, dtypes = output_of(y), [x.dtype for x in xs]

        def pullback(ct):
            ct = check_cotangent(ct, y_out, "fanin_sum")
            return {}, tuple(ct.to(dtype=d) for d in dtypes)  # each input's dtype

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def fanin_concat(axis: int = 1) -> Layer:
    """``(x0, x1, ...) -> cat(xs, axis)``, by default along channels; the pullback splits."""
    name = f"fanin_concat(axis={axis!r})"
    axis = an_int(axis, "axis", name)

    def one_rank_with_axis(shapes: list) -> None:
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1 or not -min(ranks) <= axis < min(ranks):
            raise ValueError(f"{name}: inputs of one rank with an axis {axis}, got {shapes}")

    def init(generator, in_shapes):
        shapes = [tuple(s) for s in _check_shapes(in_shapes, -1, name)]
        one_rank_with_axis(shapes)
        a = axis % len(shapes[0])  # s[:-1] + s[0:] would keep the whole shape for axis -1
        try:
            (rest, *_) = _same_shapes([s[:a] + s[a + 1 :] for s in shapes], name)
        except ValueError:
            raise ValueError(
                f"{name}: inputs must agree except along axis {axis}, got {shapes}"
            ) from None
        size = -1 if any(s[a] == -1 for s in shapes) else sum(s[a] for s in shapes)
        return rest[:a] + (size,) + rest[a:], {}

    def vjp(params, xs):
        check_params(params, name, {})
        xs = _tensors(xs, name)
        # as init checks them (cat itself skips an empty 1-d input: its gradient came back 2-d)
        one_rank_with_axis([tuple(x.shape) for x in xs])
        try:
            y = cat(xs, axis)
        except RuntimeError as e:  # (other sizes along another axis, other devices)
            raise ValueError(
                f"{name}: cannot concatenate shapes {[tuple(x.shape) for x in xs]}: {e}"
            ) from None
        sizes, y_out, dtypes = [x.shape[axis] for x in xs], output_of(y), [x.dtype for x in xs]

        def pullback(ct):
            parts = check_cotangent(ct, y_out, name).split(sizes, axis)
            return {}, tuple(part.to(dtype=d) for part, d in zip(parts, dtypes))

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def fanin_product() -> Layer:
    """``(x0, x1, ...) -> x0 * x1 * ...`` with broadcasting between inputs of one rank (an
    attention map (N, C, 1, 1) times features (N, C, H, W); two halves of a
    :func:`chunk`, a gate). ``dx_i = ct * prod_{j != i} x_j``, summed over the axes along
    which ``x_i`` was broadcast."""
    name = "fanin_product"

    def init(generator, in_shapes):
        return _broadcast_shapes(_check_shapes(in_shapes, -1, name), name), {}

    def vjp(params, xs):
        check_params(params, name, {})
        xs = _tensors(xs, name)
        _broadcast_shapes([x.shape for x in xs], name)
        y = _product(xs)
        y_out = output_of(y)
        seen = Unchanged(name, **{f"input {i}": x for i, x in enumerate(xs)})

        def pullback(ct):
            ct = check_cotangent(ct, y_out, name)
            seen.check()
            grads = []
            for i, x in enumerate(xs):
                g = _product([ct, *xs[:i], *xs[i + 1 :]])
                axes = [a for a, (m, n) in enumerate(zip(x.shape, g.shape)) if m == 1 != n]
                grads.append((g.sum(axes, keepdim=True) if axes else g).to(dtype=x.dtype))
            return {}, tuple(grads)

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def _product(xs: Sequence[Tensor]) -> Tensor:
    total = xs[0]
    for x in xs[1:]:
        total = total * x
    return total


def _broadcast_shapes(shapes, name: str) -> tuple:
    """The shape that inputs of ``shapes`` broadcast to (one rank; along each axis one size,
    or 1; -1, a size ``init`` does not know, matching any), else an error naming them."""
    shapes = [tuple(s) for s in check_tuple(shapes, -1, name)]
    out = []
    for sizes in zip(*shapes):
        known = {d for d in sizes if d not in (-1, 1)}
        if len(known) > 1 or len({len(s) for s in shapes}) != 1:
            raise ValueError(
                f"{name}: inputs must have one rank and, along each axis, one size or 1, "
                f"got {shapes}"
            )
        out.append(known.pop() if known else -1 if -1 in sizes else 1)
    return tuple(out)


def chunk(n: int, axis: int = 1) -> Layer:
    """``x -> (x_0, ..., x_{n-1})``: ``x`` split along ``axis`` (channels by default) into
    ``n`` equal parts, as ``torch.chunk`` where ``n`` divides the size (the inverse of
    :func:`fanin_concat`); the pullback concatenates the output gradients."""
    name = f"chunk({n!r}, axis={axis!r})"
    n = positive_int(n, "n", name)
    axis = an_int(axis, "axis", name)

    def split_size(shape) -> int:
        shape = tuple(shape)
        if not -len(shape) <= axis < len(shape) or axis % len(shape) == 0:
            raise ValueError(f"{name}: axis {axis} is not a non-batch axis of shape {shape}")
        size = shape[axis]
        if size != -1 and size % n:
            raise ValueError(
                f"{name}: the size {size} of axis {axis} of {shape} is not a multiple of {n}"
            )
        return -1 if size == -1 else size // n

    def init(generator, in_shape):
        shape = list(tensor_shape(in_shape, name, 2, "(N, ...)"))
        shape[axis] = split_size(shape)
        return (tuple(shape),) * n, {}

    def vjp(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        size = split_size(x.shape)
        parts = tuple(x.narrow(axis, i * size, size) for i in range(n))  # (n parts of size 0 too)
        outs = tuple(output_of(p) for p in parts)

        def pullback(cts):
            cts = check_tuple(cts, n, name, "output gradients")
            return {}, cat([check_cotangent(c, o, name) for c, o in zip(cts, outs)], axis)

        return parts, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def _tensors(xs, name: str):
    """A tuple of tensors (the inputs of a merge), else an error naming the layer."""
    xs = check_tuple(xs, -1, name)
    for i, x in enumerate(xs):
        check_tensor(x, name, f"input {i}")
    if len({x.device for x in xs}) > 1:
        raise ValueError(f"{name}: the inputs are on devices {[str(x.device) for x in xs]}")
    return xs


def _same_tensor_shape(x, fx):
    if not isinstance(fx, Tensor) or not isinstance(x, Tensor):
        kinds = f"{type(x).__name__} to {type(fx).__name__}"
        raise TypeError(f"residual: the inner layer must map a tensor to a tensor, not {kinds}")
    _same_shape(x.shape, fx.shape)


def _same_shape(x, fx, name="residual"):
    if tuple(fx) != tuple(x):
        raise ValueError(
            f"{name}: the inner layer maps shape {tuple(x)} to "
            f"{tuple(fx)}; a residual block must keep the shape"
        )


@overload
def residual(layer: Layer) -> Layer: ...
@overload
def residual(layer: Layer | StatefulLayer) -> Layer | StatefulLayer: ...
def residual(layer: Layer | StatefulLayer) -> Layer | StatefulLayer:
    """``x -> x + layer(x)``; params (and state) are ``layer``'s own. The layer must keep
    the shape."""
    inner = lift(_check_layers([layer], "residual")[0])

    def init(generator, in_shape):
        out, params, state = inner.init(generator, in_shape)
        _same_shape(in_shape, out)
        return out, params, state

    def apply(params, state, x, *, train, rng=None):
        (r,) = split_rng(rng, 1)
        fx, new_state = inner.apply(params, state, x, train=train, rng=r)
        _same_tensor_shape(x, fx)
        return x + fx, new_state

    def vjp(params, state, x, *, train, rng=None):
        (r,) = split_rng(rng, 1)
        fx, new_state, pb = inner.vjp(params, state, x, train=train, rng=r)
        _same_tensor_shape(x, fx)
        y = x + fx
        y_out, held = output_of(y), Held(pb, "residual")

        def pullback(ct, input_grad=True, release=False):
            ct = check_cotangent(ct, y_out, "residual")
            grads, cx = pull(inner.vjp, held.take(release), ct, input_grad, release)
            return grads, cx + ct if input_grad else None

        return y, new_state, pullback

    return _network([layer], init, apply, vjp)
