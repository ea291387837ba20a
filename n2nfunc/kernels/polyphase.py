"""Polyphase (sub-pixel) products: a map that upsamples by ``s`` as one stride-1 matmul over
the low-resolution input for all ``s*s`` output phases, then an interleave (see
:mod:`n2nfunc.kernels`)."""

from functools import lru_cache
from typing import NamedTuple

from torch import Tensor, empty

from ..base import inference_mode_on
from ..nhwc import col2im, to_nchw, to_nhwc, unpad
from . import direct
from .direct import conv_cols, conv_forward, image_blocks, reduce_matmul
from .s2d import S2DPlan, s2d_applies, s2d_plan, space_to_depth, tap_sum


class PhasePlan(NamedTuple):
    """How one spatial dim of an upsampling map splits into ``stride`` phases.

    Output ``o = stride*m + rho`` reads inputs ``m + offsets[rho] + j`` for ``j < width``
    through kernel taps ``taps[rho]`` = ((j, t), ...). ``counts[rho]`` outputs fall in
    phase rho; window starts run over ``first_start .. first_start + starts - 1``.
    ``pad_before`` / ``pad_after``: the zeros those windows read before the first input /
    after the last (negative: that many inputs at that end are read by no window).
    """

    stride: int
    kernel: int
    width: int
    offsets: tuple
    taps: tuple
    counts: tuple
    first_start: int
    starts: int
    pad_before: int
    pad_after: int


