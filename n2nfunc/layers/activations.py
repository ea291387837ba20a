"""Parameterless activation layers: elementwise ``relu``, ``sigmoid``, ``leaky_relu``,
``tanh``, ``gelu``, ``silu``, ``elu``, ``softplus``, ``identity``, and ``softmax`` / ``log_softmax``
along an axis.

They accept any shape (``init`` passes the shape through) and keep the input's memory
layout, so channels-last activations stay channels-last.
"""

import math

from ..base import (
    SAME_SIZE_INT,
    Layer,
    Unchanged,
    an_int,
    apply_via_vjp,
    check_cotangent,
    check_params,
    check_tensor,
    checked_cotangent,
    inference_mode_on,
    is_number,
    output_of,
    outputs_of,
    shape_or_streams,
    tensor_shape,
)


def _elementwise(name: str, forward, derivative_times, uses_input: bool = True) -> Layer:
    """A layer ``y = f(x)`` with pullback ``ct -> derivative_times(x, y, ct)``. The pullback
    keeps one tensor: the input (``uses_input=True``; the derivative then gets ``y = None``)
    or, for a derivative written in ``y`` alone, the output (it gets ``x = None``)."""

    def init(generator, in_shape):
        return tensor_shape(in_shape, name, 0, "(N, ...)"), {}

    def vjp(params, x):
        check_params(params, name, {})
        y = forward(check_tensor(x, name))
        x_kept, y_kept = (x, None) if uses_input else (None, y)
        y_out = output_of(y)
        seen = Unchanged(name, **({"input": x} if uses_input else {"output": y}))

        def pullback(ct):
            seen.check()
            return {}, derivative_times(x_kept, y_kept, check_cotangent(ct, y_out, name))

        return y, pullback

    def apply(params, x):
        check_params(params, name, {})
        return forward(check_tensor(x, name))

    return Layer(init, apply, vjp)


def relu() -> Layer:
    """``y = max(x, 0)``; ``dx = ct * [y > 0]`` (the subgradient 0 at x = 0, like PyTorch).

    The mask is applied to the bits (:func:`_relu_mask_bits`): ``ct`` where ``y > 0``, else
    +0, as PyTorch's -- an infinite or NaN cotangent stays where ``y > 0`` and is 0 elsewhere
    (``sign(y) * ct`` gave NaN there, ``0 * inf``) -- and faster than a boolean mask and
    ``masked_fill`` on channels-last tensors. (Where ``y`` itself is NaN, see
    :func:`_positive_bits`.)
    """
    return _elementwise(
        "relu", lambda x: x.clamp(min=0), lambda x, y, ct: _relu_mask_bits(y, ct), uses_input=False
    )


def _positive_bits(v):
    """1 where the float ``v`` > 0, else 0, as integers of its size: a positive float's bits
    read as an integer are a positive number, +0's are 0 and a negative float's (sign bit
    set) are negative, so this is ``clamp(bits(v), 0, 1)``. Integer ops, where arithmetic on
    bfloat16 converts every element to float32 and back. A NaN counts by its sign bit (the
    forward pass carries it already): PyTorch's ReLU passes the cotangent at every NaN, this
    mask at one with the sign bit clear (``float("nan")``; arithmetic's NaNs on x86, as
    ``inf - inf``, have it set, and get 0)."""
    return v.view(SAME_SIZE_INT[v.element_size()]).clamp(0, 1)


def _relu_mask_bits(y, ct):
    """``ct * [y > 0]`` on the bits: ``ct``'s times the integer ``[y > 0]`` (1 or 0: an
    integer product that cannot overflow), so ``ct`` or +0 (bfloat16, 100 x 48 x 16 x 16:
    0.34 -> 0.16 ms against ``sign(y) * ct``; 2-core Xeon; float32 within 10% of it, 0.15 ->
    0.17 ms, 2-core AMD EPYC). Two passes: ANDed with the negated mask, three, took 1.2-1.5x
    as long (100 x 48 x 16 x 16 float32 0.47 -> 0.34 ms, torch's 0.26; 2-core Intel Xeon)."""
    ints = SAME_SIZE_INT[y.element_size()]
    return _positive_bits(y).mul_(ct.view(ints)).view(y.dtype)


def _select_bits(v, yes, no):
    """``yes`` where the 16-bit float ``v`` > 0, else ``no`` (both of ``v``'s dtype), chosen
    on the bits, ``no ^ ([v > 0] * (no ^ yes))``: a boolean ``where`` on channels-last
    bfloat16 takes 3.6 ms for 8 x 64 x 64 x 48 numbers, this 0.45 (2-core AMD EPYC)."""
    ints = SAME_SIZE_INT[v.element_size()]
    no_bits = no.view(ints)
    mask = _positive_bits(v)  # 0 or 1, written into: the result keeps v's memory layout
    return mask.mul_(no_bits.bitwise_xor(yes.view(ints))).bitwise_xor_(no_bits).view(v.dtype)


