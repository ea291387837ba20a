"""Convolution layers: ``conv2d`` and ``conv_transpose2d`` (the upsampling layers are in
:mod:`.upsampling`).

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

from .. import device_conv, torch_order
from .. import kernels as K
from ..base import (
    IntPair,
    Layer,
    apply_via_vjp,
    check_cotangent,
    checks_unchanged,
    flag,
    output_of,
    pair,
    positive_int,
    skips_input_grad,
    weight_and_input,
)
from ..init import Init
from ..kernels.grouped import depthwise_conv, depthwise_conv_grads
from ..nhwc import to_nchw, to_nhwc
from .geometry import checked_conv, conv_out, describe, make_init, padding_pair, transpose_out


def conv2d(
    out_channels: int,
    kernel_size: IntPair,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    bias: bool = True,
    init: Init = None,
    groups: int = 1,
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

    ``groups`` > 1 splits the channels into groups convolved apart, as torch's ``groups``
    (weight [out, in / groups, kh, kw]; ``groups`` = in_channels is a depthwise
    convolution, computed tap by tap by :mod:`n2nfunc.kernels.grouped`; wider groups as the
    ungrouped convolution with a block-diagonal weight, where an infinity or NaN in one
    group's input or output gradient turns the other groups' outputs or input gradients into
    NaN, 0 x inf, as torch's grouped convolution does not).
    """
    name = describe(
        "conv2d",
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        **_groups_shown(groups),
    )
    out_channels, groups = _channels_and_groups(out_channels, groups, name)
    bias = flag(bias, "bias", name)
    k = pair(kernel_size, "kernel_size", name)
    s = pair(stride, "stride", name)
    d = pair(dilation, "dilation", name)
    p = padding_pair(padding, k, s, d, name)

    def out_size(dim, size):
        i = "HW".index(dim)
        return conv_out(size, k[i], s[i], p[i], d[i])

    layer_init = make_init(name, out_channels, k, bias, out_size, init=init, groups=groups)
    if groups > 1:
        return _grouped_conv2d(name, layer_init, out_channels, bias, groups, (k, s, p, d), out_size)

    def vjp(params, x):
        weight, (h, w), out_hw = checked_conv(params, x, name, out_channels, k, bias, out_size)
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
        weight, _, out_hw = checked_conv(params, x, name, out_channels, k, bias, out_size)
        if device_conv.applies(x):
            return to_nchw(
                device_conv.conv(to_nhwc(x), weight, params.get("bias"), k, s, p, d, out_hw)
            )
        return to_nchw(K.conv(to_nhwc(x), weight, params.get("bias"), k, s, p, d, out_hw))

    return Layer(layer_init, apply, checks_unchanged(name, skips_input_grad(vjp), weight_and_input))


def _groups_shown(groups) -> dict:
    """``groups`` for a layer's name, where it is not the default 1."""
    return {} if groups == 1 and not isinstance(groups, bool) else {"groups": groups}


def _channels_and_groups(out_channels, groups, name: str) -> tuple[int, int]:
    """``out_channels`` and ``groups`` of a (transposed) convolution as ints, the first
    splitting into groups of equal size."""
    out_channels = positive_int(out_channels, "out_channels", name)
    groups = positive_int(groups, "groups", name)
    if out_channels % groups:
        raise ValueError(
            f"{name}: out_channels {out_channels} do not split into {groups} groups of equal size"
        )
    return out_channels, groups


