"""Convolution layers: ``conv2d``, ``conv_transpose2d``, ``nearest_upsample``, ``upsample``.

Parameters use PyTorch's layout and initialisation: a convolution's weight is
[out, in, kh, kw], a transposed convolution's [in, out, kh, kw], a bias [out]; both are
drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so a generator seeded like PyTorch's draws
the same numbers as ``torch.nn.Conv2d`` / ``ConvTranspose2d``. ``init=`` picks another
initialiser (``"he_normal"``, ...; see :mod:`n2nfunc.init`).

All computation is on channels-last views (see :mod:`n2nfunc.nhwc`): on the CPU in
:mod:`n2nfunc.kernels`, except for one small float32 image, which :mod:`n2nfunc.torch_order`
computes as PyTorch does; off the CPU (a GPU) in :mod:`n2nfunc.device_conv`, whose engine
launches few kernels.
"""

import functools

from torch import Tensor, arange

from .. import device_conv, torch_order
from .. import kernels as K
from ..base import (
    IntPair,
    Layer,
    ScalePair,
    add_into_vjp,
    adds_into,
    apply_via_vjp,
    check_cotangent,
    check_image,
    check_params,
    check_tensor,
    checks_unchanged,
    flag,
    image_shape,
    is_int,
    is_number,
    output_of,
    pair,
    positive_int,
    skips_input_grad,
    weight_and_input,
)
from ..init import Init, check_init, init_weight_bias
from ..nhwc import sum_of, to_nchw, to_nhwc


def _describe(kind: str, **options) -> str:
    return f"{kind}(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"


def _scale_pair(value, layer: str) -> tuple[int, int]:
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


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a convolution: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _transpose_out(size: int, k: int, s: int, p: int, d: int, op: int) -> int:
    """Output length of a transposed convolution: (size-1)s - 2p + d(k-1) + op + 1."""
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


def _weight_shape(in_channels, out_channels, k, transposed):
    """[out, in, kh, kw] for a convolution, [in, out, kh, kw] for a transposed one."""
    return ((in_channels, out_channels) if transposed else (out_channels, in_channels)) + k


def _make_init(name, out_channels, k, bias, out_size, transposed=False, init=None):
    """``init`` of a convolution-like layer, weights drawn by ``init`` (see :mod:`n2nfunc.init`;
    PyTorch's fan-in is the weight's dim 1 times the kernel area)."""
    check_init(init, name)

    def init_fn(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        ho, wo = _sizes((n, c, h, w), out_size, name)
        shape = _weight_shape(c, out_channels, k, transposed)
        params = init_weight_bias(init, generator, shape, out_channels if bias else None, name)
        return (n, out_channels, ho, wo), params

    return init_fn


def _checked(params, x, name, out_channels, k, bias, out_size, transposed=False):
    """Validate params and input of a convolution-like layer.

    Returns ``(weight, (h, w), out_hw)``.
    """
    weight = params.get("weight") if isinstance(params, dict) else None
    ok = weight is not None and hasattr(weight, "dim") and weight.dim() == 4
    c = weight.shape[0 if transposed else 1] if ok else -1

    def expected(c):
        return {
            "weight": _weight_shape(c, out_channels, k, transposed),
            **({"bias": (out_channels,)} if bias else {}),
        }

    try:
        check_params(params, name, expected(c))
    except ValueError:
        own = ok and tuple(weight.shape) == expected(c)["weight"]
        if not own and isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] != c:
            check_params(params, name, expected(x.shape[1]))  # the shape this input needs
        raise
    check_image(x, name, c, weight)
    return weight, tuple(x.shape[2:]), _sizes(x.shape, out_size, name)


def _sizes(shape, size_fn, name):
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


def _padding(padding, k, s, d, name: str) -> tuple[int, int]:
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


