"""``check_vjp``: verify a layer's hand-written pullback against finite differences.

For a random output cotangent ``c`` and the scalar ``f(params, x) = <c, layer(params, x)>``,
the pullback must give ``grad f``. The checks, all in float64:

* directional: for random directions ``u``, ``<pullback(c), u>`` equals the central
  difference ``(f(z + eps u) - f(z - eps u)) / (2 eps)``, separately for the input and
  for every parameter path;
* full Jacobian: for an input (or a parameter) of at most ``full_jacobian_max`` elements,
  every coordinate of the pullback equals its own central difference;
* linearity: ``pullback(a c1 + b c2) = a pullback(c1) + b pullback(c2)``;
* form: ``vjp``'s output is ``apply``'s; every gradient has its parameter's (or the
  input's) path, shape and dtype, with nothing broadcast; a call without the input
  gradient (``input_grad=False``, as a training step makes) gives the same parameter
  gradients; and nothing is changed in place -- the cotangent by the pullback, the input
  and parameters by ``vjp`` or the pullback (a combinator hands one cotangent to several
  pullbacks, so ``ct.mul_(mask)`` corrupts another branch's gradient, while finite
  differences against the changed cotangent would still agree).

Parameters must be floating-point tensors (the gradient of an integer is not defined), and
the layer must compute in float64 when its input and parameters are (a float32 layer is
refused as such: its rounding would read as a wrong gradient). The output and every
gradient must be finite at the point checked (a NaN or infinity is refused by name: a NaN
compares as neither right nor wrong), and the pullback must give the same gradients when it
is called again (a layer's pullback may be called any number of times).

Where to check, as with any finite difference: away from kinks and ties -- ReLU at exactly
0, max pooling over equal values (an all-zero or 8-bit quantised image) are not
differentiable there, and are reported as wrong; at random parameters, not a fresh layer's
(a batch norm's scale of ones hides a gradient that forgets it); with a batch of at least
2 and different channel counts in and out (a bias gradient taken from the first image
alone, or a transposed weight, agree at batch 1 or on square shapes); and at inputs of
moderate size: a layer that subtracts large numbers inside (batch norm of values around
1e3) loses digits that the error floor, which counts only the output's magnitude, does not
allow for -- rescale the input or raise ``rtol``. The input of a layer that takes integers
(an embedding's indices) cannot be perturbed: check such a layer's parameters through a
wrapper that fixes the input.

A ``mixed_precision`` layer refuses the float64 this needs: check the layer it wraps.

A :class:`~n2nfunc.stateful.StatefulLayer` is checked in training mode with its ``state`` and
``rng`` held fixed (:func:`~n2nfunc.stateful.fixed`): every evaluation draws from a copy of
the same generator, so dropout uses one mask throughout, and the pullback is checked for
that mask; the new state is not checked.
"""

import math
from typing import Any

from torch import Generator, Tensor, empty

from . import tree
from .base import Layer, Params, an_int, is_number, positive_int, pull, real_number
from .stateful import State, StatefulLayer, fixed


class VJPCheckError(AssertionError):
    """A pullback disagrees with finite differences; the message names the part and the error."""


def _to64(t):
    return t.double() if isinstance(t, Tensor) and t.is_floating_point() else t


def _randn_like(t: Tensor, g: Generator) -> Tensor:
    return empty(t.shape, dtype=t.dtype, device=t.device).normal_(generator=g)


def _rel(a: float, b: float, floor: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), floor)


def _number(value, what: str, zero_ok: bool) -> float:
    """A check_vjp tolerance or step as a float: finite, > 0 (or >= 0 with ``zero_ok``)."""
    number = real_number(value)
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"check_vjp: {what} must be a finite number {bound}, got {value!r}")
    return number