def _grouped_conv2d(name, layer_init, out_channels, bias, groups, geometry, out_size) -> Layer:
    """A grouped convolution. With one input channel a group (depthwise), on the tap-by-tap
    engine of :mod:`n2nfunc.kernels.grouped` (any device); with more, by
    :func:`_block_diagonal`."""
    k, s, p, d = geometry

    def checked(params, x):
        return checked_conv(params, x, name, out_channels, k, bias, out_size, groups=groups)

    wide = _block_diagonal(name, conv2d(out_channels, k, s, p, d, bias), groups, checked)

    def vjp(params, x):
        weight, in_hw, out_hw = checked(params, x)
        if weight.shape[1] > 1:
            return wide.vjp(params, x)
        y, saved = depthwise_conv(to_nhwc(x), weight, params.get("bias"), k, s, p, d, out_hw)
        y = to_nchw(y)
        y_out = output_of(y)

        def pullback(ct, input_grad=True):
            g = to_nhwc(check_cotangent(ct, y_out, name))
            dw, dx = depthwise_conv_grads(g, weight, saved, k, s, p, d, in_hw, input_grad)
            grads = {"weight": dw}
            if bias:
                grads["bias"] = _bias_grad(g, False)
            return grads, None if dx is None else to_nchw(dx)

        return y, pullback

    def apply(params, x):
        weight, _, out_hw = checked(params, x)
        if weight.shape[1] > 1:
            return wide.apply(params, x)
        y, _ = depthwise_conv(to_nhwc(x), weight, params.get("bias"), k, s, p, d, out_hw)
        return to_nchw(y)

    return Layer(layer_init, apply, checks_unchanged(name, skips_input_grad(vjp), weight_and_input))


def _block_diagonal(name, ungrouped: Layer, groups: int, checked) -> Layer:
    """A grouped (transposed) convolution as the ``ungrouped`` one whose weight is
    block-diagonal, each group's block in its place and zeros elsewhere: the ungrouped
    engines' speed for ``groups`` times the multiply-adds, the same sums for finite numbers
    (exact zeros added; 0 x inf is NaN), and the weight gradient's diagonal blocks. (Its init
    is not used: ``checked`` validates the grouped params and input.)"""

    def full(params):
        """The params with the weight made block-diagonal: [A, B, kh, kw] (a group's block A /
        groups x B) -> [A, B groups, kh, kw]."""
        w = params["weight"]
        blocks = w.new_zeros(w.shape[0], groups * w.shape[1], *w.shape[2:])
        _diagonal_blocks(blocks, groups).copy_(w.view(groups, -1, *w.shape[1:]))
        return {**params, "weight": blocks}

    def vjp(params, x):
        weight, _, _ = checked(params, x)
        y, pullback = ungrouped.vjp(full(params), x)
        y_out = output_of(y)

        def blocks_pullback(ct, input_grad=True):
            grads, dx = pullback(check_cotangent(ct, y_out, name), input_grad)
            dw = _diagonal_blocks(grads["weight"], groups).reshape(weight.shape)
            return {**grads, "weight": dw.contiguous()}, dx  # (not a view of the blocks)

        return y, blocks_pullback

    def apply(params, x):
        checked(params, x)
        return ungrouped.apply(full(params), x)

    return Layer(ungrouped.init, apply, vjp)


