"""Upsampling layers: ``nearest_upsample`` and ``upsample`` (nearest upsampling and a
convolution as one layer, computed on the low-resolution grid).

All computation is on channels-last views (see :mod:`n2nfunc.nhwc`), as in :mod:`.conv`.
"""

import functools
from typing import NamedTuple

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
    output_of,
    pair,
    positive_int,
    skips_input_grad,
    weight_and_input,
)
from ..init import Init
from ..nhwc import sum_of, to_nchw, to_nhwc
from .conv import conv2d, transposed_pullback
from .geometry import checked_conv, conv_out, describe, make_init, padding_pair, scale_pair


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
    name = describe("nearest_upsample", scale_factor=scale_factor)
    sy, sx = scale_pair(scale_factor, name)

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
    ``r = n_in / n_out`` and the product rounded to float32, as PyTorch's nearest mode for
    float32 images and its backward pass for any: for float64 images its forward pass
    computes them in float64, and picks another pixel at some sizes (outputs 47 and 94 of
    3 -> 141); here one rule serves both passes, so the pullback is the forward's adjoint."""
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
    name = describe("nearest_upsample", size=size)
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
# gradient from one im2col copy of x, kernels.TapWeightGrad) rather than polyphase_backward;
# below it, more and smaller calls cost more; a thin output always (docs/performance.md,
# 'The engines' constants').
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
    name = describe(
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
    sc = scale_pair(scale_factor, name)
    d = pair(dilation, "dilation", name)
    p = padding_pair(padding, k, (1, 1), d, name)
    two_layers = (nearest_upsample(sc), conv2d(out_channels, k, 1, p, d, bias))
    u = _Upsample(name, out_channels, k, sc, p, d, bias, two_layers)
    layer_init = make_init(name, out_channels, k, bias, u.out_size, init=init)

    def apply(params, x):  # nothing kept for a backward pass
        return _upsample_apply(u, params, x)

    def add_into(params, x, out):
        """``out += apply(params, x)`` in place, the output never formed on its own (``out``
        must not overlap ``x``)."""
        _check_out(u, params, x, out)
        return _added(u, params, x, out)

    def vjp(params, x, out=None):
        """The layer's vjp; with ``out``, ``out += y`` in place instead of forming ``y``, and
        ``(out, pullback)`` returned (:func:`add_into_vjp`)."""
        return _upsample_vjp(u, params, x, out)

    guarded = checks_unchanged(name, skips_input_grad(vjp), weight_and_input)
    return Layer(layer_init, adds_into(apply, add_into), add_into_vjp(guarded, vjp, name))


class _Upsample(NamedTuple):
    """An ``upsample`` layer's arguments, checked, and the two layers it equals (nearest
    upsampling and the convolution), which compute it where PyTorch's order or the device
    engine applies."""

    name: str
    out_channels: int
    kernel: tuple
    scale: tuple
    padding: tuple
    dilation: tuple
    bias: bool
    two_layers: tuple

    def out_size(self, dim: str, size: int) -> int:
        i = "HW".index(dim)
        return conv_out(size * self.scale[i], self.kernel[i], 1, self.padding[i], self.dilation[i])

    def checked(self, params, x):
        """``(weight, (h, w), out_hw)`` for valid params and input (:func:`checked_conv`)."""
        return checked_conv(
            params, x, self.name, self.out_channels, self.kernel, self.bias, self.out_size
        )

    def as_two_layers(self, x) -> bool:
        """Whether ``x`` is computed as the two layers: in PyTorch's order, or on the device
        engine."""
        if not (isinstance(x, Tensor) and x.dim() == 4):
            return False
        return device_conv.applies(x) or torch_order.applies(to_nhwc(x), self.kernel, self.scale)

    def transposed(self) -> tuple[tuple, tuple]:
        """The kernel size and padding of the transposed convolution (stride ``scale``) of
        the combined kernel (:func:`n2nfunc.kernels.nearest_conv_kernel`) that equals this
        layer: ``d (k - 1) + s`` and ``d (k - 1) - p``."""
        k, s, p, d = self.kernel, self.scale, self.padding, self.dilation
        return (
            tuple(dd * (kk - 1) + ss for kk, ss, dd in zip(k, s, d)),
            tuple(dd * (kk - 1) - pp for kk, pp, dd in zip(k, p, d)),
        )


def _phase_plans(u: _Upsample, params, x):
    """``(wk, w_eff, py, px, out_hw)``: the kernel as [kh, kw, in, out], combined into the
    phases' kernel ``w_eff`` by the phase plans of the two spatial dims."""
    weight, (h, w), out_hw = u.checked(params, x)
    (k, s, p, d) = (u.kernel, u.scale, u.padding, u.dilation)
    py = K.phase_plan("nearest", h, out_hw[0], k[0], s[0], p[0], d[0])
    px = K.phase_plan("nearest", w, out_hw[1], k[1], s[1], p[1], d[1])
    wk = weight.permute(2, 3, 1, 0)
    return wk, K.combine(wk, py, px), py, px, out_hw


def _two_layers_vjp(u: _Upsample, params, x):
    """Nearest upsampling, then the convolution (each as PyTorch computes it on the CPU)."""
    u.checked(params, x)
    up, conv = u.two_layers
    xu, up_pullback = up.vjp({}, x)
    y, conv_pullback = conv.vjp(params, xu)
    y_out = output_of(y)

    def pullback(ct, input_grad=True):
        grads, dxu = conv_pullback(check_cotangent(ct, y_out, u.name), input_grad)
        return grads, up_pullback(dxu)[1] if input_grad else None

    return y, pullback


def _upsample_apply(u: _Upsample, params, x):
    """The forward pass alone: the polyphase engine, nothing kept."""
    if u.as_two_layers(x):
        return _two_layers_vjp(u, params, x)[0]
    _, w_eff, py, px, out_hw = _phase_plans(u, params, x)
    y, _ = K.polyphase_forward(
        to_nhwc(x), w_eff, params.get("bias"), py, px, out_hw, keep_cols=False
    )
    return to_nchw(y)


def _added(u: _Upsample, params, x, out):
    """``out += apply(params, x)`` in place, with ``out`` checked already."""
    if u.as_two_layers(x):
        return out.add_(_two_layers_vjp(u, params, x)[0])
    _, w_eff, py, px, out_hw = _phase_plans(u, params, x)
    b = params.get("bias")
    K.polyphase_forward(
        to_nhwc(x), w_eff, b, py, px, out_hw, keep_cols=False, out=to_nhwc(out), add=True
    )
    return out


def _check_out(u: _Upsample, params, x, out) -> None:
    """``out`` must be what ``apply(params, x)`` returns, in shape, dtype and device."""
    out_hw = u.checked(params, x)[2]
    shape = (x.shape[0], u.out_channels) + tuple(out_hw)
    if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"{u.name}: cannot add an output of shape {shape} ({x.dtype}, {x.device}) to "
            f"one of {tuple(out.shape)} ({out.dtype}, {out.device})"
        )


