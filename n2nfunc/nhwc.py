"""Layout helpers for images stored channels-last (N, H, W, C).

The layers take and return tensors of PyTorch's logical shape (N, C, H, W), but
compute on the channels-last view ``x.permute(0, 2, 3, 1)``: an im2col row is then
a contiguous run of ``kh * kw * C`` numbers and a matmul's (rows, C) output *is*
the next activation, with no layout copy. Outputs are returned as
``y_nhwc.permute(0, 3, 1, 2)``, i.e. (N, C, H, W) tensors in channels-last memory, except
thin outputs (fewer than ``kernels.direct.THIN`` channels): those of upsampling maps are written
phase by phase into (N, C, H, W) memory (``kernels.polyphase_forward``), and those that
``kernels.im2col_matmul`` computes (a 16-bit ``apply``) channels-first, in (C, N, H, W) memory.
Every layer reads any of these layouts; use ``reshape``, not ``view``, to flatten one.
"""

from torch import Tensor


def to_nhwc(x: Tensor) -> Tensor:
    """View a (N, C, H, W) tensor as (N, H, W, C); no copy."""
    return x.permute(0, 2, 3, 1)


def to_nchw(x: Tensor) -> Tensor:
    """View a (N, H, W, C) tensor as (N, C, H, W); no copy."""
    return x.permute(0, 3, 1, 2)


def reads(out_hw: tuple, kernel: tuple, stride: tuple, dilation: tuple) -> tuple:
    """The (padded) input size that ``out_hw`` outputs of a convolution read, per spatial dim:
    ``(o - 1) s + d (k - 1) + 1``."""
    return tuple(
        (o - 1) * s + d * (k - 1) + 1 for o, k, s, d in zip(out_hw, kernel, stride, dilation)
    )


def pads_to_read(x: Tensor, kernel, stride, padding, dilation, out_hw) -> tuple:
    """``(top, bottom, left, right)`` that put the NHWC ``x`` on exactly the grid that
    ``out_hw`` outputs of a convolution read (:func:`reads`; negative: crop that side)."""
    (ih, iw), (ph, pw) = reads(out_hw, kernel, stride, dilation), padding
    return ph, ih - x.shape[1] - ph, pw, iw - x.shape[2] - pw


def pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Zero-pad the spatial dims of an NHWC tensor into a fresh contiguous tensor.

    A negative amount crops that side instead. Only the border is zeroed; the
    interior is written once by the copy. In memory an image's border is a run before its
    first interior row (the top rows and the first left border), a run after its last (the
    last right border and the bottom rows), and between two interior rows one run (a right
    border and the next left border): one zero_ call for each kind of run, the first and the
    last together when they are of one length, as in the usual symmetric padding (two calls,
    each over runs ``c`` times longer than a column-by-column view's: a 3-channel image's
    border 0.14 -> 0.05 ms at 100 x 32 x 32).
    """
    n, h, w, c = x.shape
    out = x.new_empty(n, h + top + bottom, w + left + right, c)
    ho, wo = out.shape[1], out.shape[2]
    sn, sh, sw, sc = out.stride()
    t, b, lf, r = max(top, 0), max(bottom, 0), max(left, 0), max(right, 0)
    rows, cols = ho - t - b, wo - lf - r
    if not out.numel() or rows <= 0 or cols <= 0:  # (no interior: all border)
        return out.zero_()
    lead, trail, gap = t * sh + lf * sw, b * sh + r * sw, (lf + r) * sw
    if lead and lead == trail:
        out.as_strided((n, 2, lead), (sn, sn - lead, 1)).zero_()
    else:
        for start, size in ((0, lead), (sn - trail, trail)):
            if size:
                out.as_strided((n, size), (sn, 1), start).zero_()
    if gap and rows > 1:
        out.as_strided((n, rows - 1, gap), (sn, sh, 1), lead + cols * sw).zero_()
    cropped = (
        x
        if min(top, bottom, left, right) >= 0
        else x[:, max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]
    )
    out.as_strided((n, rows, cols, c), (sn, sh, sw, sc), lead).copy_(cropped)
    return out


def row_unrolled(x: Tensor, pads: tuple, hp: int, wo: int, kw: int) -> Tensor:
    """``z[n, r, j, b] = xp[n, r, j + b]`` as a contiguous (N, Hp, Wo, kw, C) tensor, ``xp``
    the NHWC ``x`` padded by ``pads`` (``(top, bottom, left, right)``, negative: cropped):
    the windows of a stride-1 convolution along W, kw times the input. ``hp`` and ``wo``
    fix the size (``h + top + bottom`` and ``w + left + right - kw + 1`` from the callers;
    the bottom and right pads are read from them).

    Written from ``x`` itself, not from a padded copy (one pass over the input fewer: 8 x
    64 x 64 x 32, kw = 3: 0.61 -> 0.48 ms; 8 x 32 x 32 x 64: 0.36 -> 0.29 ms; 2-core Xeon):
    the columns whose kw taps all read ``x`` in one strided copy; the edge columns, whose
    taps reach the padding, column by column -- or, where there is one on each side with
    as many taps (a 3 x 3 kernel with padding 1), both in one copy and one ``zero_`` (two
    points always lie on a line of a strided view); the padding rows by one ``zero_`` where
    there are as many above as below, else two."""
    n, h, w, c = x.shape
    top, _, left, _ = pads
    z = x.new_empty(n, hp, wo, kw, c)
    r0, r1 = max(top, 0), min(hp, top + h)  # the rows of z that hold rows of x
    if r1 <= r0:
        return z.zero_()
    zn, zr, zj = hp * wo * kw * c, wo * kw * c, kw * c
    sn, sh, sw, sc = x.stride()
    rows, base = r1 - r0, x.storage_offset() + (r0 - top) * sh

    def at(j: int, b: int) -> int:  # where z holds (r0, j, b)
        return r0 * zr + j * zj + b * c

    def src(j: int, b: int) -> int:  # where x holds the pixel that (r0, j, b) reads
        return base + (j + b - left) * sw

    if r0 and r0 == hp - r1:  # as many padding rows above as below: one zero_
        z.as_strided((n, 2, r0 * zr), (zn, r1 * zr, 1)).zero_()
    else:
        for a, b in ((0, r0), (r1, hp)):
            if b > a:
                z.as_strided((n, (b - a) * zr), (zn, 1), a * zr).zero_()
    j0, j1 = max(left, 0), min(wo, w + left - kw + 1)  # the columns all of whose taps read x
    if j1 > j0:
        shape = (n, rows, j1 - j0, kw, c)
        z.as_strided(shape, (zn, zr, zj, c, 1), at(j0, 0)).copy_(
            x.as_strided(shape, (sn, sh, sw, sw, sc), src(j0, 0))
        )
    edges = [*range(j0), *range(j1, wo)] if j1 > j0 else range(wo)
    spans = [(j, max(0, left - j), min(kw, w + left - j)) for j in edges]  # taps reading x
    if len(spans) == 2 and spans[0][2] - spans[0][1] == spans[1][2] - spans[1][1] > 0:
        (ja, a0, a1), (jb, b0, b1) = spans
        shape = (n, rows, 2, a1 - a0, c)
        z.as_strided(shape, (zn, zr, at(jb, b0) - at(ja, a0), c, 1), at(ja, a0)).copy_(
            x.as_strided(shape, (sn, sh, src(jb, b0) - src(ja, a0), sw, sc), src(ja, a0))
        )
        zeros = [(at(ja, 0), a0), (at(ja, a1), kw - a1), (at(jb, 0), b0), (at(jb, b1), kw - b1)]
    else:
        zeros = []
        for j, b0, b1 in spans:
            if b1 > b0:
                column = (n, rows, b1 - b0, c)
                z.as_strided(column, (zn, zr, c, 1), at(j, b0)).copy_(
                    x.as_strided(column, (sn, sh, sw, sc), src(j, b0))
                )
            zeros += [(at(j, 0), min(b0, kw)), (at(j, max(b0, b1)), kw - max(b0, b1))]
    zeros = [(at_, taps) for at_, taps in zeros if taps > 0]
    if len(zeros) == 2 and zeros[0][1] == zeros[1][1]:  # both in one zero_
        (o0, taps), (o1, _) = zeros
        z.as_strided((n, rows, 2, taps * c), (zn, zr, o1 - o0, 1), o0).zero_()
    else:
        for at_, taps in zeros:
            z.as_strided((n, rows, taps * c), (zn, zr, 1), at_).zero_()
    return z


def unpad(g: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Adjoint of :func:`pad` for amounts >= 0: the padded positions dropped (a view)."""
    return g[:, top : g.shape[1] - bottom, left : g.shape[2] - right]


