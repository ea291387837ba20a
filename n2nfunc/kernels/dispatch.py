"""The convolution entry points the layers call: each picks the engine that applies (row taps,
the implicit GEMM, polyphase or the direct im2col product) for the pass it computes."""

from torch import Tensor, cat

from .. import torch_order
from . import direct, s2d
from .direct import (
    ColsWeightGrad,
    cols_products,
    conv_cols,
    conv_forward,
    conv_matrix,
    rows,
    weight_grad,
)
from .polyphase import combine, phase_plan, polyphase_forward
from .relayout import relaid
from .row_taps import RowWeightGrad, _row_taps, row_taps_conv, rows_applies
from .s2d import (
    s2d_applies,
    s2d_conv_forward,
    s2d_conv_weight_grad,
    s2d_plan,
    s2d_weight_grad_to_conv,
    s2d_weights,
    space_to_depth,
)
from .strided import TapWeightGrad, _phase_grads, _s2d_conv_and_grad


def _flipped(weight: Tensor, padding: tuple) -> tuple[Tensor, tuple]:
    """``(W[:, :, ::-1, ::-1]^T, k - 1 - p)``: the kernel and padding of the stride-1
    convolution of ``g`` that is a stride-1 convolution's input gradient."""
    pads = tuple(k - 1 - p for k, p in zip(weight.shape[2:], padding))
    return weight.flip(2, 3).transpose(0, 1), pads


def conv_input_grad(
    g: Tensor, weight: Tensor, stride: tuple, padding: tuple, dilation: tuple, in_hw: tuple
) -> Tensor:
    """``dx`` (N, H, W, C) of a convolution for its NHWC output gradient ``g``: the transposed
    convolution of ``g`` with the same kernel, by the polyphase engine -- except for stride 1
    and no dilation (padding below the kernel), where it is the stride-1 convolution of ``g``
    with the flipped kernel, ``dx = conv(g, W[:, :, ::-1, ::-1]^T, padding k - 1 - p)``: in
    float32 / float64 by row taps when :func:`rows_applies`, else by im2col blocks on the
    flipped kernel's matrix, without the polyphase engine's kernel relayout (a 0/1 matmul per
    call). A thin ``dx`` (fewer than THIN channels) without row taps keeps the polyphase
    engine's shifted-view taps."""
    kernel = tuple(weight.shape[2:])
    if stride == dilation == (1, 1) and all(p < k for p, k in zip(padding, kernel)):
        flipped, pads = _flipped(weight, padding)
        if rows_applies(g, kernel, stride, dilation):
            return _row_taps(g, flipped, None, pads, in_hw)[0]
        if weight.shape[1] >= direct.THIN:
            wmat = conv_matrix(flipped)
            return conv_forward(g, wmat, None, kernel, stride, pads, dilation, in_hw, False)[0]
    ho, wo = g.shape[1:3]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    py = phase_plan("transpose", ho, in_hw[0], kh, sh, ph, dh)
    px = phase_plan("transpose", wo, in_hw[1], kw, sw, pw, dw)
    w_eff = combine(weight.permute(2, 3, 0, 1), py, px)
    return polyphase_forward(g, w_eff, None, py, px, in_hw, keep_cols=False)[0]


def shares_row_taps(x: Tensor, weight: Tensor, stride: tuple, padding: tuple, dilation: tuple):
    """Whether both backward passes of this convolution of the NHWC ``x`` run as row taps --
    the weight gradient (:func:`rows_applies`) and the input gradient, a stride-1 convolution
    of the output gradient (``weight.shape[0]`` >= WIDE_TAPS channels) -- so that they can
    share one unrolled output gradient (:func:`conv_grads`)."""
    kernel = tuple(weight.shape[2:])
    return (
        rows_applies(x, kernel, stride, dilation)
        and weight.shape[0] >= s2d.WIDE_TAPS
        and all(p < k for p, k in zip(padding, kernel))
    )