def _diagonal_blocks(blocks, groups: int):
    """The diagonal blocks of a block-diagonal (A, B, kh, kw) weight, a view of shape
    (G, A / G, B / G, kh, kw): block ``g`` maps input group ``g`` to output group ``g``."""
    o, c, kh, kw = blocks.shape
    view = blocks.view(groups, o // groups, groups, c // groups, kh, kw)
    return view.diagonal(0, 0, 2).permute(4, 0, 1, 2, 3)


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
    groups: int = 1,
) -> Layer:
    """2-d transposed convolution, as ``torch.nn.functional.conv_transpose2d``:

    ``y[n, o, s*i - p + d*u, s*j - p + d*v] += w[c, o, u, v] x[n, c, i, j]`` (plus
    ``bias[o]``), output size ``(H-1)s - 2p + d(k-1) + output_padding + 1``.

    The forward pass is the polyphase engine (PyTorch's order where :mod:`n2nfunc.torch_order`
    applies; :mod:`n2nfunc.device_conv` on a GPU). Gradients, for the output gradient ``g``:
    ``dx[n, c, i, j] = sum_{o, u, v} w[c, o, u, v] g[n, o, s*i - p + d*u, s*j - p + d*v]``,
    the plain convolution of ``g`` with the same weight;
    ``dw[c, o, u, v] = sum_{n, i, j} x[n, c, i, j] g[n, o, s*i - p + d*u, s*j - p + d*v]``
    (``x^T @ im2col(g)``, reusing that convolution's im2col, or alone without ``input_grad``);
    ``dbias[o]`` sums ``g[:, o]``.

    ``groups`` > 1 splits the channels into groups transposed-convolved apart, as torch's
    ``groups`` (weight [in, out / groups, kh, kw]), computed as the ungrouped transposed
    convolution with a block-diagonal weight (``groups`` times the multiply-adds, depthwise
    ones included; an infinity or NaN reaches the other groups as NaN, as in :func:`conv2d`).
    """
    name = describe(
        "conv_transpose2d",
        out_channels=out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        **_groups_shown(groups),
    )
    out_channels, groups = _channels_and_groups(out_channels, groups, name)
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
        return transpose_out(size, k[i], s[i], p[i], d[i], op[i])

    layer_init = make_init(
        name, out_channels, k, bias, out_size, transposed=True, init=init, groups=groups
    )
    if groups > 1:

        def checked(params, x):
            return checked_conv(
                params, x, name, out_channels, k, bias, out_size, transposed=True, groups=groups
            )

        ungrouped = conv_transpose2d(out_channels, k, s, p, op, d, bias)
        wide = _block_diagonal(name, ungrouped, groups, checked)
        return Layer(
            layer_init,
            wide.apply,
            checks_unchanged(name, skips_input_grad(wide.vjp), weight_and_input),
        )

    def vjp(params, x):
        weight, (h, w), out_hw = checked_conv(
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
            y, _ = K.polyphase_forward(
                xh, w_eff, params.get("bias"), py, px, out_hw, keep_cols=False
            )
        y = to_nchw(y)
        pullback = transposed_pullback(
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


def transposed_pullback(
    name,
    y_out,
    xh,
    kernel,
    k,
    s,
    p,
    d,
    bias,
    kernel_to_weight=None,
    like_torch=False,
    low_weight_grad=None,
):
    """The pullback of a transposed convolution of ``xh`` (NHWC) with ``kernel`` [in, out,
    kh, kw]: ``dx`` is the plain convolution of ``g`` with the same kernel, whose im2col also
    gives the kernel gradient ``x^T @ im2col(g)``, mapped by ``kernel_to_weight`` to the
    layer's own weight when the kernel is derived from it; in PyTorch's order
    (:mod:`n2nfunc.torch_order`) when the forward pass was. Without ``input_grad``, the
    kernel gradient alone (:func:`n2nfunc.kernels.conv_weight_grad`), no convolution of g.

    In 16-bit dtypes a derived kernel's weight gradient comes from ``low_weight_grad(g)``
    instead: summed onto the weight from the kernel's rounded gradient, it had lost the
    result where the summed terms cancel (``upsample``'s phases, for a cotangent that
    alternates in sign between them: 0.87 of max |dW| against autocast's 0.002)."""
    hw = tuple(xh.shape[1:3])
    own_16_bit = low_weight_grad is not None and xh.element_size() < 4 and not like_torch

    def pullback(ct, input_grad=True):
        g = to_nhwc(check_cotangent(ct, y_out, name))
        if own_16_bit:  # the input gradient alone by the convolution of g
            dx = K.conv(g, kernel, None, k, s, p, d, hw) if input_grad else None
            weight = low_weight_grad(g)
        else:
            if input_grad or like_torch:
                dx, d_kernel = K.conv_and_weight_grad(
                    g, kernel, None, k, s, p, d, hw, like_torch, grad_for=xh
                )
            else:  # the kernel gradient alone, without the convolution of g
                dx, d_kernel = None, K.conv_weight_grad(g, xh, k, s, p, d, hw)
            weight = d_kernel if kernel_to_weight is None else kernel_to_weight(d_kernel)
        grads = {"weight": weight.to(kernel.dtype)}
        if bias:
            grads["bias"] = _bias_grad(g, like_torch)
        return grads, to_nchw(dx) if input_grad else None

    return pullback


def _bias_grad(g, like_torch: bool):
    """The bias gradient, the channel sums of the NHWC output gradient ``g``."""
    return torch_order.bias_grad(g) if like_torch else K.channel_sums(g)
