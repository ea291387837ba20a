"""Stride-1 convolutions as row taps: the padded input unrolled along W only, one matmul per
kernel row over shifted flat views (float32 and float64); kernel taps on large images, or
taps on pairs of columns for a narrow output."""

from typing import NamedTuple

from torch import Tensor, cat

from ..nhwc import pad, pads_to_read, row_unrolled
from . import s2d
from .relayout import relaid
from .s2d import S2DPlan, _stacked, s2d_conv_weight_grad, tap_sum

# A stride-1 convolution as kh matmuls over shifted flat views: the padded input is unrolled
# along W only -- z[n, r, j] = (xp[n, r, j + b] for b < kw), kw*C columns, kw times the input
# instead of im2col's kh*kw -- and kernel row a multiplies z shifted by a*Wo rows:
#
#     y[n, i, j] = sum_a z[n, i + a, j] @ W[a],    W[a] of shape (kw*C, O),
#
# each a matmul batched over the images, whose Ho*Wo rows start a*Wo rows into the image's
# (Hp, Wo) grid of z: no row is computed and ignored, and y is a dense NHWC tensor (for an
# output of fewer than s2d.THIN_TAPS channels, the taps share one matmul over all rows, as in
# s2d.tap_sum, and y is a strided view of its frame). The weight gradient is the same sum
# transposed, dW[a] = sum_n z_n,shifted^T @ g_n. On a 2-core AMD EPYC row taps halved the
# forward + weight gradient of the U-Net's 3x3 convolutions against one im2col matmul (32 ->
# 32 channels, 8 x 64 x 64: 12.5 vs 25.9 ms). Float32 and float64 only, like the
# space-to-depth engine (s2d). The forward pass of a large image takes kh x kw taps of the
# padded input itself instead (KERNEL_TAPS_PIXELS).


def rows_applies(x: Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> bool:
    """Whether :func:`row_taps_conv` handles this convolution."""
    return (
        x.dtype.is_floating_point
        and x.element_size() >= 4
        and stride == (1, 1)
        and dilation == (1, 1)
        and kernel[0] > 1
        and x.shape[3] >= s2d.WIDE_TAPS
    )


def _stride_one_pads(x: Tensor, kernel: tuple, padding: tuple, out_hw: tuple) -> tuple:
    """``(top, bottom, left, right)`` (negative: crop) that put the NHWC ``x`` on the (Ho + kh -
    1, Wo + kw - 1) grid a stride-1 convolution with ``out_hw`` outputs reads."""
    return pads_to_read(x, kernel, (1, 1), padding, (1, 1), out_hw)


def _row_unroll(x: Tensor, kernel: tuple, padding: tuple, out_hw: tuple):
    """``(z, plan)``: the padded NHWC input unrolled along W (kw*C columns, rows on the
    (N, Hp, Wo) grid) and the plan of its kh x 1 row taps (see the section comment)."""
    n, _, _, c = x.shape
    (kh, kw), (ho, wo) = kernel, out_hw
    hp, pads = ho + kh - 1, _stride_one_pads(x, kernel, padding, out_hw)
    plan = S2DPlan((1, 1), (kh, 1), (hp, wo), out_hw, pads, n * hp * wo - (kh - 1) * wo)
    return row_unrolled(x, pads, hp, wo, kw).view(n * hp * wo, kw * c), plan


def _row_weight_grad(z: Tensor, g: Tensor, plan: S2DPlan, shape: tuple) -> Tensor:
    """Row-tap gradients of :func:`_row_unroll`'s ``z`` for the NHWC output gradient ``g``, as
    a conv weight of ``shape``: ``dW[a] = sum_n z_n[a Wo : a Wo + Ho Wo]^T @ g_n``.

    In float32 / float64, unless the taps' gradients stack into one matmul
    (:func:`s2d_conv_weight_grad`), one batched matmul per kernel row over the images, whose
    rows of z line up with ``g``'s own -- no frame copy of ``g``, no ignored rows -- and the
    images' partial sums added (8 x 64 x 64, 32 -> 32 channels: 4.1 -> 3.7 ms; 8 x 32 x 32,
    64 -> 64: 2.7 -> 2.5 ms; 2-core Xeon). Lower precisions keep every sum inside one matmul.
    """
    o, c, kh, kw = shape
    n, ho, wo = g.shape[:3]
    if g.element_size() < 4 or _stacked(kh, o, kw * c):
        d = s2d_conv_weight_grad(z, g, plan)
    else:
        per_image = z.view(n, plan.grid[0] * wo, kw * c)
        g_rows = g.reshape(n, ho * wo, o)
        d = g.new_empty(kh, kw * c, o)
        for a in range(kh):
            d[a] = per_image[:, a * wo : a * wo + ho * wo].transpose(1, 2).bmm(g_rows).sum(0)
    return d.view(kh, kw, c, o).permute(3, 2, 0, 1).contiguous()


def row_taps_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple, out_hw: tuple):
    """``(y, weight_grad)`` of a stride-1 convolution by row taps (see the section comment):
    ``y`` from :func:`stride_one_forward`, ``weight_grad(g)``, shaped like ``weight``, by row
    taps of the W-unrolled input."""
    y = stride_one_forward(x, weight, bias, padding, out_hw)
    return y, RowWeightGrad(x, tuple(weight.shape), padding, out_hw)