@lru_cache(maxsize=256)
def phase_plan(
    mode: str, in_len: int, out_len: int, kernel: int, stride: int, padding: int, dilation: int
) -> PhasePlan:
    """Phase decomposition of one spatial dim.

    ``mode="transpose"``: transposed convolution, ``y[s*i - p + d*t] += x[i] w[t]``, so
    output ``o`` reads ``i = (o + p - d*t) / s`` when that is an integer.
    ``mode="nearest"``: nearest upsampling by ``s`` then a stride-1 convolution, so
    output ``o`` reads ``x[floor((o - p + d*t) / s)]`` (zero outside the input).
    """
    s = stride
    per_phase = []
    for rho in range(s):
        taps = []
        for t in range(kernel):
            if mode == "transpose":
                q, r = divmod(rho + padding - dilation * t, s)
                if r == 0:
                    taps.append((q, t))
            else:
                taps.append(((rho - padding + dilation * t) // s, t))
        per_phase.append(taps)
    counts = tuple(max(0, -(-(out_len - rho) // s)) for rho in range(s))
    tapped = [min(q for q, _ in taps) for taps in per_phase if taps]
    default = min(tapped) if tapped else 0
    offsets = tuple(min(q for q, _ in taps) if taps else default for taps in per_phase)
    width = max(
        [max(q for q, _ in taps) - off + 1 for taps, off in zip(per_phase, offsets) if taps] or [1]
    )
    live = [rho for rho in range(s) if counts[rho]]
    first = min(offsets[rho] for rho in live)
    last = max(offsets[rho] + counts[rho] - 1 for rho in live)
    shifted = tuple(tuple((q - off, t) for q, t in ts) for ts, off in zip(per_phase, offsets))
    return PhasePlan(
        s,
        kernel,
        width,
        offsets,
        shifted,
        counts,
        first,
        last - first + 1,
        -first,
        last + width - in_len,
    )


def _outside_inference(cached: Tensor) -> Tensor:
    """A cached constant as the current mode can use it: one made under
    ``torch.inference_mode`` (the first call of a shape inside a ``predict``, say) is an
    inference tensor, which autograd refuses to save, so outside that mode a copy of it."""
    if cached.is_inference() and not inference_mode_on():
        return cached.clone()
    return cached


@lru_cache(maxsize=256)
def _phase_matrix(plan: PhasePlan, dtype, device) -> Tensor:
    """The 0/1 matrix ``A`` of shape (stride*width, kernel): ``A[rho*width + j, t] = 1`` iff phase
    rho reads kernel tap t at window position j."""
    a = empty(plan.stride * plan.width, plan.kernel, dtype=dtype, device=device).zero_()
    for rho, taps in enumerate(plan.taps):
        for j, t in taps:
            a[rho * plan.width + j, t] += 1
    return a


@lru_cache(maxsize=256)
def _phase_kron(py: PhasePlan, px: PhasePlan, dtype, device) -> Tensor:
    """``Ay (x) Ax``: (sy*Uy * sx*Ux, kh * kw), so that both dims combine in one matmul (in
    bfloat16 each small matmul cost more in its call than in its work: two matmuls per
    combine were 0.25 ms of the default network's training step)."""
    return _kron(_phase_matrix(py, dtype, device), _phase_matrix(px, dtype, device))


def _kron(ay: Tensor, ax: Tensor) -> Tensor:
    """The Kronecker product: ``K[(a, b), (t, u)] = ay[a, t] ax[b, u]``."""
    return (ay[:, None, :, None] * ax[None, :, None, :]).reshape(
        ay.shape[0] * ax.shape[0], ay.shape[1] * ax.shape[1]
    )


def combine(wk: Tensor, py: PhasePlan, px: PhasePlan) -> Tensor:
    """``W_eff`` (Uy*Ux*Cin, sy*sx*Cout) from a kernel ``wk`` laid out (kh, kw, Cin, Cout).

    ``W_eff[(jy, jx, ci), (ry, rx, co)]
    = sum_{ty, tx} Ay[ry, jy, ty] Ax[rx, jx, tx] wk[ty, tx, ci, co]``.
    """
    kh, kw, ci, co = wk.shape
    t = _outside_inference(_phase_kron(py, px, wk.dtype, wk.device)).matmul(
        wk.reshape(kh * kw, ci * co)
    )
    t = t.view(py.stride, py.width, px.stride, px.width, ci, co).permute(1, 3, 4, 0, 2, 5)
    return t.reshape(py.width * px.width * ci, py.stride * px.stride * co)


def uncombine(g_eff: Tensor, py: PhasePlan, px: PhasePlan, kernel_shape: tuple) -> Tensor:
    """Adjoint of :func:`combine`: the gradient wrt ``wk`` (kh, kw, Cin, Cout) from one wrt
    ``W_eff``."""
    kh, kw, ci, co = kernel_shape
    t = g_eff.view(py.width, px.width, ci, py.stride, px.stride, co).permute(3, 0, 4, 1, 2, 5)
    t = t.reshape(py.stride * py.width * px.stride * px.width, ci * co)
    kron = _outside_inference(_phase_kron(py, px, g_eff.dtype, g_eff.device))
    return kron.t().matmul(t).view(kh, kw, ci, co)


# Nearest upsampling by s followed by a convolution (kernel k, dilation d, padding p) is one
# transposed convolution with stride s, padding d(k-1) - p and a kernel of d(k-1) + s taps per
# dim: y[o] = sum_t w[t] x[(o - p + d t) // s] puts w[t] on the offsets e = r - d t + d(k-1)
# for r < s, so the combined kernel is kc[e] = sum_t A[e, t] w[t] with A[e, t] = 1 iff
# 0 <= e + d t - d(k-1) < s.


@lru_cache(maxsize=64)
def _nearest_matrix(kernel: tuple, scale: tuple, dilation: tuple, dtype, device) -> Tensor:
    """``A_y`` (x) ``A_x`` of the section comment: (k2y * k2x, kh * kw), one matmul for both
    dims (small matmuls cost more in calls than in work)."""
    per_dim = []
    for k, s, d in zip(kernel, scale, dilation):
        a = empty(d * (k - 1) + s, k, dtype=dtype, device=device).zero_()
        for t in range(k):
            a[d * (k - 1) - d * t : d * (k - 1) - d * t + s, t] = 1
        per_dim.append(a)
    return _kron(*per_dim)


def nearest_conv_kernel(weight: Tensor, scale: tuple, dilation: tuple) -> Tensor:
    """The transposed convolution's kernel [C, O, k2y, k2x] equal to nearest upsampling by
    ``scale`` then the convolution with ``weight`` [O, C, kh, kw] (see the section comment);
    a view whose :func:`conv_matrix` needs no copy."""
    o, c, kh, kw = weight.shape
    a = _outside_inference(_nearest_matrix((kh, kw), scale, dilation, weight.dtype, weight.device))
    m = a.matmul(weight.permute(2, 3, 0, 1).reshape(kh * kw, o * c))  # (k2y*k2x, O*C)
    k2y = dilation[0] * (kh - 1) + scale[0]
    return m.view(k2y, -1, o, c).permute(3, 2, 0, 1)


def nearest_conv_kernel_grad(d_kernel: Tensor, scale: tuple, dilation: tuple, shape) -> Tensor:
    """Adjoint of :func:`nearest_conv_kernel`: the gradient wrt ``weight`` (``shape``
    [O, C, kh, kw]) from one wrt the combined kernel [C, O, k2y, k2x]."""
    o, c, kh, kw = shape
    a = _outside_inference(
        _nearest_matrix((kh, kw), scale, dilation, d_kernel.dtype, d_kernel.device)
    )
    t = a.t().matmul(d_kernel.permute(2, 3, 1, 0).reshape(a.shape[0], o * c))
    return t.view(kh, kw, o, c).permute(2, 3, 0, 1).contiguous()


def phase_slices(py: PhasePlan, px: PhasePlan):
    """For each output phase: (rho_y, rho_x, slice of window starts in y, same in x)."""
    for ry in range(py.stride):
        for rx in range(px.stride):
            if py.counts[ry] and px.counts[rx]:
                y0 = py.offsets[ry] - py.first_start
                x0 = px.offsets[rx] - px.first_start
                yield ry, rx, slice(y0, y0 + py.counts[ry]), slice(x0, x0 + px.counts[rx])


def interleaved(r: Tensor, py: PhasePlan, px: PhasePlan) -> Tensor | None:
    """All phases of ``r`` (N, Ry, Rx, sy, sx, C) as one strided view shaped like the output,
    (N, My, sy, Mx, sx, C), or None when no such view exists.

    ``y[s*m + rho] = r[m + offsets[rho] - first_start, rho]``: when the offsets grow by a
    constant step per phase (always for stride 2) and every phase has the same number of
    outputs, the phase index is one more strided dimension, and the interleave is one copy --
    unless the offsets fall faster than the phases advance (stride 2 with dilation 3: a
    negative stride, which a view cannot have).
    """
    per_dim = []  # (stride of m, stride of the phase) in the output-shaped view, y then x
    for plan, dim_stride, phase_stride in (
        (py, r.stride(1), r.stride(3)),
        (px, r.stride(2), r.stride(4)),
    ):
        offsets = plan.offsets
        step = offsets[1] - offsets[0] if plan.stride > 1 else 0
        even = all(o == offsets[0] + i * step for i, o in enumerate(offsets))
        if not even or len(set(plan.counts)) != 1:
            return None
        if step * dim_stride + phase_stride < 0:  # offsets falling fast (stride 2, dilation 3)
            return None
        per_dim.append((dim_stride, step * dim_stride + phase_stride))
    (m_y, phase_y), (m_x, phase_x) = per_dim
    start = (py.offsets[0] - py.first_start) * m_y + (px.offsets[0] - px.first_start) * m_x
    return r.as_strided(
        (r.shape[0], py.counts[0], py.stride, px.counts[0], px.stride, r.shape[5]),
        (r.stride(0), m_y, phase_y, m_x, phase_x, r.stride(5)),
        r.storage_offset() + start,
    )


def polyphase_forward(
    x: Tensor,
    w_eff: Tensor,
    bias: Tensor | None,
    py: PhasePlan,
    px: PhasePlan,
    out_hw: tuple,
    *,
    keep_cols: bool = True,
    out: Tensor | None = None,
    add: bool = False,
):
    """Apply an upsampling map given by ``W_eff`` (see :func:`combine`) to an NHWC tensor.

    Returns ``(y, cols)``: ``y`` of shape (N, Ly, Lx, Cout) and the (Uy, Ux)-window
    im2col matrix of the padded input, which the weight gradient needs. With
    ``keep_cols=False`` (``cols`` is then None) the im2col matrix is formed a block at a time
    (:func:`im2col_matmul`), or, in float32 / float64 from at least WIDE_TAPS input channels,
    for a thin output (fewer than THIN channels per phase) or a large input
    (:func:`phase_taps_pay`), not at all: the (Uy, Ux) windows are then taps of the
    implicit-GEMM engine with stride 1. A wide output of small images is faster by blocks --
    one matmul with K = Uy*Ux*C instead of Uy*Ux tap matmuls with K = C over a frame of
    padded rows: 48 -> 48, k4 s2, float32, 100 x 8 x 8 inputs 3.4 -> 2.7 ms, 25 x 16 x 16
    2.5 -> 2.2 ms; the default network's float32 training step 4% faster (2-core Xeon with
    AMX).

    The phases are interleaved by one strided copy, except for a thin output (fewer than THIN
    channels, an image): there ``y`` is a view of channels-first (N, C, H, W) memory filled
    phase by phase, as one copy with 3-channel runs was 3-4x slower (the default network's
    last layer, batch 100: 0.53 against 0.14 ms; 2-core Xeon), and an NCHW output meets the
    loss target and the caller's images in their own layout. With ``out``, an (N, Ly, Lx,
    Cout) tensor -- contiguous, or for a thin output a view of channels-first memory -- the
    output is written there; with ``add`` as well, added to ``out`` (any strides) in place,
    read from the phases' results as they lie (no interleaved copy; ``out`` must not overlap
    ``x``, which blocks of images read after earlier blocks wrote). An output by taps runs by
    blocks of images in float32 / float64 (:func:`image_blocks`).
    """
    co = w_eff.shape[1] // (py.stride * px.stride)
    taps = phase_taps_pay(x, co) and s2d_applies(
        x, (py.width, px.width), (1, 1), (1, 1), stride_one=True
    )
    if not keep_cols and taps:
        plan = _taps_plan(x, py, px)
        blocks = list(
            image_blocks(x.shape[0], plan.grid[0] * plan.grid[1] * x.shape[3] * x.element_size())
        )
        if len(blocks) > 1:
            return _by_image_blocks(x, w_eff, bias, py, px, out_hw, blocks, out, add), None
        r, cols = _phase_results_by_taps(x, w_eff, bias, py, px, plan), None
    else:
        r, cols = _phase_results_by_im2col(x, w_eff, bias, py, px, keep_cols)
    return _interleave(r, py, px, out_hw, out, add), cols


def _taps_plan(x: Tensor, py: PhasePlan, px: PhasePlan) -> S2DPlan:
    """The plan of the (Uy, Ux) windows as stride-1 taps of the implicit-GEMM engine."""
    windows, pads = (py.width, px.width), (py.pad_before, px.pad_before)
    return s2d_plan(x.shape[0], x.shape[1:3], windows, (1, 1), pads, (py.starts, px.starts))


def _phase_results_by_taps(x, w_eff, bias, py, px, plan: S2DPlan) -> Tensor:
    """The phases' results ``r`` (N, My, Mx, sy, sx, Cout), a strided view of the taps'
    sums (:func:`tap_sum`)."""
    n, s = x.shape[0], py.stride * px.stride
    co = w_eff.shape[1] // s
    w_taps = w_eff.view(py.width, px.width, -1, w_eff.shape[1])
    r4 = tap_sum(space_to_depth(x, plan), w_taps, None if bias is None else bias.repeat(s), plan, n)
    st = r4.stride()
    return r4.as_strided(
        (n, py.starts, px.starts, py.stride, px.stride, co),
        (st[0], st[1], st[2], px.stride * co * st[3], co * st[3], st[3]),
        r4.storage_offset(),
    )


def _phase_results_by_im2col(x, w_eff, bias, py, px, keep_cols: bool):
    """``(r, cols)``: the phases' results (N, My, Mx, sy, sx, Cout) by one im2col matmul
    (:func:`conv_forward`; by blocks, ``cols`` None, unless ``keep_cols``)."""
    s = py.stride * px.stride
    r2, cols = conv_forward(
        x,
        w_eff,
        None if bias is None else bias.repeat(s),
        (py.width, px.width),
        (1, 1),
        (py.pad_before, px.pad_before),
        (1, 1),
        (py.starts, px.starts),
        keep_cols,
    )
    return r2.view(x.shape[0], py.starts, px.starts, py.stride, px.stride, -1), cols


def _by_image_blocks(x, w_eff, bias, py, px, out_hw, blocks, out, add) -> Tensor:
    """:func:`polyphase_forward` by taps, a block of images at a time, into one output (or
    ``out``; channels-first memory for a thin output, as the docstring says)."""
    n, co = x.shape[0], w_eff.shape[1] // (py.stride * px.stride)
    thin = co < direct.THIN
    if thin:
        y = x.new_empty(n, co, out_hw[0], out_hw[1]) if out is None else to_nchw(out)
    else:
        y = x.new_empty(n, out_hw[0], out_hw[1], co) if out is None else out
    for n0, n1 in blocks:
        part = to_nhwc(y[n0:n1]) if thin else y[n0:n1]
        polyphase_forward(x[n0:n1], w_eff, bias, py, px, out_hw, keep_cols=False, out=part, add=add)
    return to_nhwc(y) if thin else y


def _interleave(r: Tensor, py: PhasePlan, px: PhasePlan, out_hw, out, add: bool) -> Tensor:
    """The (N, Ly, Lx, Cout) output whose phase (ry, rx) is ``r[..., ry, rx, :]``: one strided
    copy where :func:`interleaved` gives a view, else a copy per phase; a thin output phase
    by phase into channels-first memory (see :func:`polyphase_forward`). Into ``out`` if
    given, added to it with ``add``."""
    n, co = r.shape[0], r.shape[5]
    put = Tensor.add_ if add else Tensor.copy_
    thin = co < direct.THIN  # then phase by phase into channels-first memory
    view = None if thin else interleaved(r, py, px)
    if view is not None and out is not None:
        put(out.view(view.shape), view)
        return out
    if view is not None:
        return view.contiguous().view(n, out_hw[0], out_hw[1], co)
    if out is None:
        out = (
            r.new_empty(n, co, *out_hw).permute(0, 2, 3, 1) if thin else r.new_empty(n, *out_hw, co)
        )
    (r0, r1, r2, r3, r4, r5), (y0, y1, y2, y3) = r.stride(), out.stride()
    for ry, rx, sy, sx in phase_slices(py, px):  # each side one strided view (ops: 3, not 9)
        size = (n, sy.stop - sy.start, sx.stop - sx.start, co)
        at = r.storage_offset() + sy.start * r1 + sx.start * r2 + ry * r3 + rx * r4
        src = r.as_strided(size, (r0, r1, r2, r5), at)
        at = out.storage_offset() + ry * y1 + rx * y2
        put(out.as_strided(size, (y0, py.stride * y1, px.stride * y2, y3), at), src)
    return out


# A wide output (THIN channels or more per phase) is computed by shifted-view taps as well,
# rather than by blocks of its im2col matrix, on inputs of at least PHASE_TAPS_WIDTH columns and
# PHASE_TAPS_PIXELS pixels (N H W) in float32 / float64: no im2col copy, and MKL's generic
# float32 kernels run the taps' K = C about as fast as K = Uy Ux C there; narrower images lose
# to the padding columns the taps compute and ignore (docs/performance.md, 'The engines'
# constants').
PHASE_TAPS_WIDTH = 32
PHASE_TAPS_PIXELS = 4096


def phase_taps_pay(x: Tensor, co: int) -> bool:
    """Whether :func:`polyphase_forward` takes taps for the NHWC ``x`` and ``co`` output
    channels per phase: a thin output always, a wide one on a large input (see above)."""
    n, h, w = x.shape[:3]
    return co < direct.THIN or (w >= PHASE_TAPS_WIDTH and n * h * w >= PHASE_TAPS_PIXELS)


def polyphase_cols(x: Tensor, py: PhasePlan, px: PhasePlan) -> Tensor:
    """The im2col matrix of :func:`polyphase_forward` (what its ``keep_cols`` returns)."""
    window, pads = (py.width, px.width), (py.pad_before, px.pad_before)
    return conv_cols(x, window, (1, 1), pads, (1, 1), (py.starts, px.starts))


def polyphase_backward(
    g: Tensor,
    cols: Tensor | None,
    w_eff: Tensor,
    py: PhasePlan,
    px: PhasePlan,
    input_grad: bool = True,
):
    """Gradients of :func:`polyphase_forward` wrt ``W_eff`` (None without ``cols``) and
    (unless ``input_grad`` is False, then ``None``) wrt its input ``x`` (NHWC), for the im2col
    matrix ``cols`` of ``x`` (:func:`polyphase_cols`). In 16-bit dtypes ``dx``'s column
    products and their col2im sums run in float32 on the 16-bit values, rounded once at the
    end, as a float32-accumulating convolution does (summed rounded products lost up to a
    third of ``dx`` where the window offsets' terms cancel: ``upsample`` with padding above
    ``d (k - 1)``, its one path here in lower precisions, whose weight gradient comes from
    :func:`~n2nfunc.kernels.nearest_conv_weight_grad`)."""
    n, co = g.shape[0], g.shape[3]
    dr = g.new_zeros(n, py.starts, px.starts, py.stride, px.stride, co)
    view = interleaved(dr, py, px)
    if view is not None:
        view.copy_(g.reshape(view.shape))
    else:
        for ry, rx, sy, sx in phase_slices(py, px):
            dr[:, sy, sx, ry, rx] = g[:, ry :: py.stride, rx :: px.stride]
    dr = dr.view(-1, py.stride * px.stride * co)
    low = g.dtype if g.element_size() < 4 else None
    if low is not None:
        dr, w_eff = dr.float(), w_eff.float()
    d_eff = None if cols is None else reduce_matmul(dr.t(), cols).t()
    if not input_grad:
        return d_eff, None
    dcols = dr.matmul(w_eff.t()).view(n, py.starts, px.starts, py.width, px.width, -1)
    dx = unpad(
        col2im(dcols, (py.starts, px.starts), (py.width, px.width)),
        py.pad_before,
        py.pad_after,
        px.pad_before,
        px.pad_after,
    )
    return d_eff, dx if low is None else dx.to(dtype=low)
