"""Combinators: networks built from layers are layers again.

* ``serial(l0, l1, ...)``: ``x -> l1(l0(x))``; params ``{"0": p0, "1": p1, ...}``, so
  paths read like a ``torch.nn.Sequential`` state_dict (``"0.weight"``).
* ``parallel(l0, l1, ...)``: a tuple of inputs to the tuple of outputs,
  ``(x0, x1) -> (l0(x0), l1(x1))``.
* ``fanout(n)``: ``x -> (x, ..., x)``; its pullback sums the cotangents.
* ``fanin_sum()``: ``(x0, x1, ...) -> x0 + x1 + ...``.
* ``fanin_concat(axis=1)``: ``(x0, x1, ...) -> cat(..., axis)``; its pullback splits.
* ``residual(layer)``: ``x -> x + layer(x)``, with ``layer``'s params.

Errors raised inside a child are re-raised with the child's path (``"in layer 2.1: ..."``).
"""

from collections.abc import Sequence

from torch import Tensor, cat

from .base import Layer, apply_via_vjp, check_cotangent, pull, skips_input_grad


def _at(path: str, error: Exception) -> Exception:
    """The same kind of error, its message prefixed with the layer path."""
    message = str(error.args[0]) if error.args else str(error)
    if message.startswith("in layer "):
        message = f"in layer {path}." + message[len("in layer ") :]
    else:
        message = f"in layer {path}: {message}"
    return type(error)(message)


def _check_layers(layers, name):
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: argument {i} is not a Layer but {type(layer).__name__}")
    return layers


def serial(*layers: Layer) -> Layer:
    """Compose ``layers`` left to right."""
    _check_layers(layers, "serial")

    def init(generator, in_shape):
        params = {}
        shape = in_shape
        for i, layer in enumerate(layers):
            try:
                shape, params[str(i)] = layer.init(generator, shape)
            except (ValueError, TypeError) as e:
                raise _at(str(i), e) from None
        return shape, params

    def apply(params, x):
        for i, layer in enumerate(layers):
            try:
                x = layer.apply(params[str(i)], x)
            except (ValueError, TypeError, KeyError) as e:
                raise _at(str(i), e) from None
        return x

    def vjp(params, x):
        pullbacks = []
        for i, layer in enumerate(layers):
            try:
                x, pb = layer.vjp(params[str(i)], x)
            except (ValueError, TypeError, KeyError) as e:
                raise _at(str(i), e) from None
            pullbacks.append(pb)

        def pullback(ct, input_grad=True):
            grads = {}
            for i in reversed(range(len(layers))):
                try:
                    grads[str(i)], ct = pull(layers[i].vjp, pullbacks[i], ct, input_grad or i > 0)
                except (ValueError, TypeError) as e:
                    raise _at(str(i), e) from None
            return {str(i): grads[str(i)] for i in range(len(layers))}, ct

        return x, pullback

    return Layer(init, apply, skips_input_grad(vjp))


def _check_tuple(xs, n: int, name: str):
    if not isinstance(xs, (tuple, list)) or (n >= 0 and len(xs) != n):
        got = f"{len(xs)} inputs" if isinstance(xs, (tuple, list)) else type(xs).__name__
        raise ValueError(
            f"{name}: expected a tuple of {n if n >= 0 else 'several'} inputs, got {got}"
        )
    return tuple(xs)


def parallel(*layers: Layer) -> Layer:
    """Apply ``layers[i]`` to input ``i`` of a tuple; params ``{"0": p0, ...}``."""
    _check_layers(layers, "parallel")
    n = len(layers)

    def init(generator, in_shapes):
        shapes, params = [], {}
        for i, (layer, shape) in enumerate(zip(layers, _check_tuple(in_shapes, n, "parallel"))):
            try:
                out, params[str(i)] = layer.init(generator, shape)
            except (ValueError, TypeError) as e:
                raise _at(str(i), e) from None
            shapes.append(out)
        return tuple(shapes), params

    def vjp(params, xs):
        outs, pullbacks = [], []
        for i, (layer, x) in enumerate(zip(layers, _check_tuple(xs, n, "parallel"))):
            try:
                y, pb = layer.vjp(params[str(i)], x)
            except (ValueError, TypeError, KeyError) as e:
                raise _at(str(i), e) from None
            outs.append(y)
            pullbacks.append(pb)

        def pullback(cts):
            grads, cxs = {}, []
            for i, (pb, ct) in enumerate(zip(pullbacks, _check_tuple(cts, n, "parallel"))):
                grads[str(i)], cx = pb(ct)
                cxs.append(cx)
            return grads, tuple(cxs)

        return tuple(outs), pullback

    def apply(params, xs):
        return tuple(
            layer.apply(params[str(i)], x)
            for i, (layer, x) in enumerate(zip(layers, _check_tuple(xs, n, "parallel")))
        )

    return Layer(init, apply, vjp)


