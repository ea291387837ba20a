"""What the convolution-like layers (:mod:`.conv`, :mod:`.upsampling`, :mod:`.pool`) share:
output sizes, padding and scale arguments, weight shapes, their initialiser and the check of
their parameters and input."""

from torch import Tensor

from ..base import check_image, check_params, image_shape, is_int, is_number, pair
from ..init import check_init, init_weight_bias


def describe(kind: str, **options) -> str:
    return f"{kind}(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"


def scale_pair(value, layer: str) -> tuple[int, int]:
    """``scale_factor`` as a pair of ints >= 1: whole floats count (``2.0``, as
    ``torch.nn.Upsample`` takes it), fractions are refused by name."""

    def whole(v):  # a float as its int; anything else as it is, for pair to judge
        if not is_number(v) or is_int(v):
            return v
        if not float(v).is_integer():
            raise ValueError(
                f"{layer}: scale_factor must be whole numbers (nearest upsampling by a "
                f"fraction is not supported), got {value!r}"
            )
        return int(v)

    return pair(
        [whole(v) for v in value] if isinstance(value, (tuple, list)) else whole(value),
        "scale_factor",
        layer,
    )


def conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def transpose_out(size: int, k: int, s: int, p: int, d: int, op: int) -> int:
    """Output length of a transposed convolution: (size-1)s - 2p + d(k-1) + op + 1."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def weight_shape(in_channels, out_channels, k, transposed, groups=1):
    """[out, in / groups, kh, kw] for a convolution, [in, out / groups, kh, kw] for a
    transposed one (PyTorch's layouts)."""
    if transposed:
        return (in_channels, out_channels // groups) + k
    return (out_channels, in_channels // groups) + k


def weight_pattern(out_channels, k, transposed, groups=1):
    """:func:`weight_shape` for an unknown count C of input channels, as text: "(8, C/2, 3,
    3)" (an error message's, where the weight given is not 4-d)."""
    c = "C" if transposed or groups == 1 else f"C/{groups}"
    dims = (c, out_channels // groups) if transposed else (out_channels, c)
    return "(" + ", ".join(str(d) for d in dims + tuple(k)) + ")"


def make_init(name, out_channels, k, bias, out_size, transposed=False, init=None, groups=1):
    """``init`` of a convolution-like layer, weights drawn by ``init`` (see :mod:`n2nfunc.init`;
    PyTorch's fan-in is the weight's dim 1 times the kernel area); a grouped convolution's
    weight holds C / ``groups`` input channels, a grouped transposed one's out / ``groups``
    output channels."""
    check_init(init, name)

    def init_fn(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        if c % groups:
            raise ValueError(
                f"{name}: the {c} input channels of input shape {(n, c, h, w)} do not split "
                f"into {groups} groups of equal size"
            )
        ho, wo = output_sizes((n, c, h, w), out_size, name)
        shape = weight_shape(c, out_channels, k, transposed, groups)
        params = init_weight_bias(init, generator, shape, out_channels if bias else None, name)
        return (n, out_channels, ho, wo), params

    return init_fn


def checked_conv(params, x, name, out_channels, k, bias, out_size, transposed=False, groups=1):
    """Validate params and input of a convolution-like layer (``groups``: a grouped
    convolution, whose weight holds C / groups input channels, or a grouped transposed one,
    whose weight holds all C input channels and out / groups output channels).

    Returns ``(weight, (h, w), out_hw)``.
    """
    weight = params.get("weight") if isinstance(params, dict) else None
    ok = weight is not None and hasattr(weight, "dim") and weight.dim() == 4
    # the input channels the weight implies
    c = (weight.shape[0] if transposed else weight.shape[1] * groups) if ok else -1

    def expected(c):
        return {
            "weight": weight_shape(c, out_channels, k, transposed, groups),
            **({"bias": (out_channels,)} if bias else {}),
        }

    try:
        check_params(params, name, expected(c))
    except ValueError:
        own = ok and tuple(weight.shape) == expected(c)["weight"]
        if not own and isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] != c:
            if x.shape[1] % groups == 0:  # the shape this input needs
                check_params(params, name, expected(x.shape[1]))
        if not ok and isinstance(params, dict) and set(params) == set(expected(c)):  # C unknown
            found = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            pattern = weight_pattern(out_channels, k, transposed, groups)
            raise ValueError(
                f"{name}: parameter 'weight' must have shape {pattern}, C the input's channels; "
                f"got {found}"
            ) from None
        raise
    check_image(x, name, c, weight)
    if c % groups:
        raise ValueError(
            f"{name}: the {c} input channels of weight {tuple(weight.shape)} do not split into "
            f"{groups} groups of equal size"
        )
    return weight, tuple(x.shape[2:]), output_sizes(x.shape, out_size, name)


def output_sizes(shape, size_fn, name):
    """Spatial output sizes from an init shape, -1 staying -1; errors if one is < 1."""
    out = []
    for dim, size in zip("HW", shape[2:]):
        if size == -1:
            out.append(-1)
            continue
        o = size_fn(dim, size)
        if o < 1:
            why = (
                "the padding crops away more than the output has"
                if name.startswith("conv_transpose2d")
                else "the kernel is larger than the padded input"
            )
            raise ValueError(
                f"{name}: input shape {tuple(shape)} gives an empty output along {dim} ({o}); "
                + why
            )
        out.append(o)
    return out


def padding_pair(padding, k, s, d, name: str) -> tuple[int, int]:
    """``padding`` as a pair of ints; torch's strings too: ``"valid"`` is 0, ``"same"`` (stride
    1 only) pads ``d * (k - 1) / 2`` on each side, which must be whole (torch pads an odd total
    one more on the right and bottom; that asymmetric padding is refused here)."""
    if padding == "valid":
        return 0, 0
    if padding != "same":
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding must be 'same', 'valid' or ints, got {padding!r}")
        return pair(padding, "padding", name, minimum=0)
    if s != (1, 1):
        raise ValueError(f"{name}: padding='same' needs stride 1 (as in torch), got stride {s}")
    total = tuple(di * (ki - 1) for ki, di in zip(k, d))
    if any(t % 2 for t in total):
        raise ValueError(
            f"{name}: padding='same' with kernel_size {k} and dilation {d} would pad "
            f"{total} in all, one more on one side than the other, which this layer does not "
            "do; use an odd kernel size, or explicit padding"
        )
    return total[0] // 2, total[1] // 2