def conv_grads(
    g: Tensor,
    weight: Tensor,
    weight_grad,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    in_hw: tuple,
    input_grad: bool = True,
):
    """``(dW, dx)`` of a convolution for its NHWC output gradient ``g``: ``weight_grad(g)``
    (from :func:`conv_and_weight_grad`) and :func:`conv_input_grad`, or ``dx`` None without
    ``input_grad``. For row taps where :func:`shares_row_taps`, both come from one unrolled
    ``g`` (:func:`_row_tap_grads`); for the implicit-GEMM engine from one im2col matrix of
    ``g`` where the geometry allows (:func:`_phase_grads`)."""
    if isinstance(weight_grad, torch_order.Grads):
        return weight_grad(g), weight_grad.input_grad(g) if input_grad else None
    if input_grad and isinstance(weight_grad, RowWeightGrad):
        x = weight_grad.x
        if shares_row_taps(x, weight, stride, padding, dilation):
            return _row_tap_grads(x, g, weight, padding)
        if thin_output_pays(x, weight, padding):
            return _thin_output_grads(x, g, weight, padding)
    if input_grad and isinstance(weight_grad, TapWeightGrad):
        both = _phase_grads(weight_grad, g, weight)
        if both is not None:
            return both
    dx = conv_input_grad(g, weight, stride, padding, dilation, in_hw) if input_grad else None
    return weight_grad(g), dx


def thin_output_pays(x: Tensor, weight: Tensor, padding: tuple) -> bool:
    """Whether both backward passes of a row-tap convolution of the NHWC ``x`` (float32 /
    float64, stride 1) come from one im2col matrix of its output gradient
    (:func:`_thin_output_grads`): a thin output (fewer than WIDE_TAPS channels, too few for
    the row taps of the input gradient) whose im2col matrix, H W rows of kh kw O, is no
    larger than the input's W-unrolled copy that the row-tap weight gradient would form
    instead, (H + 2 ph) Wo rows of kw C."""
    o, c, kh, kw = weight.shape
    _, h, w, _ = x.shape
    (ph, pw), wo = padding, w + 2 * padding[1] - kw + 1
    return (
        o < s2d.WIDE_TAPS
        and h * w * kh * o <= (h + 2 * ph) * wo * c
        and x.element_size() >= 4
        and ph < kh
        and pw < kw
    )


def _thin_output_grads(x: Tensor, g: Tensor, weight: Tensor, padding: tuple):
    """``(dW, dx)`` of a stride-1 convolution with a thin output from one im2col matrix of
    its output gradient padded by ``k - 1 - p``, ``cols[(n, i, j), (a, b, o)] = g_pad[n, i +
    a, j + b, o]``:

        dx = cols @ matrix(W[:, :, ::-1, ::-1]^T)          (the flipped kernel's im2col product)
        dW[o, c, k-1-a, k-1-b] = sum_{n,i,j} x[n, i, j, c] cols[(n, i, j), (a, b, o)],

    the second as in :func:`_row_tap_grads`, with the input read where it lies, not unrolled
    along W (the U-Net's 24 -> 3 output layer at 8 x 64 x 64: 27 columns against 72): one
    reduction over all pixels where they form one matrix (channels-last memory, or one
    image), split over the threads; else image by image (a batched matmul, whose batch
    shares out the work: one image's product alone keeps one thread busy)."""
    o, c, kh, kw = weight.shape
    n, h, w, _ = x.shape
    flipped, pads = _flipped(weight, padding)
    cols = conv_cols(g, (kh, kw), (1, 1), pads, (1, 1), (h, w))
    dx = cols.matmul(conv_matrix(flipped)).view(n, h, w, c)
    if n == 1 or x.is_contiguous():  # (N H W, C): a view of either
        d = direct.reduce_matmul(x.reshape(n * h * w, c).t(), cols)
    else:  # (N, C, H W), a view of channels-first memory
        d = x.permute(0, 3, 1, 2).reshape(n, c, h * w).bmm(cols.view(n, h * w, -1)).sum(0)
    dw = relaid(d, (c, kh, kw, o), lambda v: v.permute(3, 0, 1, 2).flip(2, 3), "thin_out_grad")
    return dw, dx


