"""The layer type and the argument checks every layer shares.

A layer is a triple of pure functions over a dict of parameters:

* ``init(generator, in_shape) -> (out_shape, params)``
* ``apply(params, x) -> y``
* ``vjp(params, x) -> (y, pullback)``, ``pullback(ct_y) -> (ct_params, ct_x)``

``ct_params`` has the structure of ``params``; ``ct_x`` the shape of ``x``. A layer whose
pullback also accepts ``pullback(ct_y, input_grad=False)`` -- and may then return ``None``
for ``ct_x``, skipping that work when ``x`` is data -- marks its ``vjp`` with
:func:`skips_input_grad`; :func:`pull` calls any pullback that way when it can.

Pure means no argument is changed in place: not ``params`` or ``x`` by ``apply`` and ``vjp``,
and not ``ct_y`` by the pullback -- the combinators hand one tensor to several pullbacks
(``fanin_sum`` gives each input the same cotangent, ``residual`` adds its own after the
inner pullback), so a ``ct.mul_(mask)`` corrupts another branch's gradient; ``check_vjp``
refuses it.

Nor may a caller change in place, between ``vjp`` and the pullback, a tensor the pullback
reads (a weight, the input, the output): an optimizer step before the backward pass, say. The
layers record those tensors' version counters with :class:`Unchanged`, and the pullback
refuses, as torch's autograd does, rather than return the gradient of other numbers.

A pullback may be called any number of times (``check_vjp`` tests linearity that way). A
caller that calls it once, as a training step does, says so with ``release=True`` to a layer
marked with :func:`releases` (the combinators and wrappers): it then lets go of what the
forward pass kept for each child as soon as that child's pullback has run, as torch's
autograd frees a node's saved tensors, and refuses a later call.

Shapes are full tuples: ``(N, C, H, W)`` for the image layers, ``(N, ..., F)`` for ``dense``,
any rank for the elementwise layers; ``-1`` marks a size not known yet (the batch, or an image
size), and it propagates to the output shape.
"""

import math
import numbers
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

from torch import Generator, Tensor, device, dtype, empty

# The dtypes the package names, read off empty tensors: the compute modules import from torch
# only empty, cat, arange and type names.
BOOL = empty(0).bool().dtype
INT16, INT32, INT64 = empty(0).short().dtype, empty(0).int().dtype, empty(0).long().dtype
# the integer dtype of each element size: a float tensor's bits, read as integers (.view)
SAME_SIZE_INT = {2: INT16, 4: INT32, 8: INT64}
BFLOAT16, FLOAT32, FLOAT64 = (
    empty(0).bfloat16().dtype,
    empty(0).float().dtype,
    empty(0).double().dtype,
)


def inference_mode_on() -> bool:
    """Whether ``torch.inference_mode`` is on (a tensor made now is an inference tensor)."""
    return empty(0).is_inference()


Shape = tuple[int, ...]
# A layer's input or output shape: a Shape, or for several streams a tuple of them (nested)
Shapes = Any
Params = Any  # a dict (possibly nested) of tensors
IntPair = int | tuple[int, int] | list[int]  # one size or step for both axes, or (height, width)
ScalePair = float | tuple[float, float] | list[float]  # whole numbers, as a float too
DeviceLike = device | str | int | None  # as torch's ``Tensor.to`` reads it


class _Fspath(Protocol):
    def __fspath__(self) -> str: ...


PathLike = str | _Fspath  # a file's path, as open() takes it: a str, a pathlib.Path, ...
Pullback = Callable[..., tuple[Params, Any]]
Vjp = TypeVar("Vjp", bound=Callable[..., Any])


class Layer(NamedTuple):
    """A layer as three pure functions (see the module docstring)."""

    init: Callable[[Generator | None, Shapes], tuple[Shapes, Params]]
    apply: Callable[[Params, Any], Any]
    vjp: Callable[[Params, Any], tuple[Any, Pullback]]

    def __call__(self, *args, **kwargs):
        """Refused with the calls to make: a layer holds no params (as stax's pairs)."""
        raise TypeError(
            "a Layer is not called: out_shape, params = layer.init(generator, in_shape), then "
            "y = layer.apply(params, x) (or y, pullback = layer.vjp(params, x)); "
            "n2nfunc.Module.from_layer(layer, in_shape) makes a block with forward/backward"
        )


def apply_via_vjp(vjp: Callable) -> Callable:
    """An ``apply`` that runs ``vjp`` and drops the pullback, for layers whose forward pass
    costs the same either way."""
    return lambda params, x: vjp(params, x)[0]


