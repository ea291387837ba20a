"""``batch_norm2d``: batch normalisation over (N, H, W) per channel, as
``torch.nn.BatchNorm2d``.

Per channel, with ``m = N H W`` values:

* training: ``mean``, biased ``var`` of the batch; ``y = (x - mean) / sqrt(var + eps) * weight
  + bias``; the running statistics move towards the batch's, the variance unbiased:
  ``running_mean <- (1 - f) running_mean + f mean`` and
  ``running_var <- (1 - f) running_var + f var m / (m - 1)``, with ``f = momentum``
  (or ``1 / num_batches_tracked`` when ``momentum`` is ``None``, a cumulative average).
  Gradients, for the output gradient ``g``, with ``xhat = (x - mean) / sqrt(var + eps)`` and
  sums and means over the channel's ``m`` values: ``dweight = sum g xhat``,
  ``dbias = sum g``, ``dx = weight / sqrt(var + eps) (g - mean(g) - xhat mean(g xhat))``
  (the batch's mean and variance depend on ``x`` too);
* evaluation: the same formula with ``running_mean`` / ``running_var``, constants, so that
  ``dx = weight / sqrt(running_var + eps) g``; the state is returned unchanged. Before any
  training step these are PyTorch's initial values (mean 0, variance 1), so evaluation then
  gives ``x / sqrt(1 + eps) * weight + bias`` -- exactly what ``torch.nn.BatchNorm2d``
  gives; it is not an error.

Params ``{"weight": ones(C), "bias": zeros(C)}``; state ``{"running_mean": zeros(C),
"running_var": ones(C), "num_batches_tracked": 0}`` (an int64 scalar), the names of
``torch.nn.BatchNorm2d``'s state_dict. Training on one value per channel (``m = 1``) is a
ValueError, as in PyTorch.
"""

import functools
import math

from torch import Tensor, empty

from .. import tree
from ..base import (
    INT64,
    check_cotangent,
    check_image,
    check_params,
    checks_flags,
    generator_device,
    image_shape,
    is_number,
    output_of,
    skips_input_grad,
)
from ..stateful import StatefulLayer, stateful_call

_AXES = (0, 2, 3)


def _batches(count: Tensor, name: str) -> int:
    """The number of batches a cumulative average (``momentum=None``) has seen, this one
    included: at least 1 (a negative count loaded from a file would divide by 0, or weigh the
    batch negatively, without a word)."""
    batches = int(count)
    if batches < 1:
        raise ValueError(
            f"{name}: state 'num_batches_tracked' is {batches - 1}: a count of batches cannot "
            "be negative"
        )
    return batches


def _column(t):
    return t.view(1, -1, 1, 1)


def _in_float32(run, params, state, x, name: str):
    """``run(params, state, x)`` for 16-bit ``x``, params and state, computed in float32 and
    rounded once, as torch's 16-bit batch norm does: in float16 the squares of the centred
    values overflow past 256 (the output became zeros, the running variance inf)."""
    in_float32 = tree.map(lambda t: t.float() if t.is_floating_point() else t, (params, state))
    y, new_state, pullback = run(*in_float32, x.float())
    y = y.to(dtype=x.dtype)
    y_out = output_of(y)
    new_state = tree.map(lambda new, old: new.to(dtype=old.dtype), new_state, state)

    def narrow_pullback(ct, input_grad=True):
        ct = check_cotangent(ct, y_out, name)
        grads, dx = pullback(ct.float(), input_grad)
        grads = tree.map(lambda g, p: g.to(dtype=p.dtype), grads, params)
        return grads, None if dx is None else dx.to(dtype=x.dtype)

    return y, new_state, narrow_pullback