def _sum(xs: Sequence[Tensor]) -> Tensor:
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def fanout(n: int) -> Layer:
    """``x -> (x,) * n``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fanout: n must be a positive int, got {n!r}")

    def init(generator, in_shape):
        return (tuple(in_shape),) * n, {}

    def vjp(params, x):
        return (x,) * n, lambda cts: ({}, _sum(_check_tuple(cts, n, "fanout")))

    return Layer(init, apply_via_vjp(vjp), vjp)


def _same_shapes(shapes, name):
    shapes = [tuple(s) for s in _check_tuple(shapes, -1, name)]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"{name}: inputs must have equal shapes, got {shapes}")
    return shapes


def fanin_sum() -> Layer:
    """``(x0, x1, ...) -> x0 + x1 + ...`` (equal shapes)."""

    def init(generator, in_shapes):
        return _same_shapes(in_shapes, "fanin_sum")[0], {}

    def vjp(params, xs):
        _same_shapes([x.shape for x in _check_tuple(xs, -1, "fanin_sum")], "fanin_sum")
        y = _sum(xs)
        return y, lambda ct: ({}, (check_cotangent(ct, y, "fanin_sum"),) * len(xs))

    return Layer(init, apply_via_vjp(vjp), vjp)


def fanin_concat(axis: int = 1) -> Layer:
    """``(x0, x1, ...) -> cat(xs, axis)``, by default along channels; the pullback splits."""
    name = f"fanin_concat(axis={axis})"

    def init(generator, in_shapes):
        shapes = [tuple(s) for s in _check_tuple(in_shapes, -1, name)]
        others = {s[:axis] + s[axis + 1 :] for s in shapes}
        if len(others) != 1:
            raise ValueError(f"{name}: inputs must agree except along axis {axis}, got {shapes}")
        size = sum(s[axis] for s in shapes)
        out = list(shapes[0])
        out[axis] = -1 if any(s[axis] == -1 for s in shapes) else size
        return tuple(out), {}

    def vjp(params, xs):
        xs = _check_tuple(xs, -1, name)
        try:
            y = cat(xs, axis)
        except RuntimeError as e:
            raise ValueError(
                f"{name}: cannot concatenate shapes {[tuple(x.shape) for x in xs]}: {e}"
            ) from None
        sizes = [x.shape[axis] for x in xs]

        def pullback(ct):
            return {}, tuple(check_cotangent(ct, y, name).split(sizes, axis))

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def residual(layer: Layer) -> Layer:
    """``x -> x + layer(x)``; params are ``layer``'s own. The layer must keep the shape."""
    _check_layers([layer], "residual")

    def init(generator, in_shape):
        out, params = layer.init(generator, in_shape)
        if tuple(out) != tuple(in_shape):
            raise ValueError(
                f"residual: the inner layer maps shape {tuple(in_shape)} to "
                f"{tuple(out)}; a residual block must keep the shape"
            )
        return out, params

    def vjp(params, x):
        fx, pb = layer.vjp(params, x)
        if fx.shape != x.shape:
            raise ValueError(
                f"residual: the inner layer maps shape {tuple(x.shape)} to "
                f"{tuple(fx.shape)}; a residual block must keep the shape"
            )
        y = x + fx

        def pullback(ct):
            grads, cx = pb(check_cotangent(ct, y, "residual"))
            return grads, cx + ct

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)