# A stride-1 convolution's forward pass on a large image -- at least KERNEL_TAPS_PIXELS output
# pixels per image, KERNEL_TAPS_WIDTH columns, KERNEL_TAPS_CHANNELS input and THIN_TAPS output
# channels -- is kh x kw shifted-view taps of the padded input, K = C, rather than kh row taps of
# its W-unrolled copy, K = kw C: MKL's generic float32 kernels slow down with K at these narrow
# outputs, and no unrolled copy is made. Below the bounds the padding columns computed and
# ignored, and nine matmuls rather than three, cost more (docs/performance.md, 'The engines'
# constants').
KERNEL_TAPS_PIXELS = 2048
KERNEL_TAPS_WIDTH = 48
KERNEL_TAPS_CHANNELS = 24


def _large_image(c: int, out_hw: tuple) -> bool:
    """Whether a forward pass of ``c`` input channels and ``out_hw`` outputs is within the
    KERNEL_TAPS bounds, where taps of the padded input itself pay."""
    (ho, wo) = out_hw
    return ho * wo >= KERNEL_TAPS_PIXELS and wo >= KERNEL_TAPS_WIDTH and c >= KERNEL_TAPS_CHANNELS


def kernel_taps_pay(c: int, o: int, out_hw: tuple) -> bool:
    """Whether :func:`stride_one_forward` takes kernel taps for ``c -> o`` channels."""
    return _large_image(c, out_hw) and o >= s2d.THIN_TAPS


# A large image's forward pass with a narrow output -- fewer than PAIR_WIDTH output channels,
# not a multiple of 16: the U-Net's 48 -> 24 and 24 -> 3 layers -- is computed on pairs of
# columns (pair_taps_forward): MKL's float32 kernels write 17-31 columns no faster than 32,
# and a thin output pays for the row taps' unrolled copy (docs/performance.md, 'The engines'
# constants').
PAIR_WIDTH = 32


def pair_taps_pay(c: int, o: int, out_hw: tuple) -> bool:
    """Whether :func:`stride_one_forward` takes :func:`pair_taps_forward` (an even output
    width)."""
    return _large_image(c, out_hw) and out_hw[1] % 2 == 0 and o < PAIR_WIDTH and o % 16 != 0