def _upsample_vjp(u: _Upsample, params, x, out=None):
    """The vjp (with ``out``: ``out += y``, and ``(out, pullback)`` returned). The backward
    pass is that of the equal transposed convolution -- a strided convolution of ``g`` --
    in lower precisions (``dx`` one float32-accumulating matmul, where polyphase_backward's
    col2im sums rounded bfloat16 products; the weight gradient from box sums of ``g``,
    :func:`~n2nfunc.kernels.nearest_conv_weight_grad`), and in float32 / float64 for
    a thin output or from STRIDED_BACKWARD_PIXELS input pixels, where its implicit-GEMM
    engine beats polyphase_backward's frame and col2im (see the constant); else
    polyphase_backward."""
    if out is not None:
        _check_out(u, params, x, out)
    if u.as_two_layers(x):
        y, pullback = _two_layers_vjp(u, params, x)
        return (y if out is None else out.add_(y)), pullback
    u.checked(params, x)  # before x's shape is read
    strided = (
        x.element_size() < 4
        or u.out_channels < K.direct.THIN
        or x.shape[0] * x.shape[2] * x.shape[3] >= STRIDED_BACKWARD_PIXELS
    )
    if strided and min(u.transposed()[1]) >= 0:
        return _strided_vjp(u, params, x, out)
    return _polyphase_vjp(u, params, x, out)


def _polyphase_vjp(u: _Upsample, params, x, out=None):
    """The vjp by the polyphase engine, both ways: its backward pass forms the im2col of
    ``x`` again (not kept) for the kernel gradient, and col2im sums for ``dx``."""
    wk, w_eff, py, px, out_hw = _phase_plans(u, params, x)
    xh, b, add = to_nhwc(x), params.get("bias"), out is not None
    y = K.polyphase_forward(
        xh,
        w_eff,
        b,
        py,
        px,
        out_hw,
        keep_cols=False,
        out=None if out is None else to_nhwc(out),
        add=add,
    )[0]
    y = out if add else to_nchw(y)
    y_out = output_of(y)

    low = xh.element_size() < 4

    def pullback(ct, input_grad=True):
        g = to_nhwc(check_cotangent(ct, y_out, u.name))
        if low:  # dx's products in float32, on the kernel combined there too, exact sums of
            # the 16-bit weights, not their rounding (as autocast's sums); dW by box sums
            w_dx = K.combine(wk.float(), py, px) if input_grad else None
            dx = K.polyphase_backward(g, None, w_dx, py, px)[1] if input_grad else None
            grads = {"weight": _box_weight_grad(u, g, xh)}
        else:
            cols = K.polyphase_cols(xh, py, px)
            d_eff, dx = K.polyphase_backward(g, cols, w_eff, py, px, input_grad)
            d_wk = K.uncombine(d_eff, py, px, wk.shape)
            grads = {"weight": d_wk.permute(3, 2, 0, 1).contiguous()}
        if u.bias:
            grads["bias"] = K.channel_sums(g)
        return grads, to_nchw(dx) if input_grad else None

    return y, pullback


def _strided_vjp(u: _Upsample, params, x, out=None):
    """The vjp whose backward pass is that of the equal transposed convolution of the
    combined kernel (:func:`~n2nfunc.layers.conv.transposed_pullback`), the kernel gradient
    mapped back to the layer's weight."""
    weight = params["weight"]
    y = _upsample_apply(u, params, x) if out is None else _added(u, params, x, out)
    kc = K.nearest_conv_kernel(weight, u.scale, u.dilation)

    def to_weight(d_kc):
        return K.nearest_conv_kernel_grad(d_kc, u.scale, u.dilation, tuple(weight.shape))

    k2, p2 = u.transposed()
    xh = to_nhwc(x)
    pullback = transposed_pullback(
        u.name,
        output_of(y),
        xh,
        kc,
        k2,
        u.scale,
        p2,
        (1, 1),
        u.bias,
        to_weight,
        low_weight_grad=lambda g: _box_weight_grad(u, g, xh),
    )
    return y, pullback


def _box_weight_grad(u: _Upsample, g, xh):
    """The weight gradient of 16-bit dtypes, from box sums of ``g`` on the low-resolution
    grid (:func:`~n2nfunc.kernels.nearest_conv_weight_grad`)."""
    return K.nearest_conv_weight_grad(g, xh, u.kernel, u.scale, u.padding, u.dilation)