def skips_input_grad(vjp: Vjp) -> Vjp:
    """Mark ``vjp`` (in place, and return it) as returning pullbacks that accept
    ``input_grad=False``: a decorator for a layer's author, not a query (:func:`pull` then
    passes the keyword)."""
    vjp.skips_input_grad = True  # type: ignore[attr-defined]
    return vjp


def releases(vjp: Vjp) -> Vjp:
    """Mark ``vjp`` (in place, and return it) as returning pullbacks that accept
    ``release=True``: the caller's last call, during which the pullback drops what it holds
    for each child once used (a later call raises :class:`ReleasedError`). A decorator for a
    layer's author, not a query (:func:`pull` then passes the keyword)."""
    vjp.releases = True  # type: ignore[attr-defined]
    return vjp


def adds_into(apply: Callable, add_into: Callable) -> Callable:
    """Mark ``apply`` with ``add_into(params, x, out)``, which adds ``apply(params, x)`` to the
    tensor ``out`` in place (any strides) without forming it: a sum downstream then needs
    neither the layer's output nor a new tensor for the sum (the U-Net's skip blocks)."""
    apply.add_into = add_into  # type: ignore[attr-defined]
    return apply


def add_into_vjp(vjp: Callable, vjp_into: Callable, name: str) -> Callable:
    """Mark ``vjp`` with ``add_into(params, x, out) -> pullback``: the forward pass of
    ``vjp`` with its output added to ``out`` in place (not formed on its own), by
    ``vjp_into(params, x, out)``, which returns ``(out, pullback)``; the pullback is guarded
    as ``vjp``'s (:func:`checks_unchanged`: weight and input)."""

    def add_into(params, x, out):
        _, pullback = vjp_into(params, x, out)
        return _checking(pullback, Unchanged(name, **weight_and_input(params, x, out)))

    vjp.add_into = add_into  # type: ignore[attr-defined]
    return vjp


# What a network holds inside, marked on its vjp and carried up by every wrapper and
# combinator: a mixed_precision layer (its precision), a stateful layer with its state held
# fixed (True). mixed_precision refuses both where it is built.
INNER_MARKERS = ("mixed_precision", "holds_state")


def marked_like(vjp: Callable, inner: Callable) -> Callable:
    """``vjp`` with the markers (:func:`skips_input_grad`, :func:`releases`) of ``inner``,
    for a wrapper whose pullback is the inner one, and what ``inner`` holds (INNER_MARKERS)."""
    for marker in ("skips_input_grad", "releases", *INNER_MARKERS):
        if value := getattr(inner, marker, None):
            setattr(vjp, marker, value)
    return vjp


def holding(vjp: Callable, layers) -> Callable:
    """``vjp`` of a network of ``layers`` marked with what any of them holds (INNER_MARKERS)."""
    for marker in INNER_MARKERS:
        for layer in layers:
            if value := getattr(layer.vjp, marker, None):
                setattr(vjp, marker, value)
    return vjp


class Unchanged:
    """The version counters, at ``vjp`` time, of the tensors a pullback reads (named by
    keyword: ``Unchanged(name, weight=w, input=x)``); :meth:`check` raises if one was changed
    in place since. A view shares its base's counter, and the base is what is watched: a view
    passed inline (``x.permute(...)``) is gone after the vjp, while the pullback reads its
    memory through views of its own. Holds weak references: what nothing else keeps is not
    kept, and needs no check. Tensors made under ``torch.inference_mode`` have no counter and
    are not checked."""

    __slots__ = ("name", "seen")

    def __init__(self, name: str, **tensors):
        self.name = name
        self.seen = [
            (what, tuple(t.shape), weakref.ref(t if t._base is None else t._base), t._version)
            for what, t in tensors.items()
            if isinstance(t, Tensor) and not t.is_inference()
        ]

    def check(self) -> None:
        for what, shape, ref, version in self.seen:
            t = ref()
            if t is not None and t._version != version:
                raise RuntimeError(
                    f"{self.name}: its {what} (shape {shape}) was changed in place "
                    "after the forward pass that this backward pass differentiates (an "
                    "optimizer step before the backward pass, say); run the backward pass "
                    "first, or the forward pass again"
                )