def windows(xp: Tensor, kernel: tuple, stride: tuple, dilation: tuple, out_hw: tuple) -> Tensor:
    """Strided view of all kernel windows of a padded NHWC tensor (no copy).

    Shape (N, Ho, Wo, kh, kw, C) with
    ``view[n, i, j, a, b, c] = xp[n, i*sh + a*dh, j*sw + b*dw, c]``.
    Reshaping it to (N*Ho*Wo, kh*kw*C) is the im2col matrix.
    """
    n, _, _, c = xp.shape
    sn, sh, sw, sc = xp.stride()
    return xp.as_strided(
        (n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
        (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc),
        xp.storage_offset(),
    )


def im2col(xp: Tensor, kernel: tuple, stride: tuple, dilation: tuple, out_hw: tuple) -> Tensor:
    """The (N*Ho*Wo, kh*kw*C) matrix of kernel windows (a copy unless the windows tile exactly).

    ``.contiguous()`` then ``.view``: on this strided view it is several times faster than
    ``.reshape``, which takes a slower generic copy path.
    """
    n, c = xp.shape[0], xp.shape[3]
    return (
        windows(xp, kernel, stride, dilation, out_hw)
        .contiguous()
        .view(n * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * c)
    )


def col2im(cols: Tensor, out_hw: tuple, kernel: tuple) -> Tensor:
    """Adjoint of :func:`windows` at stride 1 and dilation 1 (the kernel windows, before
    :func:`im2col` flattens them).

    ``cols`` has shape (N, Ho, Wo, kh, kw, C); returns the (N, Ho+kh-1, Wo+kw-1, C)
    tensor where every window position adds its column back: kh*kw shifted adds.
    """
    n, ho, wo, kh, kw, c = cols.shape
    out = cols.new_zeros(n, ho + kh - 1, wo + kw - 1, c)
    for a in range(kh):
        for b in range(kw):
            out[:, a : a + ho, b : b + wo].add_(cols[:, :, :, a, b])
    return out


def sum_of(views: list[Tensor], float32_sum: bool = False) -> Tensor:
    """The elementwise sum of equally shaped (strided) views, as a new tensor. A few adds of
    strided views are several times faster than one reduction over the interleaved axes of a
    6-d view (e.g. ``reshape(n, h, 2, w, 2, c).sum((2, 4))``). Three or more 16-bit views are
    added in float32 and rounded once, as torch's own 16-bit reductions accumulate; with
    ``float32_sum``, 16-bit views are always added in float32 and the float32 sum is returned,
    for the caller to round once after its own arithmetic (a mean whose sum overflows
    float16)."""
    low = views[0].element_size() == 2 and views[0].is_floating_point()
    if low and (float32_sum or len(views) > 2):
        total = views[0].float()
        for v in views[1:]:
            total.add_(v)
        return total if float32_sum else total.to(dtype=views[0].dtype)
    total = views[0] + views[1] if len(views) > 1 else views[0].clone()
    for v in views[2:]:
        total.add_(v)
    return total
