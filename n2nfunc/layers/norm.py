"""Normalisation layers: ``batch_norm2d`` (by the statistics of the batch, kept as state),
``group_norm``, ``instance_norm`` and ``layer_norm`` (by each sample's own).

``batch_norm2d`` normalises over (N, H, W) per channel, as ``torch.nn.BatchNorm2d``. Per
channel, with ``m = N H W`` values:

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

``group_norm`` and ``layer_norm`` normalise each sample on its own, by the statistics of
its own values, as ``torch.nn.GroupNorm`` and ``torch.nn.LayerNorm``: no batch statistics,
so no state and no train/eval modes (plain layers; ``mixed_precision`` takes them). Each
set of ``m`` values normalised together (a group of channels of one sample, or one vector
along the normalised axis) has its mean and biased variance ``var``; with
``xhat = (x - mean) / sqrt(var + eps)``, ``y = xhat weight + bias``, the params indexed by
channel (or by position along the axis). For the output gradient ``g``:

* ``dweight[c] = sum g xhat`` and ``dbias[c] = sum g``, each summed over every value that
  param ``c`` scales (all samples and positions);
* ``dx = (d - mean(d) - xhat mean(d xhat)) / sqrt(var + eps)`` with ``d = g weight``, the
  means over the value's own set (its mean and variance depend on every value in it).

The mean is taken of the values less the set's first value, which makes a constant set
exactly 0 after centring (``mean(0.1, 0.1, 0.1)`` in floating point is not 0.1, and the
difference, divided by ``sqrt(eps)``, had reached 0.015 in float32), and loses less to
rounding where the values sit far from 0.
"""

import functools
import math

from torch import Tensor, empty

from .. import kernels as K
from .. import tree
from ..base import (
    INT64,
    Layer,
    an_int,
    apply_via_vjp,
    check_cotangent,
    check_image,
    check_like,
    check_params,
    check_tensor,
    checks_flags,
    checks_unchanged,
    flag,
    generator_device,
    image_shape,
    is_int,
    is_number,
    output_of,
    positive_int,
    skips_input_grad,
    tensor_shape,
    unbatched_hint,
)
from ..stateful import StatefulLayer, stateful_call
from .geometry import describe


def _channel_sums(t: Tensor) -> Tensor:
    """Per channel, the sum of an (N, C, H, W) tensor over N, H and W, by the reduction of
    the convolutions' bias gradients (:func:`n2nfunc.kernels.channel_sums`): in channels-last
    memory, what the convolutions give, 1.5-2x as fast as ``t.sum((0, 2, 3))`` (32 x 64 x 32
    x 32: 0.24 -> 0.16 ms; 100 x 48 x 16 x 16: 0.21 -> 0.11 ms, the permuted view's call
    included; 2-core Xeon, a busy hour)."""
    return K.channel_sums(t.permute(0, 2, 3, 1))


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


def _given(**options) -> dict:
    """The ``options`` that are not None, for a layer's name (:func:`describe`)."""
    return {k: v for k, v in options.items() if v is not None}


def _functional_eps(eps, layer: str, wrapper: str) -> float:
    """:func:`_positive_eps` of a functional normalisation, whose first arguments take no
    channel count (init sizes the params from the input): an int ``eps`` of 1 or more is
    refused, as ``group_norm(4, 64)``, ported from ``nn.GroupNorm(4, 64)``, had normalised
    with eps = 64 without a word. ``wrapper`` is the torch-style block that takes the count."""
    if is_int(eps) and eps >= 1:
        raise TypeError(
            f"{layer}: eps must be a float, got the int {eps!r}: a channel count? This "
            f"functional layer takes none (its params are sized from the input by init; "
            f"torch.nn's {wrapper}(...) is n2nfunc.{wrapper} with the same arguments)"
        )
    return _positive_eps(eps, layer)