def _check_arguments(layer, directions, eps, rtol, atol, full_jacobian_max, seed) -> tuple:
    """check_vjp's own arguments: a wrong one could make it check nothing (``directions=0``)
    or blame a correct layer (``rtol=nan``). Returns ``(eps, rtol, atol)`` as floats."""
    if not all(callable(getattr(layer, part, None)) for part in ("init", "apply", "vjp")):
        raise TypeError(
            f"check_vjp: layer must be a Layer or StatefulLayer, got {type(layer).__name__}"
        )
    positive_int(directions, "directions", "check_vjp")
    an_int(seed, "seed", "check_vjp")
    if not (is_number(full_jacobian_max) and full_jacobian_max >= 0):  # (math.inf: always)
        raise ValueError(f"check_vjp: full_jacobian_max must be >= 0, got {full_jacobian_max!r}")
    return _number(eps, "eps", False), _number(rtol, "rtol", False), _number(atol, "atol", True)


def check_vjp(
    layer: Layer | StatefulLayer,
    params: Params,
    x: Any,  # a tensor, or a tree of them for a layer of several inputs
    *,
    directions: int = 3,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    full_jacobian_max: int = 64,
    seed: int = 0,
    atol: float = 1e-3,
    state: State | None = None,
    rng: Generator | None = None,
    train: bool = True,
) -> dict:
    """Check ``layer.vjp`` on ``(params, x)``; raise :class:`VJPCheckError` on a mismatch.

    Returns ``{check: worst relative error}``: ``"input"``, ``"parameter 'PATH'"`` for every
    parameter path, and ``"linearity (PART)"`` for the pullback's linearity in each part.
    A relative error is ``|a - n| / max(|a|, |n|, floor)``. The floor is
    ``atol`` times the part's gradient scale (``|grad| |u|`` for a direction, ``max |grad_i|``
    for a coordinate) plus what rounding makes unresolvable: a central difference of ``f``
    carries an error of about ``1e-15 * sum|c * y| / eps``, so errors of that size are
    not reported; pick ``eps`` (and the cotangent scale) so that this is small.

    For a stateful layer, pass its ``state`` (required); ``rng`` defaults to a generator
    seeded with ``seed`` on the input's device; ``train=False`` checks evaluation mode.
    """
    eps, rtol, atol = _check_arguments(layer, directions, eps, rtol, atol, full_jacobian_max, seed)
    g = Generator(device=_device_of(x)).manual_seed(seed)
    for where, leaf in tree.flatten(params):
        if not (isinstance(leaf, Tensor) and leaf.is_floating_point()):
            kind = leaf.dtype if isinstance(leaf, Tensor) else type(leaf).__name__
            raise ValueError(
                f"check_vjp: parameter '{where}' is {kind}, not a floating-point tensor: "
                "keep integer buffers out of params (the closure of init can hold them)"
            )
    for where, leaf in tree.flatten(x):
        if isinstance(leaf, Tensor) and not leaf.numel():
            at = f" '{where}'" if where else ""
            raise ValueError(
                f"check_vjp: the input{at} has no elements (shape {tuple(leaf.shape)}): no "
                "difference to take; check a case with at least one number"
            )
    params = tree.map(_to64, params)
    x = tree.map(_to64, x)
    originals = tree.map(_copy, {"input": x, "params": params})
    if isinstance(layer, StatefulLayer):
        if state is None:
            raise ValueError("check_vjp: a stateful layer needs its state (state=...)")
        rng = rng if rng is not None else Generator(device=_device_of(x)).manual_seed(seed)
        layer = fixed(layer, tree.map(_to64, state), train=train, rng=rng)
    y, pullback = layer.vjp(params, x)
    _computed_in_float64(y)
    _finite({"output": y}, "is not finite at this point: pick another x (or params)")
    ct = tree.map(lambda t: _randn_like(t, g), y)
    kept = tree.map(_copy, {"cotangent": ct, "output": y})
    pulled = pullback(ct)
    if not isinstance(pulled, tuple) or len(pulled) != 2:
        got = f"a {type(pulled).__name__}" + (
            f" of {len(pulled)}" if isinstance(pulled, tuple) else ""
        )
        raise VJPCheckError(
            f"check_vjp: the pullback must return (param_grads, input_grad), a pair; got {got}"
        )
    ct_params, ct_x = pulled
    _unchanged({"cotangent": ct}, {"cotangent": kept["cotangent"]}, "the pullback")
    _unchanged({"input": x, "params": params}, originals, "vjp or its pullback")
    _unchanged({"output": y}, {"output": kept["output"]}, "the pullback")
    _finite({"gradient wrt input": ct_x, "gradient wrt parameter": ct_params}, "is not finite")
    rounding = 1e-15 * sum(
        float((c * t).abs().sum()) for c, t in zip(tree.leaves(ct), tree.leaves(y))
    )
    tiny = rounding / eps / rtol + 1e-300
    _check_form(layer, params, x, y, ct, pullback, ct_params, ct_x, rtol)

    def f(p, z):
        return tree.vdot(ct, layer.apply(p, z))

    worst: dict[str, float] = {}

    def record(part, err, detail):
        worst[part] = max(worst.get(part, 0.0), err)
        if not err <= rtol:  # (a NaN error fails too)
            raise VJPCheckError(
                f"check_vjp: gradient wrt {part} is wrong ({detail}): "
                f"relative error {err:.3g} > rtol {rtol:g}"
            )

    parts = [("input", None, x, ct_x)] + [
        (f"parameter '{path}'", path, leaf, dict(tree.flatten(ct_params))[path])
        for path, leaf in tree.flatten(params)
    ]

    for part, path, value, analytic in parts:

        def perturbed(delta, path=path):
            if path is None:
                return f(params, tree.add(x, delta))

            def shift(q, tensor):
                return tensor + delta if q == path else tensor

            return f(tree.map_with_path(shift, params), x)

        if sum(t.numel() for t in tree.leaves(value)) <= full_jacobian_max:
            # first, where it is cheap: a failure then says which number is wrong
            floor = atol * max(float(t.abs().max()) for t in tree.leaves(analytic)) + tiny
            named = len(tree.leaves(value)) > 1  # (a tuple input)
            for (where, leaf), a_leaf in zip(tree.flatten(value), tree.leaves(analytic)):
                for i in range(leaf.numel()):
                    e = tree.map(lambda t: t.new_zeros(t.shape), value)
                    dict(tree.flatten(e))[where].view(-1)[i] = eps
                    numeric = (perturbed(e) - perturbed(tree.scale(-1.0, e))) / (2 * eps)
                    a = float(a_leaf.reshape(-1)[i])
                    at = (f"'{where}' " if named else "") + f"at {_index(i, leaf.shape)}"
                    record(
                        part,
                        _rel(a, numeric, floor),
                        f"{at}: the pullback gives {a:.6g}, finite differences {numeric:.6g}",
                    )

        norm = abs(tree.vdot(analytic, analytic)) ** 0.5
        for _ in range(directions):
            u = tree.map(lambda t: _randn_like(t, g), value)
            numeric = (perturbed(tree.scale(eps, u)) - perturbed(tree.scale(-eps, u))) / (2 * eps)
            floor = atol * norm * abs(tree.vdot(u, u)) ** 0.5 + tiny
            a = tree.vdot(analytic, u)
            record(
                part,
                _rel(a, numeric, floor),
                f"along a random direction: the pullback gives {a:.6g}, finite differences "
                f"{numeric:.6g}",
            )

    c1 = tree.map(lambda t: _randn_like(t, g), y)
    c2 = tree.map(lambda t: _randn_like(t, g), y)
    p_sum, x_sum = pullback(tree.add(tree.scale(2.0, c1), tree.scale(-3.0, c2)))
    p1, x1 = pullback(c1)
    p2, x2 = pullback(c2)
    expected = tree.add(
        tree.scale(2.0, {"params": p1, "input": x1}), tree.scale(-3.0, {"params": p2, "input": x2})
    )
    for (path, got), (_, want) in zip(
        tree.flatten({"params": p_sum, "input": x_sum}), tree.flatten(expected)
    ):
        err = float((got - want).abs().max()) / max(float(want.abs().max()), tiny)
        record(f"linearity ({path})", err, "pullback is not linear")
    return worst