def checks_unchanged(name: str, vjp: Callable, reads: Callable) -> Callable:
    """``vjp`` whose pullbacks first check that the tensors named by ``reads(params, x, y)``
    (a dict, e.g. ``{"weight": ..., "input": x}``) are as the vjp found them
    (:class:`Unchanged`); its markers (:func:`skips_input_grad`, :func:`releases`) kept."""

    def guarded(params, x):
        y, pullback = vjp(params, x)
        return y, _checking(pullback, Unchanged(name, **reads(params, x, y)))

    return marked_like(guarded, vjp)


def _checking(pullback: Pullback, seen: "Unchanged") -> Pullback:
    """``pullback`` that first checks ``seen`` (raising if a tensor it reads was changed)."""

    def checked(ct, *args, **options):
        seen.check()
        _check_flags(args, options, seen.name)
        return pullback(ct, *args, **options)

    return checked


def checks_flags(pullback: Pullback, name: str) -> Pullback:
    """``pullback`` that refuses an ``input_grad`` or ``release`` other than True or False
    (the string "no" would count as True), naming the layer ``name``."""

    def checked(ct, *args, **options):
        _check_flags(args, options, name)
        return pullback(ct, *args, **options)

    return checked


def _check_flags(args: tuple, options: dict, name: str) -> None:
    given = (*zip(("input_grad", "release"), args), *options.items())
    for key, value in given:
        if key in ("input_grad", "release"):
            flag(value, key, f"{name} pullback")


def weight_and_input(params, x, y) -> dict:
    """What a linear map's pullback reads (for :func:`checks_unchanged`): its weight and input."""
    return {"weight": params["weight"], "input": x}


class ReleasedError(RuntimeError):
    """A pullback called again after a call with ``release=True``."""


def released(name: str) -> ReleasedError:
    return ReleasedError(
        f"{name}: this pullback was called with release=True (possibly by a call that failed "
        "partway), which freed what the forward pass kept; run vjp again for another backward "
        "pass"
    )


class Held:
    """The pullback of a wrapper's one child, let go of by a call with ``release=True``."""

    def __init__(self, pullback: Pullback, name: str):
        self.pullback: Pullback | None = pullback
        self.name = name

    def take(self, release: bool) -> Pullback:
        """The child's pullback, for this call; after a release, :class:`ReleasedError`."""
        pullback = self.pullback
        if pullback is None:
            raise released(self.name)
        if release:
            self.pullback = None
        return pullback


def pull(
    vjp: Callable, pullback: Pullback, ct: Any, input_grad: bool, release: bool = False
) -> tuple[Params, Any]:
    """``pullback(ct)``, asking it to skip the input gradient when ``input_grad`` is False and
    to free what it keeps as it goes when ``release`` is True (this is the last call), as far
    as the layer (whose ``vjp`` is given) supports these."""
    input_grad = flag(input_grad, "input_grad", "pullback")  # ("no" had counted as True)
    release = flag(release, "release", "pullback")
    options = {}
    if not input_grad and getattr(vjp, "skips_input_grad", False):
        options["input_grad"] = False
    if release and getattr(vjp, "releases", False):
        options["release"] = True
    return pullback(ct, **options)


def flag(value, name: str, layer: str) -> bool:
    """``value`` as a bool: True or False (or 1, 0, a NumPy bool, as torch takes); anything
    else, such as the string "False" or the number 1.0, is an error naming ``layer`` and
    ``name``."""
    fractional = isinstance(value, numbers.Complex) and not isinstance(value, numbers.Integral)
    if isinstance(value, Tensor):
        fractional = value.is_floating_point() or value.is_complex()
    try:
        ok = not isinstance(value, (str, bytes)) and not fractional and value in (True, False)
    except (TypeError, RuntimeError, ValueError):  # a tensor of several values, ...
        ok = False
    if not ok:
        raise TypeError(f"{layer}: {name} must be True or False, got {value!r}")
    return bool(value)


def is_int(value) -> bool:
    """Whether ``value`` is an integer and not a bool: a Python int or a NumPy one (anything
    registered as ``numbers.Integral``), as torch.nn's arguments take."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Whether ``value`` is a real number and not a bool: a Python int or float, or a NumPy
    scalar (``numbers.Real``)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def real_number(v) -> float | None:
    """``float(v)`` for a real scalar (not a bool, string or a tensor of several numbers)."""
    if isinstance(v, (bool, str, bytes)) or getattr(v, "ndim", 0) != 0:
        return None
    if getattr(v, "is_complex", lambda: False)() or isinstance(v, complex):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def pair(value, name: str, layer: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` as a pair of ints >= ``minimum`` (an int means the same for height and width)."""
    if is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(map(is_int, value)):
        raise TypeError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value!r}")
    return int(value[0]), int(value[1])