def _positive_eps(eps, layer: str) -> float:
    """``eps`` as a float, refused unless a finite positive number."""
    if not is_number(eps) or not 0 < eps < math.inf:
        error = ValueError if is_number(eps) else TypeError
        raise error(f"{layer}: eps must be a finite positive number, got {eps!r}")
    return float(eps)


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
    _functional_eps(eps, "batch_norm2d", "BatchNorm2d")
    if momentum is not None and (not is_number(momentum) or not 0 <= momentum <= 1):
        error = ValueError if is_number(momentum) else TypeError
        raise error(f"batch_norm2d: momentum must be in [0, 1] or None, got {momentum!r}")
    eps, momentum = float(eps), None if momentum is None else float(momentum)

    def init(generator, in_shape):
        shape = image_shape(in_shape, name)
        c = shape[1]
        device = generator_device(generator, name)
        params = _ones_zeros(c, generator, name)
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
    mean = _channel_sums(x).div_(m)
    xc = x - _column(mean)
    var = _channel_sums(xc * xc).div_(m)
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
        d_bias = _channel_sums(ct)
        ct_xc = _channel_sums(ct * xc)
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
        grads = {"weight": _channel_sums(ct * xc) * invstd, "bias": _channel_sums(ct)}
        return grads, (ct * _column(scale) if input_grad else None)

    return y, state, pullback


def group_norm(
    num_groups: int, eps: float = 1e-5, affine: bool = True, channels: int | None = None
) -> Layer:
    """Group normalisation of (N, C, ...) inputs, as ``torch.nn.GroupNorm``: the C channels
    split into ``num_groups`` groups of consecutive channels, each sample's group normalised
    by its own mean and biased variance, then scaled and shifted per channel (params
    ``{"weight": ones(C), "bias": zeros(C)}``, none with ``affine=False``). One group is
    layer normalisation over (C, H, W) with a per-channel affine map; C groups, instance
    normalisation. ``channels``, where given, is the C an input must have (the wrapper
    passes its ``num_channels``, so that one without params refuses other counts too). See
    the module docstring for the gradients."""
    name = describe(
        "group_norm", num_groups=num_groups, eps=eps, affine=affine, **_given(channels=channels)
    )
    groups = positive_int(num_groups, "num_groups", name)
    eps = _functional_eps(eps, name, "GroupNorm")

    def groups_of(shape: tuple) -> int:
        _split(shape[1], groups, shape, name)
        return groups

    return _per_sample(name, groups_of, eps, affine, 2, "(N, C, ...)", channels)


def instance_norm(eps: float = 1e-5, affine: bool = False, channels: int | None = None) -> Layer:
    """Instance normalisation of (N, C, H, W) images, as ``torch.nn.InstanceNorm2d`` (without
    running statistics): each sample's channel normalised over its own pixels by their mean
    and biased variance, then, with ``affine=True``, scaled and shifted per channel (params
    ``{"weight": ones(C), "bias": zeros(C)}``; none by default, as torch's). Group
    normalisation with one channel a group. One pixel a channel is refused, as torch refuses
    it: its normalised value would be 0 whatever the input. ``channels``, where given, is the
    C an input must have (the wrapper passes its ``num_features``)."""
    name = describe("instance_norm", eps=eps, affine=affine, **_given(channels=channels))
    eps = _functional_eps(eps, name, "InstanceNorm2d")

    def groups_of(shape: tuple) -> int:
        if len(shape) == 4 and -1 not in shape[2:] and shape[2] * shape[3] == 1:
            raise ValueError(
                f"{name}: input shape {shape} has one pixel per channel; instance "
                "normalisation needs more than one"
            )
        return shape[1]

    return _per_sample(name, groups_of, eps, affine, 4, "(N, C, H, W)", channels)


