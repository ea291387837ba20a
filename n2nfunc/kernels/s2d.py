"""The implicit GEMM of strided convolutions over a space-to-depth copy of the padded input:
one matmul per tap over shifted flat views, no im2col copy (float32 and float64)."""

from typing import NamedTuple

from torch import Tensor

from ..nhwc import pad, sum_of
from .direct import reduce_matmul, widened
from .relayout import relaid

#
# A convolution with stride s, kernel k = s*U (per dim) and no dilation is a stride-1,
# U x U convolution of the padded input rearranged *space-to-depth*:
#
#     z[m, (r, c)] = xp[s*m + r, c],     y[i] = sum_{a < U} z[i + a] @ W[a],
#     W[a][(r, c), o] = w[o, c, s*a + r].
#
# Flattening z to rows ``R = (n*Mh + m_y)*Mw + m_x`` turns tap (a, b) into the row shift
# ``a*Mw + b``: each tap is one matmul over a *shifted flat view* of z (batched over the
# images), accumulated into the output, with no im2col copy (z is 1.27x the input for the
# default 8x8 outputs, an im2col 4x). Output rows whose window runs off the right edge of z
# are computed and ignored: the result is a strided view of the (N, Ho, Mw, Cout) rows. The
# weight gradient is the same sum, transposed: dW[a] = z_shifted^T @ g_full, with g placed
# in the (N, Mh, Mw) frame (zeros in the ignored rows).
#
# The taps accumulate in the output's dtype, so it is used for float32 / float64 only; in
# bfloat16 one im2col matmul accumulates every tap in float32 inside the kernel.


class S2DPlan(NamedTuple):
    """Geometry of :func:`s2d_conv_forward`: strides, taps per dim, the z grid and rows."""

    stride: tuple
    taps: tuple  # (Uy, Ux)
    grid: tuple  # (Mh, Mw)
    out_hw: tuple
    pads: tuple  # (top, bottom, left, right) of the padded input (negative: crop)
    rows: int  # L: output rows computed per tap (for a batch of n: n*Mh*Mw - shift_max)


def s2d_applies(
    x: Tensor, kernel: tuple, stride: tuple, dilation: tuple, stride_one: bool = False
) -> bool:
    """Whether :func:`s2d_conv_forward` handles this convolution (see the section comment).

    Stride-1 convolutions are left to im2col (one matmul with a long K) unless
    ``stride_one``, as for the small (2 x 2) windows of the polyphase engine; so are taps
    whose matmuls would sum over fewer than WIDE_TAPS columns of z (K = C sy sx: the default
    network's first layer, 3 channels at stride 2, has K = 12).
    """
    return (
        x.dtype.is_floating_point
        and x.element_size() >= 4
        and (stride_one or max(stride) > 1)
        and dilation == (1, 1)
        and all(k % s == 0 for k, s in zip(kernel, stride))
        and x.shape[3] * stride[0] * stride[1] >= WIDE_TAPS  # each tap's K
    )