def _times(factor, ct):
    """``factor * ct`` in ``factor``'s dtype and layout (``factor`` is a temporary computed from
    the layer's output): written into ``factor`` in float32 / float64; a new tensor in lower
    precisions, where PyTorch's in-place arithmetic on the CPU runs at half the speed of the
    same op writing a fresh tensor (bfloat16, 1.6 M elements: ``mul_`` 0.79 ms, ``mul`` 0.39
    ms; float32 the other way round, 0.43 against 0.69 ms; 2-core Xeon)."""
    if factor.element_size() >= 4:
        return factor.mul_(ct)
    return factor.mul(ct)


def sigmoid() -> Layer:
    """``y = 1 / (1 + exp(-x))``; ``dx = (ct * (1 - y)) * y``, PyTorch's order (so its bits).

    The forward pass is the tensor method ``x.sigmoid()``: one pass where the formula takes
    four (1 x 3 x 512 x 512 float32: 0.38 -> 0.19 ms; 2-core Xeon), finite for any ``x``, and
    in bfloat16 rounded once rather than after each step."""
    return _elementwise(
        "sigmoid",
        lambda x: x.sigmoid(),
        lambda x, y, ct: _sigmoid_times(y, ct),
        uses_input=False,
    )


def _sigmoid_times(y, ct):
    """``ct * y * (1 - y)``: in float32 / float64 as ``(ct * (1 - y)) * y``, PyTorch's order
    and so its bits; in 16-bit floats the factor ``(1 - y) y`` first, so that the cotangent's
    product is rounded once (the default network's bfloat16 bias gradients stay within
    autocast's error)."""
    if y.element_size() >= 4:
        return y.neg().add_(1).mul_(ct).mul_(y)
    return y.neg().add_(1).mul_(y).mul_(ct)


def identity() -> Layer:
    """``y = x``; for skip connections."""

    def init(generator, in_shape):
        return shape_or_streams(in_shape, "identity"), {}

    def vjp(params, x):
        check_params(params, "identity", {})
        x_out = outputs_of(x)  # a tuple of streams passes through as it is
        return x, lambda ct: ({}, checked_cotangent(ct, x_out, "identity"))

    return Layer(init, apply_via_vjp(vjp), vjp)


def _number(value, what: str, layer: str, infinite_ok: bool = False) -> float:
    """``float(value)`` for a finite number (a NaN slope made every output NaN), or also an
    infinite one with ``infinite_ok``."""
    if not is_number(value):
        raise TypeError(f"{layer}: {what} must be a number, got {value!r}")
    if not (math.isfinite(float(value)) or (infinite_ok and not math.isnan(float(value)))):
        raise ValueError(
            f"{layer}: {what} must be {'not NaN' if infinite_ok else 'finite'}, got {value!r}"
        )
    return float(value)


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """``y = x`` for ``x > 0``, else ``negative_slope * x``; ``dx = ct`` or
    ``negative_slope * ct`` (the latter at ``x = 0``, like PyTorch)."""
    name = f"leaky_relu(negative_slope={negative_slope})"
    a = _number(negative_slope, "negative_slope", name) + 0.0  # -0.0 as 0.0: one key per slope

    slopes: dict = {}  # (dtype, device) -> the one-element weight of prelu, made once

    def forward(x):
        if a == 0:  # (with a = 0, inf * 0 would be NaN)
            return x.clamp(min=0)
        if x.element_size() >= 4:
            # the tensor method prelu: x or a x by sign, in one pass (twice as fast as two)
            key = (x.dtype, x.device)
            slope = slopes.get(key)
            if slope is None or (slope.is_inference() and not inference_mode_on()):
                # (one made under torch.inference_mode, an inference tensor, cannot be saved
                # by autograd for prelu's backward: made again outside it)
                slope = slopes[key] = x.new_full((1,), a)
            return x.prelu(slope)
        # 16-bit floats: max(x, a x) for a <= 1, min(x, a x) for a > 1, several times faster
        # than a boolean where; a x rounded from the exact product, as PyTorch's (prelu
        # would round a first)
        ax = x * a
        return x.maximum(ax) if a <= 1 else x.minimum(ax)

    def derivative_times(x, y, ct):
        # ct * (1 where x > 0, else a). For a >= 0, y > 0 iff x > 0, so y alone is kept;
        # float passes, not a boolean mask
        v = y if x is None else x
        if v.element_size() == 2:  # 16-bit floats: ct or ct * a, the product rounded once
            return _select_bits(v, ct, ct * a)
        if 0 <= a <= 1:  # sign(v) is -1, 0 or 1; at least a: a, a or 1
            return _times(v.sign().clamp_(min=a), ct)
        return _times(v.clamp(min=0).sign_().mul_(1 - a).add_(a), ct)

    return _elementwise(name, forward, derivative_times, uses_input=a < 0)