def _per_sample(
    name: str, groups_of, eps: float, affine, rank: int, what: str, channels: int | None
) -> Layer:
    """A normalisation of each sample's groups of channels (:func:`_group_normalized`),
    ``groups_of(shape)`` groups for an input ``shape`` (checking it), inputs of ``rank`` or
    more dims (exactly 4 for ``rank`` 4), of ``channels`` channels where given."""
    affine = flag(affine, "affine", name)
    channels = None if channels is None else positive_int(channels, "channels", name)

    def init(generator, in_shape):
        shape = tensor_shape(in_shape, name, rank, what)
        if rank == 4 and len(shape) != 4:
            raise ValueError(f"{name}: expected an input shape {what}, got {shape}")
        if channels is not None and shape[1] not in (-1, channels):
            raise ValueError(f"{name}: input shape {shape} must have {channels} channels")
        if channels is not None:
            shape = (shape[0], channels, *shape[2:])
        if shape[1] == -1:
            raise ValueError(f"{name}: the channel count C of input shape {shape} must be known")
        groups_of(shape)
        return shape, _ones_zeros(shape[1], generator, name) if affine else {}

    def vjp(params, x):
        c = _checked_affine(params, affine, name, channels)
        check_tensor(x, name)
        bad_rank = x.dim() < rank or (rank == 4 and x.dim() != 4)
        if not bad_rank and c != -1 and x.shape[1] != c:
            raise ValueError(
                f"{name}: input of shape {tuple(x.shape)} has {x.shape[1]} channels, expected {c}"
            )
        if bad_rank or 0 in x.shape[1:]:
            expected = what if c == -1 else what.replace("C", str(c), 1)
            raise ValueError(
                f"{name}: expected input {expected} (no axis of size 0), got {tuple(x.shape)}"
                + (unbatched_hint(x) if rank == 4 else "")
            )
        groups = groups_of(tuple(x.shape))

        def run(params, state, x):
            y, pullback = _group_normalized(x, params, groups, eps)
            return y, state, pullback

        return _run_in(run, params, _like(x, params, name), name)

    return Layer(init, apply_via_vjp(vjp), _guarded(vjp, affine, False, name))


def layer_norm(
    axis: int | tuple[int, ...] = -1,
    eps: float = 1e-5,
    affine: bool = True,
    size: int | tuple[int, ...] | None = None,
) -> Layer:
    """Layer normalisation along one axis: each vector along ``axis`` (every index of the
    other axes: one sample's position) normalised by its own mean and biased variance, then
    scaled and shifted per index of that axis (params ``{"weight": ones(F), "bias":
    zeros(F)}``, F its size; none with ``affine=False``). The last axis of (N, *, F), the
    default, is ``torch.nn.LayerNorm(F)``; ``axis=1`` of an (N, C, H, W) image normalises
    each pixel's channels (the "LayerNorm2d" of ConvNeXt and of NAFNet-style denoisers).
    The batch axis 0 is refused: samples stay apart. ``size``, where given, is the F an input
    must have (the params tell it otherwise; without them, any F is taken).

    ``axis`` may also be the last k axes, ``(-k, ..., -1)`` (``size`` then their sizes): each
    sample's position normalised over all of them together, the params of their shape, as
    ``torch.nn.LayerNorm((C, H, W))``. See the module docstring for the gradients."""
    name = describe("layer_norm", axis=axis, eps=eps, affine=affine, **_given(size=size))
    if isinstance(axis, (tuple, list)) and len(axis) != 1:
        return _trailing_layer_norm(axis, eps, affine, size, name)
    if isinstance(axis, (tuple, list)):
        (axis,) = axis
        size = size[0] if isinstance(size, (tuple, list)) and len(size) == 1 else size
    axis = an_int(axis, "axis", name)
    if isinstance(size, (tuple, list)):
        raise ValueError(
            f"{name}: a size of several axes, {tuple(size)}, goes with axis=(-k, ..., -1), the "
            f"last k axes (here axis={tuple(range(-len(size), 0))})"
        )
    size = None if size is None else positive_int(size, "size", name)
    if axis == 0:
        raise ValueError(f"{name}: axis 0 is the batch axis; samples are normalised apart")
    eps = _positive_eps(eps, name)
    affine = flag(affine, "affine", name)

    def along(rank: int, shape: tuple) -> int:
        """``axis`` as a non-negative index of a ``rank``-dimensional input, not the batch's."""
        if not -rank <= axis < rank or axis % rank == 0:
            raise ValueError(f"{name}: axis {axis} is not a non-batch axis of input shape {shape}")
        return axis % rank

    def init(generator, in_shape):
        shape = tensor_shape(in_shape, name, 2, "(N, ...)")
        f = shape[along(len(shape), shape)]
        if f == -1 and size is None:
            raise ValueError(
                f"{name}: the size of axis {axis} of input shape {shape} must be known"
            )
        if size is not None and f not in (-1, size):
            raise ValueError(f"{name}: axis {axis} of input shape {shape} must have size {size}")
        known = list(shape)
        known[along(len(shape), shape)] = size or f  # the size it was given, where unknown
        return tuple(known), _ones_zeros(size or f, generator, name) if affine else {}

    def run(params, state, x):
        a = along(x.dim(), tuple(x.shape))
        y, pullback = _last_axis_normalized(x.movedim(a, -1), params, eps)

        def moved_pullback(ct, input_grad=True):
            grads, dx = pullback(ct.movedim(a, -1), input_grad)
            return grads, None if dx is None else dx.movedim(-1, a)

        return y.movedim(-1, a), state, moved_pullback

    def vjp(params, x):
        f = _checked_affine(params, affine, name, size)
        check_tensor(x, name)
        a = along(x.dim(), tuple(x.shape)) if x.dim() >= 2 else 1
        if x.dim() < 2 or (f != -1 and x.shape[a] != f) or 0 in x.shape[1:]:
            sizes = ["N"] + ["*"] * (x.dim() - 1) if x.dim() >= 2 else ["N", "F"]
            sizes[a] = "F" if f == -1 else str(f)
            raise ValueError(
                f"{name}: expected input ({', '.join(sizes)}) (no axis of size 0), got "
                f"{tuple(x.shape)}"
            )
        return _run_in(run, params, _like(x, params, name), name)

    return Layer(init, apply_via_vjp(vjp), _guarded(vjp, affine, not affine, name))