def _index(i: int, shape) -> tuple:
    """The flat index ``i`` of a tensor of ``shape`` as a tuple of indices."""
    index = []
    for size in reversed(tuple(shape)):
        i, r = divmod(i, size)
        index.append(r)
    return tuple(reversed(index))


def _computed_in_float64(y) -> None:
    for path, leaf in tree.flatten(y):
        if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.element_size() < 8:
            where = f" '{path}'" if path else ""
            raise VJPCheckError(
                f"check_vjp: the layer's output{where} is {leaf.dtype} for float64 input and "
                "parameters: it computes in a lower precision, whose rounding finite "
                "differences would read as a wrong gradient; check it computing in float64"
            )


def _finite(parts: dict, problem: str) -> None:
    """Every floating leaf of each part is finite; else name the part, path and place."""
    for name, part in parts.items():
        for path, leaf in tree.flatten(part):
            if isinstance(leaf, Tensor) and leaf.is_floating_point():
                bad = leaf.isfinite().logical_not_()
                if bad.any():
                    i = int(bad.reshape(-1).nonzero()[0])
                    value = float(leaf.reshape(-1)[i])
                    where = f" '{path}'" if path else ""
                    raise VJPCheckError(
                        f"check_vjp: the {name}{where} {problem} ({value} at "
                        f"{_index(i, leaf.shape)}, {int(bad.sum())} of {leaf.numel()} "
                        "numbers)"
                    )