def tanh() -> Layer:
    """``y = tanh(x)``; ``dx = ct * (1 - y^2)``, for 16-bit floats computed in float32 and
    rounded once, as PyTorch's (``y^2`` rounded to bfloat16 before the subtraction erred 2.5%
    where torch's 0.4%)."""
    return _elementwise(
        "tanh",
        lambda x: x.tanh(),
        _float32_inside(lambda x, y, ct: (y * y).neg_().add_(1).mul_(ct)),
        uses_input=False,
    )


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(x):
    """``Phi(x) = erfc(-x / sqrt 2) / 2``: the same as ``(1 + erf(x / sqrt 2)) / 2``, without
    its cancellation for negative ``x`` (which in bfloat16 made GELU 0 below x = -3.5 and
    30% off at -3; in float32 below about -5.5)."""
    return (x * -_SQRT_HALF).erfc_().mul_(0.5)


def _gelu(x):
    return _normal_cdf(x).mul_(x)


def _gelu_grad(x, y, ct):
    # d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    pdf = (x * x).mul_(-0.5).exp_().mul_(_INV_SQRT_2PI)
    return pdf.mul_(x).add_(_normal_cdf(x)).mul_(ct)


_TANH_K = math.sqrt(2 / math.pi)
_TANH_C = 0.044715


def _gelu_tanh(x):
    u = (x * x).mul_(_TANH_C).add_(1).mul_(x).mul_(_TANH_K)  # k (x + c x^3)
    return u.tanh_().add_(1).mul_(x).mul_(0.5)


def _gelu_tanh_grad(x, y, ct):
    """``ct * (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2))``, ``t = tanh(k (x + c x^3))``:
    PyTorch's formula."""
    x2 = x * x
    t = x2.mul(_TANH_C).add_(1).mul_(x).mul_(_TANH_K).tanh_()
    slope = x2.mul_(3 * _TANH_C).add_(1).mul_(_TANH_K).mul_(x).mul_(0.5)  # x k (1 + 3 c x^2) / 2
    slope.mul_(t.mul(t).neg_().add_(1))
    return t.add_(1).mul_(0.5).add_(slope).mul_(ct)


def gelu(approximate: str = "none") -> Layer:
    """The exact GELU, ``y = x Phi(x) = x erfc(-x / sqrt 2) / 2``;
    ``dx = ct * (Phi(x) + x exp(-x^2/2) / sqrt(2 pi))``; 16-bit inputs are computed in
    float32 and rounded once, as PyTorch's 16-bit GELU (the rounded argument of erfc had
    cost 2% at x = -3.5). ``approximate="tanh"``: PyTorch's tanh form, ``y = x (1 + tanh(k
    (x + c x^3))) / 2``, ``k = sqrt(2 / pi)``, ``c = 0.044715``."""
    if approximate == "tanh":
        return _elementwise(
            "gelu(approximate='tanh')",
            _float32_inside(_gelu_tanh),
            _float32_inside(_gelu_tanh_grad),
        )
    if approximate != "none":
        error = ValueError if isinstance(approximate, str) else TypeError
        raise error(f"gelu: approximate must be 'none' or 'tanh', as torch's, got {approximate!r}")
    return _elementwise("gelu", _float32_inside(_gelu), _float32_inside(_gelu_grad))


def _silu(x):
    return x.sigmoid().mul_(x)


def _silu_grad(x, y, ct):
    """``ct * s * (1 + x (1 - s))``, ``s = sigmoid(x)``: PyTorch's formula (so an infinite
    ``x`` gives NaN, 0 * inf, as torch's)."""
    s = x.sigmoid()
    return s.neg().add_(1).mul_(x).add_(1).mul_(s).mul_(ct)


def silu() -> Layer:
    """SiLU (swish), ``y = x sigmoid(x)``; ``dx = ct * s * (1 + x (1 - s))`` with ``s =
    sigmoid(x)``; 16-bit inputs are computed in float32 and rounded once, as PyTorch's."""
    return _elementwise("silu", _float32_inside(_silu), _float32_inside(_silu_grad))