def _trailing_layer_norm(axes, eps, affine, sizes, name: str) -> Layer:
    """``layer_norm`` over the last k axes (``axes`` = (-k, ..., -1)): the input reshaped to
    (..., F), F their product, normalised along that axis with the params flattened, and the
    output, gradients and input gradient reshaped back."""
    k = len(axes)
    if k == 0 or tuple(an_int(a, "axis", name) for a in axes) != tuple(range(-k, 0)):
        raise ValueError(
            f"{name}: several axes must be the last ones, (-k, ..., -1), got {tuple(axes)}"
        )
    if sizes is not None:
        if not isinstance(sizes, (tuple, list)) or len(sizes) != k:
            raise ValueError(f"{name}: size must give the {k} normalised axes' sizes")
        sizes = tuple(positive_int(d, "size", name) for d in sizes)
    eps = _positive_eps(eps, name)
    affine = flag(affine, "affine", name)

    def trailing(shape: tuple) -> tuple:
        """The normalised axes' sizes of an input ``shape`` (or of init's, -1 where unknown),
        checked against ``sizes``; the batch axis is not one of them."""
        if len(shape) < k + 1:
            raise ValueError(f"{name}: expected input of rank {k + 1} or more, got {shape}")
        got = tuple(shape[-k:])
        if sizes is not None and any(g not in (-1, s) for g, s in zip(got, sizes)):
            raise ValueError(f"{name}: the last {k} axes of input shape {shape} must be {sizes}")
        return sizes or got

    def init(generator, in_shape):
        shape = tensor_shape(in_shape, name, k + 1, f"(N, ...) of rank {k + 1} or more")
        known = trailing(shape)
        if -1 in known:
            raise ValueError(f"{name}: the last {k} sizes of input shape {shape} must be known")
        return shape[:-k] + known, _ones_zeros(known, generator, name) if affine else {}

    def run(params, state, x):
        lead, shape = tuple(x.shape[:-k]), tuple(x.shape[-k:])
        flat = {n: t.reshape(-1) for n, t in params.items()}
        y, pullback = _last_axis_normalized(x.reshape(*lead, -1), flat, eps)

        def flat_pullback(ct, input_grad=True):
            grads, dx = pullback(ct.reshape(*lead, -1), input_grad)
            grads = {n: g.view(shape) for n, g in grads.items()}
            return grads, None if dx is None else dx.view(x.shape)

        return y.view(x.shape), state, flat_pullback

    def vjp(params, x):
        check_tensor(x, name)
        if affine:
            weight = params.get("weight") if isinstance(params, dict) else None
            if sizes is None and isinstance(weight, Tensor) and weight.dim() != k:
                raise ValueError(
                    f"{name}: parameter 'weight' must have the {k} normalised axes' shape, "
                    f"got {tuple(weight.shape)}"
                )
            want = sizes or (tuple(weight.shape) if isinstance(weight, Tensor) else ())
            check_params(params, name, {"weight": want, "bias": want})
        else:
            check_params(params, name, {})
        shape = tuple(x.shape)
        expected = sizes or (tuple(params["weight"].shape) if affine else None)
        if len(shape) < k + 1 or 0 in shape[1:] or expected not in (None, shape[-k:]):
            want = "(N, ...)" if expected is None else f"(N, ..., {', '.join(map(str, expected))})"
            raise ValueError(f"{name}: expected input {want} (no axis of size 0), got {shape}")
        return _run_in(run, params, _like(x, params, name), name)

    return Layer(init, apply_via_vjp(vjp), _guarded(vjp, affine, not affine, name))