def pair_taps_forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple, out_hw):
    """``y = conv(x)`` (NHWC) of a stride-1 convolution with an even output width, computed
    on pairs of columns: the padded input read as (N, Hp, Wp / 2, 2 C) -- a view, no copy --
    and the output as (N, Ho, Wo / 2, 2 O), a stride-1 convolution between them with kh x U
    taps, U = kw // 2 + 1 (:func:`tap_sum`, ``y`` a strided view whose rows skip one pair).
    Output pair ``q`` reads input pairs ``q .. q + U - 1``; its tap ``(a, b)`` maps input
    column ``u`` of pair ``q + b`` to output column ``v`` of pair ``q`` through kernel column
    ``2 b + u - v`` (zero where that is outside the kernel: a 3 x 3 kernel's pair taps are
    3 / 4 nonzero, 4 / 3 of the multiply-adds). The products are twice as wide: 8 x 64 x 64,
    48 -> 24 channels 7.4 -> 5.6 ms; one 256 x 256 image, 24 -> 3 3.9 -> 3.4 ms (2-core Xeon).
    A NaN or infinity in the input reaches one output column further than torch's (0 x inf
    at a structural zero)."""
    o, c, kh, kw = weight.shape
    (ho, wo), n = out_hw, x.shape[0]
    if wo % 2:
        raise ValueError(f"pair_taps_forward: output width {wo} is odd; pairs need it even")
    top, bottom, left, _ = _stride_one_pads(x, (kh, kw), padding, out_hw)
    ux = kw // 2 + 1
    mw = wo // 2 + ux - 1  # pairs per padded row
    pads = (top, bottom, left, 2 * mw - x.shape[2] - left)
    hp = ho + kh - 1
    plan = S2DPlan(
        (1, 1), (kh, ux), (hp, mw), (ho, wo // 2), pads, n * hp * mw - (kh - 1) * mw - ux + 1
    )
    taps = relaid(
        cat([weight.reshape(-1), weight.new_zeros(1)]),
        (weight.numel() + 1,),
        lambda i: _pair_taps(i[:-1].view(o, c, kh, kw), i[-1]),
        ("pair_taps", tuple(weight.shape)),  # (the index depends on all four sizes)
    )  # (kh, U, 2 C, 2 O)
    y = tap_sum(
        pad(x, *pads).view(n * hp * mw, 2 * c),
        taps,
        None if bias is None else bias.repeat(2),
        plan,
        n,
    )
    return y.reshape(n, ho, wo, o)  # a view: each pair's 2 O numbers are two pixels' O


def _pair_taps(w: Tensor, zero: Tensor) -> Tensor:
    """The pair taps of :func:`pair_taps_forward` from a kernel [O, C, kh, kw] (any tensor of
    that shape, here the indices of its numbers) and a scalar ``zero`` (the index of a 0)."""
    o, c, kh, kw = w.shape
    ux = kw // 2 + 1
    taps = zero.expand(kh, ux, 2, c, 2, o).clone()
    for b in range(ux):
        for u in range(2):
            for v in range(2):
                if 0 <= 2 * b + u - v < kw:
                    taps[:, b, u, :, v] = w[:, :, :, 2 * b + u - v].permute(2, 1, 0)
    return taps.view(kh, ux, 2 * c, 2 * o)


def stride_one_forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple, out_hw):
    """``y = conv(x)`` (NHWC) of a stride-1 convolution that :func:`rows_applies` to: on a
    large image (see KERNEL_TAPS_PIXELS) by kh x kw shifted-view taps of the padded input
    (:func:`tap_sum` on its (N, Hp, Wp) grid, ``y`` a strided view whose rows skip the kw - 1
    padding columns) or, for a narrow output, on pairs of columns (:func:`pair_taps_pay`),
    else by row taps."""
    o, c, kh, kw = weight.shape
    (ho, wo), n = out_hw, x.shape[0]
    if pair_taps_pay(c, o, out_hw):
        return pair_taps_forward(x, weight, bias, padding, out_hw)
    if not kernel_taps_pay(c, o, out_hw):
        return _row_taps(x, weight, bias, padding, out_hw)[0]
    hp, wp, pads = ho + kh - 1, wo + kw - 1, _stride_one_pads(x, (kh, kw), padding, out_hw)
    plan = S2DPlan((1, 1), (kh, kw), (hp, wp), out_hw, pads, n * hp * wp - (kh - 1) * wp - kw + 1)
    taps = weight.permute(2, 3, 1, 0).contiguous()  # (kh, kw, C, O)
    return tap_sum(pad(x, *pads).view(n * hp * wp, c), taps, bias, plan, n)


def _row_taps(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple, out_hw: tuple):
    """``(y, z, plan)``: the stride-1 convolution by row taps, with the unrolled input and
    its plan."""
    o, c, kh, kw = weight.shape
    z, plan = _row_unroll(x, (kh, kw), padding, out_hw)
    taps = weight.permute(2, 3, 1, 0).reshape(kh, 1, kw * c, o)
    return tap_sum(z, taps, bias, plan, x.shape[0]), z, plan


class RowWeightGrad(NamedTuple):
    """``g -> dW`` (shaped ``shape``) by row taps on ``x`` unrolled again when called: the
    unrolled copy, kw times the input, is not kept from the forward pass. Holds ``x``, which
    :func:`conv_grads` may also use."""

    x: Tensor
    shape: tuple
    padding: tuple
    out_hw: tuple

    def __call__(self, g: Tensor) -> Tensor:
        z, plan = _row_unroll(self.x, self.shape[2:], self.padding, self.out_hw)
        return _row_weight_grad(z, g, plan, self.shape)