def _copy(t):
    return t.clone() if isinstance(t, Tensor) else t


def _unchanged(now, before, by: str) -> None:
    """Every tensor leaf of ``now`` still equals its copy in ``before`` (NaNs included)."""
    for (path, a), (_, b) in zip(tree.flatten(now), tree.flatten(before)):
        if isinstance(a, Tensor) and not (a.eq(b) | (a.ne(a) & b.ne(b))).all():
            raise VJPCheckError(
                f"check_vjp: {by} changed the {path.replace('.', ' ', 1)} in place; a layer "
                "must leave its arguments as they were (see n2nfunc.base)"
            )


def _check_form(layer, params, x, y, ct, pullback, ct_params, ct_x, rtol: float) -> None:
    """What finite differences of ``apply`` cannot see (see the module docstring)."""
    originals = tree.map(_copy, {"input": x, "params": params})
    applied = layer.apply(params, x)
    _unchanged({"input": x, "params": params}, originals, "apply")
    try:
        tree.check_like(y, applied, "check_vjp: vjp's output", "apply output")
        tree.check_like(ct_params, params, "check_vjp: the parameter gradients")
        tree.check_like(ct_x, x, "check_vjp: the input gradient", "input")
    except ValueError as e:
        raise VJPCheckError(str(e)) from None

    def differs(got, want) -> bool:  # (a NaN in either differs)
        return not float((got - want).abs().max()) <= rtol * max(float(want.abs().max()), 1e-300)

    wanted = dict(tree.flatten(applied))  # by path: dicts may differ in key order
    for path, got in tree.flatten(y):
        if differs(got, wanted[path]):
            where = f" '{path}'" if path else ""
            raise VJPCheckError(f"check_vjp: vjp's output{where} differs from apply's")
    again = dict(zip(("params", "input"), pullback(ct)))
    for (path, got), (_, want) in zip(
        tree.flatten(again), tree.flatten({"params": ct_params, "input": ct_x})
    ):
        if differs(got, want):
            raise VJPCheckError(
                f"check_vjp: a second call of the pullback with the same cotangent gives "
                f"another gradient '{path}': a pullback may be called any number of times, so "
                "it must not change what it keeps (a saved derivative, a buffer it adds into)"
            )
    without, _ = pull(layer.vjp, pullback, ct, input_grad=False)
    full = dict(tree.flatten(ct_params))
    for path, got in tree.flatten(without):
        if differs(got, full[path]):
            raise VJPCheckError(
                f"check_vjp: parameter gradient '{path}' differs when the input gradient is "
                "not asked for (input_grad=False)"
            )


def _device_of(x):
    leaves = [t for t in tree.leaves(x) if isinstance(t, Tensor)]
    return leaves[0].device if leaves else "cpu"