def _split(c: int, groups: int, shape: tuple, name: str) -> None:
    """The channel count ``c`` of ``shape`` must be known and divide into ``groups`` groups."""
    if c == -1:
        raise ValueError(f"{name}: the channel count C of input shape {shape} must be known")
    if c % groups:
        raise ValueError(
            f"{name}: the {c} channels of input shape {shape} do not split into "
            f"{groups} groups of equal size"
        )


def _ones_zeros(size: int | tuple, generator, name: str) -> dict:
    """PyTorch's initial affine params of a normalisation: weight ones, bias zeros."""
    device = generator_device(generator, name)
    return {
        "weight": empty(size, device=device).fill_(1),
        "bias": empty(size, device=device).zero_(),
    }


def _checked_affine(params, affine: bool, name: str, size: int | None = None) -> int:
    """Checks the params of an affine (weight, bias of shape (K,)) or a plain normalisation
    (none); returns K: ``size`` where the layer was given one (the params must have it),
    else the params' size, or -1 when there are none."""
    if not affine:
        check_params(params, name, {})
        return -1 if size is None else size
    weight = params.get("weight") if isinstance(params, dict) else None
    if weight is not None and not (isinstance(weight, Tensor) and weight.dim() == 1):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(
            f"{name}: parameter 'weight' must be a 1-d tensor, one number per channel or "
            f"feature, got {got}"
        )
    k = size if size is not None else -1 if weight is None else weight.shape[0]
    check_params(params, name, {"weight": (k,), "bias": (k,)})
    return k


def _like(x: Tensor, params: dict, name: str) -> Tensor:
    """``x`` with the params' dtype and device (a float tensor, any, without params)."""
    if params:
        return check_like(x, name, params["weight"])
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch, input shape {tuple(x.shape)}")
    return x


def _run_in(run, params, x, name: str):
    """``run(params, {}, x)`` as a plain layer's ``(y, pullback)``, in float32 for 16-bit
    inputs (see :func:`_in_float32`); the pullback checks its cotangent against ``y``."""
    if x.element_size() <= 2:
        y, _, pullback = _in_float32(run, params, {}, x, name)
        return y, checks_flags(pullback, name)
    y, _, pullback = run(params, {}, x)
    y_out = output_of(y)

    def checked(ct, input_grad=True):
        return pullback(check_cotangent(ct, y_out, name), input_grad)

    return y, checks_flags(checked, name)


def _guarded(vjp, affine: bool, keeps_output: bool, name: str):
    """``vjp`` whose pullback refuses to run once what it reads was changed in place: the
    weight, and the output where the pullback reads it (layer norm's without params is the
    kept ``xhat`` itself)."""

    def reads(params, x, y):  # (a 16-bit output is a rounded copy, not the kept xhat)
        return {
            **({"weight": params["weight"]} if affine else {}),
            **({"output": y} if keeps_output and y.element_size() > 2 else {}),
        }

    return checks_unchanged(name, skips_input_grad(vjp), reads)