def _row_tap_grads(x: Tensor, g: Tensor, weight: Tensor, padding: tuple):
    """``(dW, dx)`` of a stride-1 convolution from one W-unrolled copy of ``g`` padded by
    ``k - 1 - p`` (:func:`_row_unroll`), ``zg[n, r, j, b] = g_pad[n, r, j + b]``:

        dx = sum_a zg[a W :] @ Wf[a]                (row taps of the flipped kernel)
        dW[o, c, k-1-a, k-1-b] = sum_{n,i,j} x[n, i, j, c] zg[n, i + a, j, b, o],

    the second because ``g[i - a + p]`` is ``g_pad[i + (k-1-a)]``: the weight gradient reads
    ``x`` as it is and the input gradient's unrolled ``g`` instead of unrolling ``x`` again
    (kw times the input)."""
    o, c, kh, kw = weight.shape
    n, h, w, _ = x.shape
    flipped, pads = _flipped(weight, padding)
    dx, zg, plan = _row_taps(g, flipped, None, pads, (h, w))
    xt = x.permute(0, 3, 1, 2).reshape(n, c, h * w)  # (N, C, H W), a view in either layout
    per_image = zg.view(n, plan.grid[0] * w, kw * o)
    d = cat([xt.bmm(per_image[:, a * w : a * w + h * w]).sum(0) for a in range(kh)])
    dw = relaid(d, (kh, c, kw, o), lambda v: v.permute(3, 1, 0, 2).flip(2, 3), "row_tap_grad")
    return dw, dx


def conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel: tuple,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    out_hw: tuple,
) -> Tensor:
    """``y = conv(x)`` on NHWC tensors when no gradient follows (a layer's ``apply``): the
    engine of :func:`conv_and_weight_grad`, except that in lower precisions the im2col
    matrix is only formed a block at a time, never whole (nothing is kept for a backward
    pass): the default network's bfloat16 forward of a 1024 x 1024 image peaks at 82 MB
    instead of 163 MB, at the same speed."""
    if x.element_size() >= 4:
        return conv_and_weight_grad(x, weight, bias, kernel, stride, padding, dilation, out_hw)[0]
    wmat = conv_matrix(weight)
    return conv_forward(x, wmat, bias, kernel, stride, padding, dilation, out_hw, False)[0]


def conv_weight_grad(
    x: Tensor,
    a: Tensor,
    kernel: tuple,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    out_hw: tuple,
) -> Tensor:
    """``sum_rows a^T im2col(x)`` as a weight [A, C, kh, kw] alone, without the convolution
    of ``x``: a transposed convolution's weight gradient when its input gradient is not
    asked for (``x`` its output gradient, ``a`` its input). Float32 / float64 a block of
    images at a time (:func:`cols_products`); lower precisions in one matmul, so that the
    sum stays inside one float32-accumulating kernel."""
    geometry = (kernel, stride, padding, dilation, out_hw)
    if x.element_size() >= 4:
        return cols_products(x, geometry, a)[1]
    return weight_grad(rows(a), conv_cols(x, *geometry), kernel)