def batch_norm2d(eps: float = 1e-5, momentum: float | None = 0.1) -> StatefulLayer:
    """Batch normalisation of (N, C, H, W) inputs (see the module docstring)."""
    name = f"batch_norm2d(eps={eps}, momentum={momentum})"
    if not is_number(eps) or not 0 < eps < math.inf:
        error = ValueError if is_number(eps) else TypeError
        raise error(f"batch_norm2d: eps must be a finite positive number, got {eps!r}")
    if momentum is not None and (not is_number(momentum) or not 0 <= momentum <= 1):
        error = ValueError if is_number(momentum) else TypeError
        raise error(f"batch_norm2d: momentum must be in [0, 1] or None, got {momentum!r}")
    eps, momentum = float(eps), None if momentum is None else float(momentum)

    def init(generator, in_shape):
        shape = image_shape(in_shape, name)
        c = shape[1]
        device = generator_device(generator, name)
        params = {
            "weight": empty(c, device=device).fill_(1),
            "bias": empty(c, device=device).zero_(),
        }
        state = {
            "running_mean": empty(c, device=device).zero_(),
            "running_var": empty(c, device=device).fill_(1),
            "num_batches_tracked": empty((), device=device).long().zero_(),
        }
        return shape, params, state

    def vjp(params, state, x, *, train, rng=None):
        x = _checked(params, state, x, name)
        if train:
            run = functools.partial(_train_vjp, name=name, eps=eps, momentum=momentum)
        else:
            run = functools.partial(_eval_vjp, name=name, eps=eps)
        if x.element_size() > 2:
            y, new_state, pullback = run(params, state, x)
        else:
            y, new_state, pullback = _in_float32(run, params, state, x, name)
        return y, new_state, checks_flags(pullback, name)

    def apply(params, state, x, *, train, rng=None):
        y, new_state, _ = vjp(params, state, x, train=train)
        return y, new_state

    return StatefulLayer(
        init, stateful_call(apply, "apply", name), skips_input_grad(stateful_call(vjp, "vjp", name))
    )


def _checked(params, state, x, name: str):
    """``x`` checked as batch norm's input, with the parameters and state (shapes, dtypes,
    devices)."""
    weight = params.get("weight") if isinstance(params, dict) else None
    if weight is not None and not (isinstance(weight, Tensor) and weight.dim() == 1):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(
            f"{name}: parameter 'weight' must have shape (C,), one per channel, got {got}"
        )
    c = -1 if weight is None else weight.shape[0]
    check_params(params, name, {"weight": (c,), "bias": (c,)})
    weight = params["weight"]
    expected = {"running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}
    check_params(state, name, expected, "state")
    for key in ("running_mean", "running_var"):
        t = state[key]
        if t.dtype != weight.dtype or t.device != weight.device:
            raise TypeError(
                f"{name}: state '{key}' is {t.dtype} on {t.device} but the parameters "
                f"are {weight.dtype} on {weight.device}"
            )
    count = state["num_batches_tracked"]
    if count.dtype != INT64 or count.device != weight.device:
        raise TypeError(
            f"{name}: state 'num_batches_tracked' must be an int64 number on "
            f"{weight.device}, as torch's, got {count.dtype} on {count.device}"
        )
    return check_image(x, name, c, weight)


def _train_vjp(params, state, x, name: str, eps: float, momentum: float | None):
    """Training mode: normalised by the batch's statistics, which update the running ones."""
    n, _, h, w = x.shape
    m = n * h * w
    if m < 2:
        raise ValueError(
            f"{name}: training needs more than 1 value per channel, got input shape "
            f"{tuple(x.shape)} (use evaluation mode, train=False)"
        )
    mean = x.mean(_AXES)
    xc = x - _column(mean)
    var = (xc * xc).mean(_AXES)
    invstd = (var + eps).rsqrt()
    scale = invstd * params["weight"]
    y = xc * _column(scale) + _column(params["bias"])
    y_out = output_of(y)

    count = state["num_batches_tracked"] + 1
    f = momentum if momentum is not None else 1.0 / _batches(count, name)
    new_state = {
        "running_mean": state["running_mean"] * (1 - f) + mean * f,
        "running_var": state["running_var"] * (1 - f) + var * (f * m / (m - 1)),
        "num_batches_tracked": count,
    }

    def pullback(ct, input_grad=True):
        ct = check_cotangent(ct, y_out, name)
        d_bias = ct.sum(_AXES)
        ct_xc = (ct * xc).sum(_AXES)
        grads = {"weight": ct_xc * invstd, "bias": d_bias}
        if not input_grad:
            return grads, None
        # dx = invstd w (ct - mean(ct) - xhat mean(ct xhat)), with xhat = xc invstd
        dx = (ct - _column(d_bias / m)).sub_(xc * _column(ct_xc * invstd * invstd / m))
        return grads, dx.mul_(_column(scale))

    return y, new_state, pullback


def _eval_vjp(params, state, x, name: str, eps: float):
    """Evaluation mode: normalised by the running statistics, a per-channel affine map."""
    invstd = (state["running_var"] + eps).rsqrt()
    scale = invstd * params["weight"]
    xc = x - _column(state["running_mean"])
    y = xc * _column(scale) + _column(params["bias"])
    y_out = output_of(y)

    def pullback(ct, input_grad=True):
        ct = check_cotangent(ct, y_out, name)
        grads = {"weight": (ct * xc).sum(_AXES) * invstd, "bias": ct.sum(_AXES)}
        return grads, (ct * _column(scale) if input_grad else None)

    return y, state, pullback