def an_int(value, name: str, layer: str) -> int:
    """``value`` as a Python int (any sign); a TypeError naming ``layer`` and ``name`` else."""
    if not is_int(value):
        raise TypeError(f"{layer}: {name} must be an int, got {value!r}")
    return int(value)


def positive_int(value, name: str, layer: str) -> int:
    """``value`` as a Python int, which must be >= 1 (a TypeError for a value that is not an
    int, a ValueError for one below 1, as torch's)."""
    if not is_int(value) or value < 1:
        error = ValueError if is_int(value) else TypeError
        raise error(f"{layer}: {name} must be a positive int, got {value!r}")
    return int(value)


def image_shape(in_shape, layer: str, channels: int | None = None) -> Shape:
    """Check an ``init`` shape ``(N, C, H, W)``: ints, C > 0, others > 0 or -1 (unknown)."""
    shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else None
    if shape is None or len(shape) != 4 or not all(map(is_int, shape)):
        raise ValueError(f"{layer}: expected an input shape (N, C, H, W), got {_shown(in_shape)}")
    n, c, h, w = shape = tuple(map(int, shape))
    if c == -1:
        raise ValueError(f"{layer}: the channel count C of input shape {shape} must be known")
    if c < 1 or any(s == 0 or s < -1 for s in (n, h, w)):
        raise ValueError(
            f"{layer}: input shape {shape} has a non-positive size "
            "(use -1 for a size not known yet)"
        )
    if channels is not None and c != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got shape {shape}")
    return shape


def _shown(in_shape) -> str:
    """An ``init`` argument as an error quotes it: a tensor by its shape, not its values."""
    if isinstance(in_shape, Tensor):
        return (
            f"a tensor of shape {tuple(in_shape.shape)} (init takes the shape: "
            f"pass x.shape, or -1 for sizes not known yet)"
        )
    if isinstance(in_shape, (tuple, list)) and None in in_shape:
        return f"{in_shape!r} (-1, not None, stands for a size not known yet)"
    return repr(in_shape)


def tensor_shape(in_shape, layer: str, min_rank: int, what: str) -> Shape:
    """Check an ``init`` shape of rank >= ``min_rank``: ints, each > 0 or -1 (unknown)."""
    shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else None
    if shape is None or len(shape) < min_rank or not all(map(is_int, shape)):
        raise ValueError(f"{layer}: expected an input shape {what}, got {_shown(in_shape)}")
    shape = tuple(map(int, shape))
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(
            f"{layer}: input shape {shape} has a non-positive size "
            "(use -1 for a size not known yet)"
        )
    return shape


def shape_or_streams(in_shape, layer: str):
    """Check an ``init`` argument of a layer that passes streams through (identity, fanout):
    a shape of ints (see :func:`tensor_shape`) or a tuple of such, at any depth."""
    if isinstance(in_shape, (tuple, list)) and in_shape and not all(map(is_int, in_shape)):
        return tuple(shape_or_streams(s, layer) for s in in_shape)
    return tensor_shape(in_shape, layer, 0, "(N, ...) or a tuple of shapes")


def float32_if_16bit(t: Tensor) -> Tensor:
    """``t`` widened to float32 where it is a 16-bit float, else ``t`` itself: the layers that
    sum many terms compute 16-bit inputs in float32 and round the result once."""
    return t.float() if t.element_size() <= 2 else t