def s2d_plan(n: int, in_hw: tuple, kernel: tuple, stride: tuple, padding: tuple, out_hw: tuple):
    taps = tuple(k // s for k, s in zip(kernel, stride))
    grid = tuple(o + u - 1 for o, u in zip(out_hw, taps))
    pads: tuple = ()
    for size, s, p, m in zip(in_hw, stride, padding, grid):
        pads += (p, s * m - size - p)
    rows = n * grid[0] * grid[1] - (taps[0] - 1) * grid[1] - (taps[1] - 1)
    return S2DPlan(stride, taps, grid, out_hw, pads, rows)


def s2d_weights(weight: Tensor, plan: S2DPlan) -> Tensor:
    """A conv weight [O, C, kh, kw] as the tap matrices (Uy, Ux, sy*sx*C, O), rows (ry, rx, c)."""
    o, c = weight.shape[:2]
    (uy, ux), (sy, sx) = plan.taps, plan.stride
    w = weight.view(o, c, uy, sy, ux, sx).permute(2, 4, 3, 5, 1, 0)
    return w.reshape(uy, ux, sy * sx * c, o)


def s2d_weight_grad_to_conv(d_taps: Tensor, plan: S2DPlan, shape: tuple) -> Tensor:
    """Adjoint of :func:`s2d_weights`: tap gradients (Uy, Ux, sy*sx*C, O) -> [O, C, kh, kw],
    by one gather (:func:`~n2nfunc.kernels.relayout.relaid`)."""
    return relaid(
        d_taps,
        d_taps.shape,
        lambda d: taps_to_conv(d, plan, shape),
        ("taps_to_conv", plan.taps, plan.stride, shape),
    )


def taps_to_conv(d_taps: Tensor, plan: S2DPlan, shape: tuple) -> Tensor:
    """The reordering of :func:`s2d_weight_grad_to_conv` (a view where it can be)."""
    o, c, kh, kw = shape
    (uy, ux), (sy, sx) = plan.taps, plan.stride
    d = d_taps.reshape(uy, ux, sy, sx, c, o).permute(5, 4, 0, 2, 1, 3)
    return d.reshape(o, c, kh, kw)


def space_to_depth(x: Tensor, plan: S2DPlan) -> Tensor:
    """The padded NHWC input as flat z rows (N*Mh*Mw, sy*sx*C), ``z[(n, my, mx), (ry, rx, c)]
    = xp[n, sy*my + ry, sx*mx + rx, c]``.

    Written in one pass, a strided copy per phase (ry, rx) with only the padding zeroed,
    rather than padded first and rearranged by a second copy: half the memory traffic
    (``Model.predict`` of one 512 x 512 image 1.06-1.09x faster in float32; 2-core Xeon), and
    no moment holds both copies."""
    n, h, w, c = x.shape
    (mh, mw), (sy, sx) = plan.grid, plan.stride
    if (sy, sx) == (1, 1):
        return pad(x, *plan.pads).view(n * mh * mw, c)
    z = x.new_empty(n, mh, mw, sy, sx, c)
    sn, smy, smx, sry, srx, _ = z.stride()
    top, _, left, _ = plan.pads
    rows = [_phase_span(ry, sy, top, h, mh) for ry in range(sy)]
    cols = [_phase_span(rx, sx, left, w, mw) for rx in range(sx)]
    # the padding, each region one strided view (fewer ops: a step at batch 32 had run 42
    # per call): a row phase's cells above and below its input rows, for every column
    # phase at once; then a column phase's, for every row phase
    for ry, (m0, m1, _) in enumerate(rows):
        for a, b in ((0, m0), (m1, mh)):
            if b > a:
                z.as_strided(
                    (n, b - a, mw, sx, c), (sn, smy, smx, srx, 1), a * smy + ry * sry
                ).zero_()
    for rx, (k0, k1, _) in enumerate(cols):
        for a, b in ((0, k0), (k1, mw)):
            if b > a:
                z.as_strided(
                    (n, mh, b - a, sy, c), (sn, smy, smx, sry, 1), a * smx + rx * srx
                ).zero_()
    xn, xh, xw, xc = x.stride()
    merged_rows = merged_cols = None  # 3-channel runs copy faster phase by phase
    if c >= MERGED_COPY:
        merged_rows, merged_cols = _merged(rows, smy, sry), _merged(cols, smx, srx)
    if merged_rows and merged_cols:  # every phase in one strided copy (see _merged)
        (cells_y, i0, at_y, step_y), (cells_x, j0, at_x, step_x) = merged_rows, merged_cols
        cells = (n, cells_y, cells_x, sy, sx, c)
        inside = x.as_strided(
            cells, (xn, sy * xh, sx * xw, xh, xw, xc), x.storage_offset() + i0 * xh + j0 * xw
        )
        z.as_strided(cells, (sn, smy, smx, step_y, step_x, 1), at_y + at_x).copy_(inside)
        return z.view(n * mh * mw, sy * sx * c)
    for ry, (m0, m1, i0) in enumerate(rows):
        for rx, (k0, k1, j0) in enumerate(cols):
            if m1 > m0 and k1 > k0:
                size = (n, m1 - m0, k1 - k0, c)
                at = m0 * smy + k0 * smx + ry * sry + rx * srx
                inside = x.as_strided(
                    size, (xn, sy * xh, sx * xw, xc), x.storage_offset() + i0 * xh + j0 * xw
                )
                z.as_strided(size, (sn, smy, smx, 1), at).copy_(inside)
    return z.view(n * mh * mw, sy * sx * c)


# Channels from which space_to_depth copies all phases at once (the copies of 100 x 16 x 16 x
# 48, stride 2: 0.30 -> 0.22 ms; of 100 x 32 x 32 x 3: 0.24 -> 0.60 ms; 2-core Xeon).
MERGED_COPY = 8


def _merged(spans: list, cell_stride: int, phase_stride: int):
    """``(cells, i0, at, step)`` when one axis's phases (:func:`_phase_span` of each) can be
    copied as one strided view: input ``i0 + s*m + q`` (q = 0 .. s-1, m < cells) going to
    memory offset ``at + m*cell_stride + q*step``. So when the phases hold equally many
    cells, read consecutive inputs, and their first cells lie evenly spaced, ``step`` > 0,
    in memory (stride 2: always, as two points are; with padding 1, phase 0 of the input
    goes to padded phase 1 and phase 1 to the next cell's phase 0). Else None."""
    order = sorted(range(len(spans)), key=lambda r: spans[r][2])  # the phases by first input
    m0, m1, i0 = spans[order[0]]
    cells = m1 - m0
    starts = [spans[r][0] * cell_stride + r * phase_stride for r in order]
    steps = {b - a for a, b in zip(starts, starts[1:])} or {1}
    if cells <= 0 or len(steps) != 1 or min(steps) <= 0:
        return None
    for q, r in enumerate(order):
        if spans[r][1] - spans[r][0] != cells or spans[r][2] != i0 + q:
            return None
    return cells, i0, starts[0], steps.pop()


def _phase_span(r: int, s: int, before: int, size: int, cells: int) -> tuple:
    """``(m0, m1, i0)``: the cells ``m0 <= m < m1`` of phase ``r`` whose padded position
    ``s*m + r`` holds input ``i = s*m + r - before`` inside ``0 <= i < size`` (``before`` < 0
    crops), the first of them ``i0``; ``m0 == m1`` when there are none."""
    m0 = min(cells, max(0, -((r - before) // s)))  # smallest m with s*m + r - before >= 0
    m1 = min(cells, max(m0, -(-(size + before - r) // s)))  # s*m + r - before < size
    return m0, m1, s * m0 + r - before


def _shifts(plan: S2DPlan):
    """(a, b, row shift) for every tap."""
    for a in range(plan.taps[0]):
        for b in range(plan.taps[1]):
            yield a, b, a * plan.grid[1] + b


def s2d_conv_forward(x: Tensor, w_taps: Tensor, bias: Tensor | None, plan: S2DPlan):
    """``y = conv(x)`` (NHWC) by shifted-view matmuls; returns ``(y, z)``, ``y`` a strided
    (N, Ho, Wo, O) view and ``z`` the space-to-depth input kept for the weight gradient."""
    z = space_to_depth(x, plan)
    return tap_sum(z, w_taps, bias, plan, x.shape[0]), z


# Below this many output channels the shifted-view taps share one matmul (tap_sum,
# s2d_conv_weight_grad), whose shifted column blocks are then summed (docs/performance.md,
# 'The engines' constants').
THIN_TAPS = 16


# Tap weight gradients with at most this many outputs in all (taps x output channels), each
# reducing a z of at least 4 x as many columns as outputs, come from one matmul with g placed
# once per tap (see s2d_conv_weight_grad).
STACKED_TAPS = 256


# The fewest channels of the tensor that shifted-view taps read (the input of a convolution,
# the output gradient of an input gradient), times sy sx on a space-to-depth grid: each tap's
# matmul then sums over at least this many columns K (row taps, which compare C itself, over
# kw C). Below it one matmul with an im2col matrix (K = kh kw channels) is faster
# (docs/performance.md, 'The engines' constants').
WIDE_TAPS = 16


def tap_sum(
    z: Tensor, w_taps: Tensor, bias: Tensor | None, plan: S2DPlan, n: int, out: Tensor | None = None
) -> Tensor:
    """``sum_taps z[shift : shift + L] @ w_taps[a, b] (+ bias)`` for flat rows ``z`` on the
    plan's (N, Mh, Mw) grid, as a strided (N, Ho, Wo, O) view of the outputs.

    Each tap is one batched matmul over the images, ``z_n[shift : shift + L_n]``, whose
    ``L_n = Ho Mw - (Ux - 1)`` rows end at the image's last output: the rows below it, which
    a matmul over the whole batch would compute and ignore, are left out (the default
    network's float32 training step 1.01-1.03x; 2-core Xeon). A narrow output (fewer than
    THIN_TAPS channels) is one matmul with every tap's columns side by side, ``z @ [W_t]_t``,
    whose shifted column blocks are then summed, along x, then along y (Ux + Uy - 1 passes
    instead of Ux * Uy: the default network's last layer, batch 100, float32 forward 1.71 ->
    1.56 ms; one 512 x 512 image 4.47 -> 3.59 ms; 2-core Xeon). With ``out``, an (N, Ho Mw -
    (Ux - 1), O) tensor, the sums of an output of THIN_TAPS channels or more are written
    there."""
    o = w_taps.shape[-1]
    if o < THIN_TAPS:
        (uy, ux), mw, rows = plan.taps, plan.grid[1], plan.rows
        wmat = w_taps.permute(2, 0, 1, 3).reshape(w_taps.shape[2], -1)  # (K, taps*O)
        # (R, taps*O), computed at a fast width (direct.fast_width)
        all_taps = z.matmul(widened(wmat))[:, : wmat.shape[1]]
        # z freed here when the caller passed a temporary (polyphase_forward): the default
        # network's float32 step at batch 100 peaked here, 37.5 -> 33.1 MB live
        del z
        all_taps = all_taps.view(-1, uy, ux, o)
        # along x first: u[r, a] = sum_b all_taps[r + b, a, b]
        part = all_taps.shape[0] - (ux - 1)
        u = sum_of([all_taps[b : b + part, :, b] for b in range(ux)])
        del all_taps
        y = sum_of([u[a * mw : a * mw + rows, a] for a in range(uy)])
        if bias is not None:
            y.add_(bias)
        return _frame_view(y, n, plan)
    (mh, mw), ho, k = plan.grid, plan.out_hw[0], z.shape[1]
    length = ho * mw - (plan.taps[1] - 1)
    (rz, cz), (sa, sb, sk, so) = z.stride(), w_taps.stride()

    def operands(a: int, b: int, shift: int) -> tuple[Tensor, Tensor]:
        """Tap (a, b)'s rows of every image and its weight for each, one strided view each
        (a slice, a select and an expand had taken four ops)."""
        at = z.storage_offset() + shift * rz
        zs = z.as_strided((n, length, k), (mh * mw * rz, rz, cz), at)
        at = w_taps.storage_offset() + a * sa + b * sb
        return zs, w_taps.as_strided((n, k, o), (0, sk, so), at)

    (a, b, shift), *rest = _shifts(plan)
    zs, w = operands(a, b, shift)
    if out is not None:  # (N, length, O): a block's rows (_s2d_conv_and_grad)
        y = out.baddbmm_(zs, w, beta=0) if bias is None else out.copy_(bias).baddbmm_(zs, w)
    else:
        y = zs.bmm(w) if bias is None else bias.expand(n, length, o).baddbmm(zs, w)
    for a, b, shift in rest:
        y.baddbmm_(*operands(a, b, shift))
    return _taps_view(y, plan)


def _taps_view(y: Tensor, plan: S2DPlan) -> Tensor:
    """The (N, Ho, Wo, O) outputs inside :func:`tap_sum`'s (N, Ho Mw - (Ux - 1), O) sums."""
    n, length, o = y.shape
    (ho, wo), mw = plan.out_hw, plan.grid[1]
    return y.as_strided((n, ho, wo, o), (length * o, mw * o, o, 1))


def _frame_view(buf: Tensor, n: int, plan: S2DPlan) -> Tensor:
    """The (N, Ho, Wo, C) outputs inside a (rows, C) buffer laid out on the (N, Mh, Mw) grid."""
    (mh, mw), (ho, wo), c = plan.grid, plan.out_hw, buf.shape[-1]
    r, cs = buf.stride()
    return buf.as_strided((n, ho, wo, c), (mh * mw * r, mw * r, r, cs), buf.storage_offset())


def s2d_conv_weight_grad(z: Tensor, g: Tensor, plan: S2DPlan) -> Tensor:
    """Tap gradients (Uy, Ux, sy*sx*C, O) of :func:`s2d_conv_forward` for an NHWC output
    gradient ``g``: ``dW[a, b] = z[shift : shift + L]^T @ g_full[:L]``, with ``g`` placed in
    the (N, Mh, Mw) frame (zeros in the ignored rows). Three ways to compute it, by shape:

    * a narrow ``g`` (O < THIN_TAPS), or few outputs in all (taps x O <= STACKED_TAPS) each
      reducing a wide z (K >= 4 O): one matmul for every tap, ``[G^T shifted by each tap] @
      z`` with ``G^T[t, :, shift + r] = g_full[r]``; ``g`` is placed channels-first once and
      shifted by row copies (default network, 48 -> 48, k4 s2, batch 100: float32 2.9 -> 2.5
      ms, bfloat16 1.0 -> 0.7 ms; row taps 8 x 64 x 64, 48 -> 24, float32 5.2 -> 4.1 ms, but
      16 -> 32 2.1 -> 3.8 ms, hence the K >= 4 O; 24 -> 3 channels: float32 0.8 against 2.1
      ms for a matmul per tap);
    * else in float32 / float64 one matmul per tap with the row-major frame, as written;
    * else in bfloat16, where a matmul reducing over rows is twice as fast with the rows
      contiguous in both operands, ``dW[a, b]^T = G^T[:, :L] @ z[shift : shift + L]`` (8 x 64
      x 64, 32 -> 32 channels, 3 x 3: 4.0 -> 3.3 ms with the transposing copy).

    (2-core Xeon with AMX, except where marked.)"""
    n, o = g.shape[0], g.shape[3]
    rows, taps = plan.rows, list(_shifts(plan))
    size = n * plan.grid[0] * plan.grid[1]
    if _stacked(len(taps), o, z.shape[1]):
        frame = g.new_empty(len(taps), o, size)  # channels-first: the G^T of every tap
        _place_in_frame(g, frame[0].t(), plan)
        for t, (_, _, shift) in enumerate(taps[1:], 1):
            frame[t, :, :shift].zero_()
            frame[t, :, shift:].copy_(frame[0, :, : size - shift])
        d_all = reduce_matmul(frame.view(len(taps) * o, size), z)  # (taps * O, K)
        return d_all.view(*plan.taps, o, -1).transpose(2, 3).contiguous()
    if g.element_size() < 4:
        frame = g.new_empty(o, size)
        _place_in_frame(g, frame.t(), plan)
        d = g.new_empty(plan.taps[0], plan.taps[1], o, z.shape[1])
        for a, b, shift in taps:
            d[a, b] = frame[:, :rows].matmul(z[shift : shift + rows])
        return d.transpose(2, 3).contiguous()
    g_full = _place_in_frame(g, g.new_empty(size, o), plan)
    g_rows = g_full[:rows]
    d = g.new_empty(plan.taps[0], plan.taps[1], z.shape[1], o)
    for a, b, shift in taps:
        d[a, b] = reduce_matmul(z[shift : shift + rows].t(), g_rows)
    return d


def _stacked(taps: int, o: int, k: int) -> bool:
    """Whether :func:`s2d_conv_weight_grad` takes every tap's gradient from one matmul."""
    return o < THIN_TAPS or (taps * o <= STACKED_TAPS and k >= 4 * o)


def _place_in_frame(g: Tensor, buf: Tensor, plan: S2DPlan) -> Tensor:
    """Write the NHWC ``g`` into the (N*Mh*Mw, C) matrix ``buf`` (any strides), its rows
    laid out on the plan's (N, Mh, Mw) grid, with zeros in the rows outside the (Ho, Wo)
    outputs; returns ``buf``. Only those rows are zeroed, not the whole buffer."""
    (mh, mw), (ho, wo) = plan.grid, plan.out_hw
    grid = buf.view(g.shape[0], mh, mw, buf.shape[1])
    grid[:, ho:].zero_()
    grid[:, :ho, wo:].zero_()
    grid[:, :ho, :wo].copy_(g)
    return buf