def _group_normalized(x: Tensor, params: dict, groups: int, eps: float):
    """Group norm's ``(y, pullback)`` (see the module docstring), in per-channel terms: each
    sample's channel ``c`` of group ``g`` is ``y = (x - mean_g) * scale + bias_c`` with
    ``scale = invstd_g * weight_c``, and ``dx = ct * scale + (x - mean_g) * beta_g + gamma_g``
    (``beta = -invstd^3 mean(d (x - mean))``, ``gamma = -invstd mean(d)``, ``d = ct weight``,
    means over the group), from sums over each channel's values. Elementwise passes between
    the input and per-(sample, channel) numbers only, which channels-last memory runs as fast
    as contiguous (per-group numbers broadcast over a (N, G, C / G, H, W) view of it ran 5x
    slower: an innermost run of C / G numbers)."""
    shape = x.shape
    n, c = shape[0], shape[1]
    size = c // groups
    x3 = x.reshape(n, c, -1)  # (N, C, L): a view of contiguous and of channels-last memory
    m = size * x3.shape[2]  # values per group

    def group_sums(t):  # (N, C) -> (N, G, 1), summed over each group's channels
        return t.view(n, groups, size).sum(2, keepdim=True)

    def per_channel(t):  # (N, G, 1) -> (N, C, 1), each group's number for its channels
        return t.expand(n, groups, size).reshape(n, c, 1)

    xc = x3 - per_channel(x3[:, ::size, :1])  # less each group's first value
    xc.sub_(per_channel(group_sums(xc.sum(2)).div_(m)))
    invstd = group_sums((xc * xc).sum(2)).div_(m).add_(eps).rsqrt_()  # (N, G, 1)
    invstd_c = per_channel(invstd)
    weight = params["weight"].view(c, 1) if params else None
    scale = invstd_c if weight is None else invstd_c * weight
    y = xc * scale if weight is None else params["bias"].view(c, 1).addcmul(xc, scale)  # 1 pass

    def pullback(ct, input_grad=True):
        ct3 = ct.reshape(n, c, -1)
        ct_sums = ct3.sum(2)  # (N, C)
        ct_xc_sums = (ct3 * xc).sum(2)  # (N, C): sum ct (x - mean)
        grads = {}
        if weight is not None:
            ct_xhat = ct_xc_sums * invstd_c.view(n, c)
            grads = {"weight": ct_xhat.sum(0), "bias": ct_sums.sum(0)}
            ct_sums, ct_xc_sums = ct_sums * weight.view(1, c), ct_xc_sums * weight.view(1, c)
        if not input_grad:
            return grads, None
        mean_d = group_sums(ct_sums).div_(m)
        mean_d_xc = group_sums(ct_xc_sums).div_(m)
        beta = per_channel(mean_d_xc.mul_(invstd).mul_(invstd).mul_(invstd).neg_())
        gamma = per_channel(mean_d.mul_(invstd).neg_())
        dx = gamma.addcmul(xc, beta).addcmul_(ct3, scale)  # two passes
        return grads, dx.reshape(shape)

    return y.reshape(shape), pullback


def _last_axis_normalized(x: Tensor, params: dict, eps: float):
    """Layer norm's ``(y, pullback)`` over the last axis (see the module docstring): each
    row's ``xhat = (x - mean) invstd``, ``y = xhat weight + bias``;
    ``dx = invstd (d - mean(d) - xhat mean(d xhat))`` with ``d = ct weight``, where
    ``sum(d xhat) = (ct xhat) @ weight``: the product ``ct xhat`` the weight gradient sums
    anyway, reduced by a matrix-vector product."""
    f = x.shape[-1]
    xhat = x - x[..., :1]  # less each vector's first value
    xhat.sub_(xhat.mean(-1, keepdim=True))
    invstd = _squares_summed(xhat).div_(f).add_(eps).rsqrt_()
    xhat.mul_(invstd)
    weight = params["weight"] if params else None
    y = params["bias"].addcmul(xhat, weight) if weight is not None else xhat  # one pass

    def pullback(ct, input_grad=True):
        lead = tuple(range(ct.dim() - 1))
        ct_xhat = ct * xhat
        grads = {}
        if weight is not None:
            grads = {"weight": ct_xhat.sum(lead), "bias": ct.sum(lead)}
        if not input_grad:
            return grads, None
        if weight is None:
            mean_d, mean_d_xhat = ct.mean(-1, keepdim=True), ct_xhat.mean(-1, keepdim=True)
            dx = ct - mean_d
        else:
            mean_d = ct.matmul(weight).unsqueeze(-1).div_(f)
            mean_d_xhat = ct_xhat.matmul(weight).unsqueeze(-1).div_(f)
            dx = (ct * weight).sub_(mean_d)
        return grads, dx.addcmul_(xhat, mean_d_xhat, value=-1).mul_(invstd)

    return y, pullback


def _squares_summed(t: Tensor) -> Tensor:
    """The sum of squares along the last axis (kept): ``norm`` squared where that axis is
    contiguous (one reading pass), else products summed (``norm`` along a strided axis ran
    4x slower than that)."""
    if t.stride(-1) == 1:
        root = t.norm(dim=-1, keepdim=True)
        return root.mul_(root)
    return (t * t).sum(-1, keepdim=True)