def check_tensor(x, layer: str, what: str = "input") -> Tensor:
    """``x`` must be a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: {what} must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer}: {what} must be floating point, got dtype {x.dtype} (shape {tuple(x.shape)})"
        )
    return x


def check_image(x, layer: str, channels: int, like: Tensor) -> Tensor:
    """``x`` must be a (N, ``channels``, H, W) float tensor of ``like``'s dtype and device,
    with at least one pixel (``channels`` -1: any number of channels)."""
    check_tensor(x, layer)
    if x.dim() != 4 or (channels != -1 and x.shape[1] != channels):
        c = "C" if channels == -1 else channels
        raise ValueError(
            f"{layer}: expected input of shape (N, {c}, H, W), got {tuple(x.shape)}"
            + unbatched_hint(x)
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{layer}: empty image (H or W is 0), input shape {tuple(x.shape)}")
    return check_like(x, layer, like)


# Public homes of classes an error may name: torch.nn.Conv2d, not torch.nn.modules.conv.Conv2d
PUBLIC_HOMES = ("torch.nn.modules.", "torch.nn"), ("torch.optim.", "torch.optim")


def public_name(kind: type) -> str:
    """``kind``'s name as its users write it: ``n2nfunc.MSE``, ``torch.nn.Conv2d``,
    ``torch.optim.SGD``, ``int``."""
    module = kind.__module__
    if module == "builtins":
        return kind.__name__
    if module.startswith("n2nfunc"):
        module = "n2nfunc"
    for prefix, home in PUBLIC_HOMES:
        module = home if module.startswith(prefix) else module
    return f"{module}.{kind.__name__}"


def unbatched_hint(x: Tensor) -> str:
    """For an error about an image input of 3 dims: how to make it a batch (torch's image
    layers take one unbatched image; these take batches only)."""
    if x.dim() != 3:
        return ""
    return " (one image without its batch axis: x.unsqueeze(0) makes it a batch of one)"


def check_like(x: Tensor, layer: str, like: Tensor) -> Tensor:
    """``x`` must have ``like``'s (the parameters') dtype and device and a non-empty batch."""
    if x.dtype != like.dtype:
        raise TypeError(
            f"{layer}: input dtype {x.dtype} does not match the parameters' "
            f"dtype {like.dtype} (input shape {tuple(x.shape)}): convert one to the other "
            f"(the params, or a block with .to(dtype={x.dtype}); the input with "
            f".to({like.dtype})), or run a float32 network on bfloat16 operands with "
            "mixed_precision(layer, 'bfloat16')"
        )
    if x.device != like.device:
        raise ValueError(
            f"{layer}: input is on {x.device} but the parameters are on "
            f"{like.device} (input shape {tuple(x.shape)})"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{layer}: empty batch, input shape {tuple(x.shape)}")
    return x


def check_params(params, layer: str, expected: dict, what: str = "parameter") -> None:
    """``params`` must hold exactly the tensors named in ``expected`` ({name: shape});
    ``what`` names them in errors ("parameter", or "state" for a stateful layer's state)."""
    if not isinstance(params, dict) or set(params) != set(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        kind = "parameters" if what == "parameter" else f"{what} entries"
        raise ValueError(f"{layer}: expected {kind} {sorted(expected)}, got {got}")
    for key, shape in expected.items():
        p = params[key]
        if not isinstance(p, Tensor) or tuple(p.shape) != tuple(shape):
            found = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"{layer}: {what} '{key}' must have shape {tuple(shape)}, got {found}")
    if what == "parameter" and len(expected) > 1:  # one dtype and device for all (a bias too)
        first, *rest = expected
        for key in rest:
            a, b = params[first], params[key]
            if (a.dtype, a.device) != (b.dtype, b.device):
                raise TypeError(
                    f"{layer}: parameter '{key}' is {b.dtype} on {b.device}, but '{first}' is "
                    f"{a.dtype} on {a.device}; a layer's parameters share one dtype and device"
                )


class Output(NamedTuple):
    """What a pullback checks its cotangent against: the output's shape, dtype and device."""

    shape: tuple
    dtype: dtype
    device: device


def output_of(y: Tensor) -> Output:
    """The :class:`Output` of ``y``. Pullbacks keep this, not ``y``, unless they need ``y``
    anyway: a closure that holds the output keeps its memory alive until the backward pass."""
    return Output(tuple(y.shape), y.dtype, y.device)


def outputs_of(y):
    """What a pullback keeps of its output ``y`` to check its cotangent: an ``Output`` per
    tensor, in the same tuples (None for anything else)."""
    if isinstance(y, Tensor):
        return output_of(y)
    if isinstance(y, (tuple, list)):
        return tuple(outputs_of(part) for part in y)
    return None


def checked_cotangent(ct, out, name: str):
    """``ct`` checked against :func:`outputs_of` ``out``, before any child's pullback runs: one
    that fails then has released nothing, and can be called again."""
    if isinstance(out, tuple) and not isinstance(out, Output):
        return tuple(
            checked_cotangent(c, o, name)
            for c, o in zip(check_tuple(ct, len(out), name, "output gradients"), out)
        )
    return ct if out is None else check_cotangent(ct, out, name)


def check_tuple(xs, n: int, name: str, what: str = "inputs"):
    """``xs`` as a tuple of ``n`` inputs (-1: one or more), or of ``what``."""
    if not isinstance(xs, (tuple, list)) or (len(xs) != n if n >= 0 else not xs):
        got = f"{len(xs)} {what}" if isinstance(xs, (tuple, list)) else type(xs).__name__
        raise ValueError(
            f"{name}: expected a tuple of {n if n >= 0 else 'several'} {what}, got {got}"
        )
    return tuple(xs)


def check_cotangent(ct, out: "Tensor | Output", layer: str) -> Tensor:
    """The output cotangent must be a floating-point tensor of the output's shape (no silent
    broadcasting) and device; one of another float dtype is converted to the output's, as
    torch.autograd converts the gradients between nodes, so that the input gradient always
    has the input's dtype."""
    out = output_of(out) if isinstance(out, Tensor) else out
    if not isinstance(ct, Tensor) or tuple(ct.shape) != out.shape:
        got = tuple(ct.shape) if isinstance(ct, Tensor) else type(ct).__name__
        raise ValueError(
            f"{layer}: output gradient must have the output's shape {out.shape}, got {got}"
        )
    if not ct.is_floating_point():
        raise TypeError(
            f"{layer}: output gradient must be floating point, got {ct.dtype} (shape {out.shape})"
        )
    if ct.device != out.device:
        raise ValueError(
            f"{layer}: output gradient is on {ct.device} but the output is on {out.device} "
            f"(shape {out.shape})"
        )
    return ct if ct.dtype == out.dtype else ct.to(out.dtype)


# A float image whose mean is at most NOISY_MEAN and maximum at most NOISY_MAX is 0-1 with
# unclipped, zero-mean noise (its maximum may be far above 1: Poisson noise at peak 1 reached
# 9); a 0-255 image with both would be all but black (a dark image with bright points, a
# night sky, has a mean below 2 but not the maximum).
NOISY_MEAN, NOISY_MAX = 2.0, 16.0

# The seeds a run takes: a seed's training and validation data draw from the generator seeds
# 2 seed and 2 seed + 1 (modulo 2**64, as torch reads a negative seed), which no other seed
# in this range shares (seeds 2**63 apart would draw the same pairs).
SEEDS = range(-(2**62), 2**62)


def seed_error(seed: int) -> str | None:
    """Why ``seed`` is not an int of :data:`SEEDS`, or None."""
    if is_int(seed) and SEEDS.start <= seed < SEEDS.stop:  # (not "in": slow for a non-int)
        return None
    return f"seed must be an int from -2**62 to 2**62 - 1, got {seed} (the training and \
validation data draw from 2 seed and 2 seed + 1: seeds 2**63 apart would draw the same pairs)"


def pixel_scale(x: Tensor, noisy_max: float = NOISY_MAX) -> float:
    """The value of white in an image batch: 255 for integers; for floats 1 when the maximum
    is at most 1, or the mean at most NOISY_MEAN and the maximum at most ``noisy_max`` (0-1
    images with unclipped noise), else 255."""
    if not x.is_floating_point():
        return 255.0
    if not x.numel():
        raise ValueError(f"the images are empty: shape {tuple(x.shape)}; no scale to read")
    high = float(x.max())
    return 1.0 if high <= 1.0 or (high <= noisy_max and float(x.mean()) <= NOISY_MEAN) else 255.0


def generator_device(generator, layer: str):
    """The device of an ``init``'s generator (None: the default), refusing anything that is
    not a ``torch.Generator`` (a seed passed in its place failed on ``.device``)."""
    if generator is None:
        return None
    if not isinstance(generator, Generator):
        raise TypeError(
            f"{layer}: init's generator must be a torch.Generator or None, got "
            f"{type(generator).__name__} (a seed goes in torch.Generator().manual_seed(seed))"
        )
    return generator.device


def uniform(generator: Generator | None, shape: Shape, bound: float) -> Tensor:
    """A tensor of ``shape`` drawn from U(-bound, bound), on the generator's device."""
    device = generator_device(generator, "init")
    return empty(shape, device=device).uniform_(-bound, bound, generator=generator)


def kaiming_bounds(fan_in: int) -> tuple[float, float]:
    """PyTorch's default conv initialisation bounds (weight, bias), both ``1/sqrt(fan_in)``.

    The weight bound is computed the way ``kaiming_uniform_(a=sqrt(5))`` does, so the
    same seed draws the same weights as ``torch.nn.Conv2d``.
    """
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    weight_bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
    return weight_bound, 1 / math.sqrt(fan_in)