def elu(alpha: float = 1.0) -> Layer:
    """``y = x`` for ``x > 0``, else ``alpha (exp(x) - 1)``; ``dx = ct`` or
    ``ct alpha exp(x)`` (from ``x``: ``y + alpha`` would cancel, 0 in float32 below x = -17)."""
    name = f"elu(alpha={alpha})"
    a = _number(alpha, "alpha", name)
    # 16-bit floats in float32, rounded once (exp(x) of x < -10 is a float16 subnormal: dx
    # was 6% off); a NaN input passes ct on
    return _elementwise(
        name,
        _float32_inside(lambda x: x.where(x > 0, x.expm1() * a)),
        _float32_inside(lambda x, y, ct: x.clamp(max=0).exp_().mul_(a).mul_(ct).where(x <= 0, ct)),
    )


def softplus(beta: float = 1.0, threshold: float = 20.0) -> Layer:
    """``y = log(1 + exp(beta x)) / beta``, and ``y = x`` where ``beta x > threshold``
    (PyTorch's semantics); ``dx = ct * sigmoid(beta x)``, or ``ct`` past the threshold."""
    name = f"softplus(beta={beta}, threshold={threshold})"
    b, t = _number(beta, "beta", name), _number(threshold, "threshold", name, infinite_ok=True)
    if b <= 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta!r}")

    def forward(x):  # log(1 + e^z) = max(z, 0) + log(1 + e^-|z|): no overflow in float16
        bx = x * b
        return x.where(bx > t, bx.abs().neg_().exp_().log1p_().add_(bx.clamp(min=0)).div_(b))

    def derivative_times(x, y, ct):
        # sigmoid(bx) as e / (1 + e) below 0, e = exp(-|bx|): a subnormal, not 0, where
        # bx < -87 (an infinite ct times it stays inf)
        bx = x * b
        e = bx.abs().neg_().exp_()
        return ct.where(bx > t, e.div(e + 1).where(bx < 0, (e + 1).reciprocal_()).mul_(ct))

    # 16-bit floats in float32, rounded once (sigmoid(x) of x < -10 is a float16 subnormal)
    return _elementwise(name, _float32_inside(forward), _float32_inside(derivative_times))


def _along(axis: int, name: str):
    """A check that ``axis`` exists in the input (negative axes count from the end)."""
    axis = an_int(axis, "axis", name)

    def checked(x):
        if not -x.dim() <= axis < x.dim():
            raise ValueError(
                f"{name}: axis {axis} is out of range for input shape {tuple(x.shape)}"
            )
        return x

    return checked


def log_softmax_of(x, axis: int):
    """``x - max - log(sum(exp(x - max)))`` along ``axis``: finite for any finite ``x``."""
    if x.shape[axis] == 0:  # (no maximum to take: an empty result, as PyTorch's)
        return x.clone()
    shifted = x - x.amax(axis, keepdim=True)
    return shifted - shifted.exp().sum(axis, keepdim=True).log_()


def _float32_inside(fn):
    """``fn`` of tensors (or None), computed in float32 and rounded once to the dtype of its
    tensors where they are 16-bit floats, as PyTorch's 16-bit softmax computes (in 16 bits
    throughout, bfloat16 log_softmax erred 0.12 where torch's does 0.07); else as it is."""

    def wrapped(*ts):
        low = next(t for t in ts if t is not None)
        if low.element_size() != 2:
            return fn(*ts)
        return fn(*(None if t is None else t.float() for t in ts)).to(low.dtype)

    return wrapped


def log_softmax(axis: int = 1) -> Layer:
    """``y = x - max - log(sum(exp(x - max)))`` along ``axis`` (stable for any finite ``x``);
    ``dx = ct - exp(y) * sum(ct)``. 16-bit floats are computed in float32."""
    name = f"log_softmax(axis={axis})"
    checked = _along(axis, name)

    return _elementwise(
        name,
        _float32_inside(lambda x: log_softmax_of(checked(x), axis)),
        _float32_inside(lambda x, y, ct: ct - y.exp().mul_(ct.sum(axis, keepdim=True))),
        uses_input=False,
    )


def softmax(axis: int = 1) -> Layer:
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis``;
    ``dx = y * (ct - sum(ct * y))``. 16-bit floats are computed in float32."""
    name = f"softmax(axis={axis})"
    checked = _along(axis, name)

    def forward(x):
        if checked(x).shape[axis] == 0:  # (no maximum to take: an empty result, as PyTorch's)
            return x.clone()
        e = (x - x.amax(axis, keepdim=True)).exp_()
        return e.div_(e.sum(axis, keepdim=True))

    return _elementwise(
        name,
        _float32_inside(forward),
        _float32_inside(lambda x, y, ct: (ct - (ct * y).sum(axis, keepdim=True)).mul_(y)),
        uses_input=False,
    )