def conv2d(
    out_channels: int,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    bias: bool = True,
    init: Init = None,
) -> Layer:
    """2-d cross-correlation, as ``torch.nn.functional.conv2d``:

    ``y[n, o, i, j] = bias[o] + sum_{c, u, v} w[o, c, u, v] x[n, c, s*i - p + d*u, s*j - p + d*v]``
    (``x`` is 0 outside the image).

    Gradients, for the output gradient ``g``:

    * ``dw[o, c, u, v] = sum_{n, i, j} g[n, o, i, j] x[n, c, s*i - p + d*u, s*j - p + d*v]``
      (one matmul, ``g^T @ im2col(x)``), and ``dbias[o] = sum_{n, i, j} g[n, o, i, j]``;
    * ``dx[n, c, r, t] = sum w[o, c, u, v] g[n, o, i, j]`` over the ``(o, u, v, i, j)`` with
      ``s*i - p + d*u = r`` and ``s*j - p + d*v = t``: the transposed convolution of ``g``
      with the same kernel (the polyphase engine; for stride 1, the stride-1 convolution of
      ``g`` with the kernel turned by 180 degrees and its in/out axes swapped,
      ``w.flip(2, 3).transpose(0, 1)``: see :func:`n2nfunc.kernels.conv_input_grad`).
    """
    name = _describe(
        "conv2d",
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    out_channels = positive_int(out_channels, "out_channels", name)
    bias = flag(bias, "bias", name)
    k = pair(kernel_size, "kernel_size", name)
    s = pair(stride, "stride", name)
    d = pair(dilation, "dilation", name)
    p = _padding(padding, k, s, d, name)

    def out_size(dim, size):
        i = "HW".index(dim)
        return _conv_out(size, k[i], s[i], p[i], d[i])

    layer_init = _make_init(name, out_channels, k, bias, out_size, init=init)

    def vjp(params, x):
        weight, (h, w), out_hw = _checked(params, x, name, out_channels, k, bias, out_size)
        if device_conv.applies(x):
            return _device_conv2d_vjp(name, x, weight, params.get("bias"), (k, s, p, d), out_hw)
        xh = to_nhwc(x)
        y, weight_grad = K.conv_and_weight_grad(xh, weight, params.get("bias"), k, s, p, d, out_hw)
        y = to_nchw(y)
        y_out = output_of(y)

        def pullback(ct, input_grad=True):
            g = to_nhwc(check_cotangent(ct, y_out, name))
            dw, dx = K.conv_grads(g, weight, weight_grad, s, p, d, (h, w), input_grad)
            grads = {"weight": dw}
            if bias:
                grads["bias"] = _bias_grad(g, isinstance(weight_grad, torch_order.Grads))
            return grads, None if dx is None else to_nchw(dx)

        return y, pullback

    def apply(params, x):
        weight, _, out_hw = _checked(params, x, name, out_channels, k, bias, out_size)
        if device_conv.applies(x):
            return to_nchw(
                device_conv.conv(to_nhwc(x), weight, params.get("bias"), k, s, p, d, out_hw)
            )
        return to_nchw(K.conv(to_nhwc(x), weight, params.get("bias"), k, s, p, d, out_hw))

    return Layer(layer_init, apply, checks_unchanged(name, skips_input_grad(vjp), weight_and_input))


def _device_conv2d_vjp(name, x, weight, bias, geometry, out_hw):
    """The vjp of a convolution on :mod:`n2nfunc.device_conv`'s engine."""
    xh = to_nhwc(x)
    y = to_nchw(device_conv.conv(xh, weight, bias, *geometry, out_hw))
    y_out = output_of(y)

    def pullback(ct, input_grad=True):
        g = to_nhwc(check_cotangent(ct, y_out, name))
        grads = {"weight": device_conv.conv_weight_grad(g, xh, *geometry)}
        if bias is not None:
            grads["bias"] = device_conv.bias_grad(g)
        if not input_grad:
            return grads, None
        dx = device_conv.conv_input_grad(g, weight, tuple(xh.shape[1:3]), *geometry)
        return grads, to_nchw(dx)

    return y, pullback


def conv_transpose2d(
    out_channels: int,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    dilation: IntPair = 1,
    bias: bool = True,
    init: Init = None,
) -> Layer:
    """2-d transposed convolution, as ``torch.nn.functional.conv_transpose2d``:

    ``y[n, o, s*i - p + d*u, s*j - p + d*v] += w[c, o, u, v] x[n, c, i, j]`` (plus
    ``bias[o]``), output size ``(H-1)s - 2p + d(k-1) + output_padding + 1``.

    The forward pass is the polyphase engine (PyTorch's order where :mod:`n2nfunc.torch_order`
    applies; :mod:`n2nfunc.device_conv` on a GPU). Gradients, for the output gradient ``g``:
    ``dx[n, c, i, j] = sum_{o, u, v} w[c, o, u, v] g[n, o, s*i - p + d*u, s*j - p + d*v]``,
    the plain convolution of ``g`` with the same weight;
    ``dw[c, o, u, v] = sum_{n, i, j} x[n, c, i, j] g[n, o, s*i - p + d*u, s*j - p + d*v]``
    (``x^T @ im2col(g)``, reusing that convolution's im2col); ``dbias[o]`` sums ``g[:, o]``.
    """
    name = _describe(
        "conv_transpose2d",
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )
    out_channels = positive_int(out_channels, "out_channels", name)
    bias = flag(bias, "bias", name)
    k = pair(kernel_size, "kernel_size", name)
    s = pair(stride, "stride", name)
    p = pair(padding, "padding", name, minimum=0)
    op = pair(output_padding, "output_padding", name, minimum=0)
    d = pair(dilation, "dilation", name)
    if any(o >= max(si, di) for o, si, di in zip(op, s, d)):
        raise ValueError(f"{name}: output_padding must be smaller than stride or dilation")

    def out_size(dim, size):
        i = "HW".index(dim)
        return _transpose_out(size, k[i], s[i], p[i], d[i], op[i])

    layer_init = _make_init(name, out_channels, k, bias, out_size, transposed=True, init=init)

    def vjp(params, x):
        weight, (h, w), out_hw = _checked(
            params, x, name, out_channels, k, bias, out_size, transposed=True
        )
        if device_conv.applies(x):
            return _device_transposed_vjp(name, x, weight, params.get("bias"), out_hw, (k, s, p, d))
        xh = to_nhwc(x)
        like_torch = torch_order.applies(xh, k) and all(o < si for o, si in zip(op, s))
        if like_torch:
            y = torch_order.conv_transpose(xh, weight, params.get("bias"), k, s, p, d, out_hw)
        else:
            py = K.phase_plan("transpose", h, out_hw[0], k[0], s[0], p[0], d[0])
            px = K.phase_plan("transpose", w, out_hw[1], k[1], s[1], p[1], d[1])
            w_eff = K.combine(weight.permute(2, 3, 0, 1), py, px)
            y, _ = K.polyphase_forward(xh, w_eff, params.get("bias"), py, px, out_hw, False)
        y = to_nchw(y)
        pullback = _transposed_pullback(
            name, output_of(y), xh, weight, k, s, p, d, bias, like_torch=like_torch
        )
        return y, pullback

    return Layer(
        layer_init,
        apply_via_vjp(vjp),
        checks_unchanged(name, skips_input_grad(vjp), weight_and_input),
    )


def _device_transposed_vjp(name, x, weight, bias, out_hw, geometry):
    """The vjp of a transposed convolution on :mod:`n2nfunc.device_conv`'s engine."""
    xh = to_nhwc(x)
    y = to_nchw(device_conv.conv_transpose(xh, weight, bias, out_hw, geometry))
    y_out = output_of(y)

    def pullback(ct, input_grad=True):
        g = to_nhwc(check_cotangent(ct, y_out, name))
        dw, dx = device_conv.conv_transpose_grads(g, xh, weight, geometry, input_grad)
        grads = {"weight": dw}
        if bias is not None:
            grads["bias"] = device_conv.bias_grad(g)
        return grads, None if dx is None else to_nchw(dx)

    return y, pullback


def _transposed_pullback(
    name, y_out, xh, kernel, k, s, p, d, bias, kernel_to_weight=None, like_torch=False
):
    """The pullback of a transposed convolution of ``xh`` (NHWC) with ``kernel`` [in, out,
    kh, kw]: ``dx`` is the plain convolution of ``g`` with the same kernel, whose im2col also
    gives the kernel gradient ``x^T @ im2col(g)``, mapped by ``kernel_to_weight`` to the
    layer's own weight when the kernel is derived from it; in PyTorch's order
    (:mod:`n2nfunc.torch_order`) when the forward pass was."""

    def pullback(ct, input_grad=True):
        g = to_nhwc(check_cotangent(ct, y_out, name))
        if input_grad or like_torch:
            dx, d_kernel = K.conv_and_weight_grad(
                g, kernel, None, k, s, p, d, xh.shape[1:3], like_torch, grad_for=xh
            )
        else:  # the kernel gradient alone, without the convolution of g
            dx, d_kernel = None, K.conv_weight_grad(g, xh, k, s, p, d, xh.shape[1:3])
        grads = {"weight": d_kernel if kernel_to_weight is None else kernel_to_weight(d_kernel)}
        if bias:
            grads["bias"] = _bias_grad(g, like_torch)
        return grads, to_nchw(dx) if input_grad else None

    return pullback


def _bias_grad(g, like_torch: bool):
    """The bias gradient, the channel sums of the NHWC output gradient ``g``."""
    return torch_order.bias_grad(g) if like_torch else K.channel_sums(g)


def nearest_upsample(scale_factor: ScalePair | None = None, size: IntPair | None = None) -> Layer:
    """Nearest-neighbour upsampling: ``y[n, c, i, j] = x[n, c, i // s, j // s]``
    (``scale_factor`` s, a whole number or a pair of them; 2 when neither argument is given).

    ``size=(H_out, W_out)`` instead fixes the output size, as in ``torch.nn.Upsample``:
    ``y[n, c, i, j] = x[n, c, min(floor(i * r), H - 1), min(floor(j * q), W - 1)]`` with
    the ratios ``r = H / H_out`` and ``q = W / W_out`` in float32, as PyTorch computes them.

    The gradient sums the output gradient over the pixels that copied each input pixel:
    ``dx[n, c, i, j] = sum_{a, b < s} g[n, c, s*i + a, s*j + b]``.
    """
    if scale_factor is not None and size is not None:
        raise ValueError(
            f"nearest_upsample: give size or scale_factor, not both "
            f"(got size={size!r}, scale_factor={scale_factor!r})"
        )
    if size is not None:
        return _nearest_resize(size)
    scale_factor = 2 if scale_factor is None else scale_factor
    name = _describe("nearest_upsample", scale_factor=scale_factor)
    sy, sx = _scale_pair(scale_factor, name)

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        return (n, c, h * sy if h > 0 else -1, w * sx if w > 0 else -1), {}

    def vjp(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        check_image(x, name, -1, x)
        return _nearest_vjp(x, sy, sx, name)

    return Layer(init, apply_via_vjp(vjp), vjp)


def _nearest_vjp(x: Tensor, sy: int, sx: int, name: str):
    """``x`` upsampled by whole factors ``(sy, sx)``, and its pullback."""
    n, c, h, w = x.shape
    xh = to_nhwc(x)
    y = xh[:, :, None, :, None, :].expand(n, h, sy, w, sx, c).reshape(n, h * sy, w * sx, c)
    y = to_nchw(y if sy * sx > 1 else y.clone())  # (factor 1: a new tensor, as torch's)
    y_out = output_of(y)
    one_sum = device_conv.applies(x)  # one reduction (one launch) instead of s^2 - 1 adds

    def pullback(ct):
        g = to_nhwc(check_cotangent(ct, y_out, name))
        if one_sum:
            return {}, to_nchw(g.reshape(n, h, sy, w, sx, c).sum((2, 4)))
        return {}, to_nchw(sum_of([g[:, a::sy, b::sx] for a in range(sy) for b in range(sx)]))

    return y, pullback


@functools.lru_cache(maxsize=256)
def _nearest_sources(n_in: int, n_out: int) -> tuple[int, ...]:
    """The input index each of ``n_out`` outputs copies: ``min(floor(i * r), n_in - 1)``,
    ``r = n_in / n_out`` and the product rounded to float32, as PyTorch's nearest mode."""
    ratio = arange(n_in, n_in + 1).float() / n_out
    return tuple((arange(n_out).float() * ratio).floor().long().clamp(max=n_in - 1).tolist())


def _whole_factor(sources: tuple[int, ...], n_in: int) -> bool:
    """Whether ``sources`` are those of upsampling ``n_in`` pixels by a whole factor."""
    factor = len(sources) // n_in
    return len(sources) == factor * n_in and sources == tuple(
        i // factor for i in range(len(sources))
    )


def _nearest_resize(size) -> Layer:
    """``nearest_upsample(size=...)``: whole factors by the fast path, other sizes by gathers."""
    name = _describe("nearest_upsample", size=size)
    ho, wo = pair(size, "size", name)

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        return (n, c, ho, wo), {}

    def vjp(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        check_image(x, name, -1, x)
        n, c, h, w = x.shape
        rows, cols = _nearest_sources(h, ho), _nearest_sources(w, wo)
        if _whole_factor(rows, h) and _whole_factor(cols, w):
            return _nearest_vjp(x, ho // h, wo // w, name)
        row_index = arange(0).new_tensor(rows).to(x.device)  # int64, as index_select takes
        col_index = arange(0).new_tensor(cols).to(x.device)
        y = to_nchw(to_nhwc(x).index_select(1, row_index).index_select(2, col_index))
        y_out = output_of(y)

        def pullback(ct):
            g = to_nhwc(check_cotangent(ct, y_out, name))
            by_cols = g.new_zeros(n, ho, w, c).index_add_(2, col_index, g)
            return {}, to_nchw(g.new_zeros(n, h, w, c).index_add_(1, row_index, by_cols))

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


# From this many input pixels (N H W) on, upsample's float32 backward pass runs as the strided
# convolution of g (by the implicit-GEMM engine where g has enough channels, its weight
# gradient from one im2col copy of x, kernels.TapWeightGrad) rather than polyphase_backward.
# x2 + 3x3, forward + backward, ms (2-core Xeon): 100 x 64 x 8 x 8 -> 32 channels 9.6 -> 9.0;
# 8 x 64 x 32 x 32 -> 64 18.6 -> 17.8; but 8 x 64 x 8 x 8 -> 64 1.75 -> 2.11 and 8 x 64 x 16 x
# 16 -> 64 4.40 -> 4.74 (more, smaller calls); a thin output always (100 x 32 x 16 x 16 -> 3:
# 6.0 -> 2.8; reference network step 1.09x / 1.22x at batch 32 / 100).
STRIDED_BACKWARD_PIXELS = 4096


def upsample(
    out_channels: int,
    kernel_size: IntPair,
    scale_factor: ScalePair = 2,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    bias: bool = True,
    init: Init = None,
) -> Layer:
    """Nearest upsampling by ``scale_factor`` followed by a stride-1 convolution, as one layer.

    Equal to ``serial(nearest_upsample(s), conv2d(out_channels, kernel_size, padding=padding,
    dilation=dilation))`` with the conv's ``weight`` / ``bias`` directly in this layer's
    params. Computed on the
    low-resolution input: each of the s*s output phases is a small convolution of ``x``
    (the sub-pixel identity), e.g. x2 + 3x3 becomes four 2x2 convolutions, 2.25x fewer
    multiply-adds and an im2col about 9x smaller (4C instead of 36C numbers per input pixel).
    """
    name = _describe(
        "upsample",
        out_channels=out_channels,
        kernel_size=kernel_size,
        scale_factor=scale_factor,
        padding=padding,
        dilation=dilation,
    )
    out_channels = positive_int(out_channels, "out_channels", name)
    bias = flag(bias, "bias", name)
    k = pair(kernel_size, "kernel_size", name)
    sc = _scale_pair(scale_factor, name)
    d = pair(dilation, "dilation", name)
    p = _padding(padding, k, (1, 1), d, name)

    def out_size(dim, size):
        i = "HW".index(dim)
        return _conv_out(size * sc[i], k[i], 1, p[i], d[i])

    layer_init = _make_init(name, out_channels, k, bias, out_size, init=init)

    def plans(params, x):
        weight, (h, w), out_hw = _checked(params, x, name, out_channels, k, bias, out_size)
        py = K.phase_plan("nearest", h, out_hw[0], k[0], sc[0], p[0], d[0])
        px = K.phase_plan("nearest", w, out_hw[1], k[1], sc[1], p[1], d[1])
        wk = weight.permute(2, 3, 1, 0)
        return wk, K.combine(wk, py, px), py, px, out_hw

    def as_two_layers(x):  # in PyTorch's order, or on the device engine
        if not (isinstance(x, Tensor) and x.dim() == 4):
            return False
        return device_conv.applies(x) or torch_order.applies(to_nhwc(x), k, sc)

    as_torch = (nearest_upsample(sc), conv2d(out_channels, k, 1, p, d, bias))

    def torch_vjp(params, x):
        """Nearest upsampling, then the convolution (each as PyTorch computes it on the CPU)."""
        _checked(params, x, name, out_channels, k, bias, out_size)
        up, conv = as_torch
        xu, up_pullback = up.vjp({}, x)
        y, conv_pullback = conv.vjp(params, xu)
        y_out = output_of(y)

        def pullback(ct, input_grad=True):
            grads, dxu = conv_pullback(check_cotangent(ct, y_out, name), input_grad)
            return grads, up_pullback(dxu)[1] if input_grad else None

        return y, pullback

    def apply(params, x):  # nothing kept for a backward pass
        if as_two_layers(x):
            return torch_vjp(params, x)[0]
        _, w_eff, py, px, out_hw = plans(params, x)
        y, _ = K.polyphase_forward(
            to_nhwc(x), w_eff, params.get("bias"), py, px, out_hw, keep_cols=False
        )
        return to_nchw(y)

    def add_into(params, x, out):
        """``out += apply(params, x)`` in place, the output never formed on its own (``out``
        must not overlap ``x``)."""
        check_out(params, x, out)
        return added(params, x, out)

    def added(params, x, out):  # add_into, with out checked already
        if as_two_layers(x):
            return out.add_(torch_vjp(params, x)[0])
        _, w_eff, py, px, out_hw = plans(params, x)
        b = params.get("bias")
        K.polyphase_forward(to_nhwc(x), w_eff, b, py, px, out_hw, False, to_nhwc(out), True)
        return out

    def check_out(params, x, out):
        """``out`` must be what ``apply(params, x)`` returns, in shape, dtype and device."""
        out_hw = _checked(params, x, name, out_channels, k, bias, out_size)[2]
        shape = (x.shape[0], out_channels) + tuple(out_hw)
        if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"{name}: cannot add an output of shape {shape} ({x.dtype}, {x.device}) to "
                f"one of {tuple(out.shape)} ({out.dtype}, {out.device})"
            )

    # A transposed convolution of the combined kernel, as whose adjoint the backward pass is
    # a strided convolution of g: used in lower precisions (one float32-accumulating matmul
    # per gradient, where polyphase_backward's col2im sums rounded bfloat16 products), and in
    # float32 / float64 for a thin output or from STRIDED_BACKWARD_PIXELS input pixels, where
    # its implicit-GEMM engine beats polyphase_backward's frame and col2im (see the constant).
    k2 = tuple(dd * (kk - 1) + ss for kk, ss, dd in zip(k, sc, d))
    p2 = tuple(dd * (kk - 1) - pp for kk, pp, dd in zip(k, p, d))

    def vjp(params, x, out=None):
        """The layer's vjp; with ``out``, ``out += y`` in place instead of forming ``y``, and
        ``(out, pullback)`` returned (:func:`add_into_vjp`)."""
        if out is not None:
            check_out(params, x, out)
        if as_two_layers(x):
            y, pullback = torch_vjp(params, x)
            return (y if out is None else out.add_(y)), pullback
        _checked(params, x, name, out_channels, k, bias, out_size)  # before x's shape is read
        strided = (
            x.element_size() < 4
            or out_channels < K.direct.THIN
            or x.shape[0] * x.shape[2] * x.shape[3] >= STRIDED_BACKWARD_PIXELS
        )
        if strided and min(p2) >= 0:
            return transposed_vjp(params, x, out)
        wk, w_eff, py, px, out_hw = plans(params, x)
        xh, b, add = to_nhwc(x), params.get("bias"), out is not None
        y = K.polyphase_forward(
            xh, w_eff, b, py, px, out_hw, False, None if out is None else to_nhwc(out), add
        )[0]
        y = out if add else to_nchw(y)
        y_out = output_of(y)

        def pullback(ct, input_grad=True):  # the im2col of x is formed again, not kept
            g = to_nhwc(check_cotangent(ct, y_out, name))
            cols = K.polyphase_cols(xh, py, px)
            # in 16-bit dtypes dx's products run in float32: on the kernel combined there too,
            # exact sums of the 16-bit weights, not their rounding (as autocast's sums)
            w_dx = w_eff if xh.element_size() >= 4 else K.combine(wk.float(), py, px)
            d_eff, dx = K.polyphase_backward(g, cols, w_dx, py, px, input_grad)
            grads = {
                "weight": K.uncombine(d_eff, py, px, wk.shape).permute(3, 2, 0, 1).contiguous()
            }
            if bias:
                grads["bias"] = K.channel_sums(g)
            return grads, to_nchw(dx) if input_grad else None

        return y, pullback

    def transposed_vjp(params, x, out=None):
        weight = params["weight"]
        y = apply(params, x) if out is None else added(params, x, out)  # (vjp checked out)
        kc = K.nearest_conv_kernel(weight, sc, d)

        def to_weight(d_kc):
            return K.nearest_conv_kernel_grad(d_kc, sc, d, tuple(weight.shape))

        pullback = _transposed_pullback(
            name, output_of(y), to_nhwc(x), kc, k2, sc, p2, (1, 1), bias, kernel_to_weight=to_weight
        )
        return y, pullback

    guarded = checks_unchanged(name, skips_input_grad(vjp), weight_and_input)
    return Layer(layer_init, adds_into(apply, add_into), add_into_vjp(guarded, vjp, name))