def conv_and_weight_grad(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel: tuple,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    out_hw: tuple,
    like_torch: bool | None = None,
    grad_for: Tensor | None = None,
):
    """``y = conv(x)`` on NHWC tensors and a function ``a -> sum_rows a^T im2col(x)`` shaped
    like ``weight`` [O, C, kh, kw] (the weight gradient for an output gradient ``a``) -- or,
    given ``grad_for``, that gradient for ``a = grad_for`` itself, computed with ``y``: a
    transposed convolution's pullback (``x`` its output gradient, ``grad_for`` its input),
    where the copies of ``x`` serve both, in float32 / float64 a block of images at a time
    (:func:`image_blocks`) on the implicit-GEMM engine (O >= THIN_TAPS) and on im2col (O >=
    THIN).

    In PyTorch's own order (:mod:`n2nfunc.torch_order`) where it :func:`~n2nfunc.torch_order.
    applies` (``like_torch`` None) or ``like_torch`` says so.

    Float32 / float64: the implicit-GEMM engine where it applies (:func:`s2d_applies`), row
    taps for stride-1 convolutions (:func:`rows_applies`), else im2col. Lower precisions
    (bfloat16), whose sums must stay inside one matmul: the forward pass by blocks of
    im2col (:func:`im2col_matmul`) and, for stride 1, no dilation and at least
    ``WIDE_TAPS`` input channels, the weight gradient by shifted-view taps, separate
    matmuls that each reduce over every pixel (no im2col kept for the backward pass): row
    taps on the W-unrolled input when O >= C, else one tap per kernel element on the padded
    input; else the im2col matrix is kept (for stride 2, one matmul with it beat the
    space-to-depth copy and four tap matmuls; see docs/performance.md, 'The engines'
    constants').
    """

    def done(y, weight_grad):
        return (y, weight_grad) if grad_for is None else (y, weight_grad(grad_for))

    o, full_precision = weight.shape[0], x.element_size() >= 4
    if torch_order.applies(x, kernel) if like_torch is None else like_torch:
        return done(*torch_order.conv(x, weight, bias, kernel, stride, padding, dilation, out_hw))
    if rows_applies(x, kernel, stride, dilation):
        return done(*row_taps_conv(x, weight, bias, padding, out_hw))
    if s2d_applies(x, kernel, stride, dilation):
        plan = s2d_plan(x.shape[0], x.shape[1:3], kernel, stride, padding, out_hw)
        w_taps = s2d_weights(weight, plan)
        wg = TapWeightGrad(x, plan, tuple(weight.shape), tuple(x.shape[1:3]))
        if grad_for is not None and o >= s2d.THIN_TAPS:
            return _s2d_conv_and_grad(x, w_taps, bias, wg, grad_for)
        y, z = s2d_conv_forward(x, w_taps, bias, plan)
        return done(y, wg if grad_for is None else wg._replace(kept=z))
    wmat = conv_matrix(weight)
    geometry = (kernel, stride, padding, dilation, out_hw)
    if dilation == stride == (1, 1) and weight.shape[1] >= s2d.WIDE_TAPS:
        y, _ = conv_forward(x, wmat, bias, *geometry, False)
        return done(y, _stride_one_tap_weight_grad(x, weight, padding, out_hw))
    if full_precision and grad_for is not None and o >= direct.THIN:
        return cols_products(x, geometry, grad_for, wmat, bias)
    large = kernel[0] * kernel[1] >= 4 * stride[0] * stride[1] and max(stride) > 1
    cols_bytes = x.shape[0] * out_hw[0] * out_hw[1] * wmat.shape[0] * x.element_size()
    if full_precision and grad_for is None and large and cols_bytes > direct.GRAD_BLOCK_BYTES:
        # (see ColsWeightGrad; a matrix of one block is kept)
        y, _ = conv_forward(x, wmat, bias, *geometry, False)
        return y, ColsWeightGrad(x, *geometry)
    y, cols = conv_forward(x, wmat, bias, *geometry)
    return done(y, lambda a: weight_grad(rows(a), cols, kernel))


def _stride_one_tap_weight_grad(x: Tensor, weight: Tensor, padding: tuple, out_hw: tuple):
    """``a -> dW`` of a stride-1 convolution of ``x`` by shifted-view taps, each a matmul that
    reduces over every pixel (lower precisions, where no im2col is kept): row taps of the
    W-unrolled input when O >= C (kh wider matmuls), else a tap per kernel element."""
    shape = tuple(weight.shape)
    if shape[0] >= shape[1]:
        return RowWeightGrad(x, shape, padding, out_hw)
    plan = s2d_plan(x.shape[0], x.shape[1:3], shape[2:], (1, 1), padding, out_hw)
    return lambda a: s2d_weight_grad_to_conv(
        s2d_conv_weight_grad(space_to_depth(x, plan), a, plan), plan, shape
    )
