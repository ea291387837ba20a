"""Convolution kernels on channels-last (N, H, W, C) tensors.

Two formulations underlie every convolution-like layer and its gradients:

* **direct**: ``y = im2col(pad(x)) @ W`` -- one matmul with a
  (N*Ho*Wo, kh*kw*C) matrix of kernel windows, built from a strided view.
  Used for the forward pass of ``conv2d`` and the input gradient of
  ``conv_transpose2d`` (the adjoint of a transposed convolution is a convolution).

* **polyphase** (sub-pixel): a map that upsamples by ``s`` -- a transposed
  convolution, or nearest upsampling followed by a convolution -- is, for each of
  the ``s*s`` output phases ``(o mod s)``, a small stride-1 convolution of the
  low-resolution input. Writing output ``o = s*m + rho``,

      y[s*m + rho] = sum_j x[m + off[rho] + j] @ K[rho, j],   j < U,

  so all phases come from one matmul ``im2col_U(x) @ W_eff`` with
  ``W_eff`` of shape (U*U*Cin, s*s*Cout), followed by an interleave of the phases.
  Nearest x2 + 3x3 conv needs U = 2: 16 instead of 36 multiply-adds per
  low-resolution pixel and channel pair. Used for ``conv_transpose2d``,
  ``upsample`` and the input gradient of ``conv2d``.

``W_eff = combine(w)`` is linear in the kernel: ``W_eff[j, rho] = sum_t A[rho, j, t] w[t]``
per spatial dim, with a 0/1 matrix ``A`` from :func:`phase_plan`; its gradient is
the transposed map, :func:`uncombine`.

In float32 and float64 on the CPU, faster engines built from shifted views take over where
they apply (each says when): the implicit GEMM of strided layers over a space-to-depth copy
(:func:`s2d_applies`), the row taps of stride-1 layers (:func:`rows_applies`) and their
kernel taps on large images (:func:`kernel_taps_pay`); :func:`conv_and_weight_grad` and
:func:`conv_input_grad` choose among them.
"""

from functools import lru_cache
from typing import NamedTuple

from torch import Tensor, empty

from . import torch_order
from .nhwc import col2im, im2col, pad, sum_of, to_nchw, to_nhwc, unpad, windows

# ----------------------------------------------------------------------------- direct


def conv_forward(
    x: Tensor,
    wmat: Tensor,
    bias: Tensor | None,
    kernel: tuple,
    stride: tuple,
    padding: tuple,
    dilation: tuple,
    out_hw: tuple,
    keep_cols: bool = True,
):
    """Cross-correlation ``y[i] = sum_t x[s*i - p + d*t] @ w[t] (+ bias)`` on NHWC tensors.

    ``wmat`` is the kernel as a (kh*kw*Cin, Cout) matrix (see :func:`conv_matrix`).
    ``out_hw`` fixes the output size; input beyond what it needs is never read.
    Returns ``(y, cols)`` with ``y`` of shape (N, Ho, Wo, Cout) and ``cols`` the
    im2col matrix, kept for the weight gradient; with ``keep_cols=False`` ``cols`` is None
    and the im2col matrix is only formed a block at a time (:func:`im2col_matmul`).
    """
    xp = _padded_input(x, kernel, stride, padding, dilation, out_hw)
    if not keep_cols:
        return im2col_matmul(xp, wmat, bias, kernel, stride, dilation, out_hw), None
    cols = im2col(xp, kernel, stride, dilation, out_hw)
    del xp  # a padded copy is not needed during the matmul (the step's peak in bfloat16)
    y = cols.matmul(wmat) if bias is None else bias.addmm(cols, wmat)
    return y.view(x.shape[0], out_hw[0], out_hw[1], wmat.shape[1]), cols


def _padded_input(x: Tensor, kernel, stride, padding, dilation, out_hw) -> Tensor:
    """The NHWC input padded (or cropped) to exactly what ``out_hw`` outputs read."""
    pads = []
    for size, k, s, p, d, o in zip(x.shape[1:3], kernel, stride, padding, dilation, out_hw):
        needed = (o - 1) * s + d * (k - 1) + 1
        pads += [p, needed - size - p]
    return x if not any(pads) else pad(x, *pads)


def conv_cols(x: Tensor, kernel, stride, padding, dilation, out_hw) -> Tensor:
    """The im2col matrix of :func:`conv_forward` (rows: output pixels; kh*kw*C columns)."""
    xp = _padded_input(x, kernel, stride, padding, dilation, out_hw)
    return im2col(xp, kernel, stride, dilation, out_hw)


# Bytes of im2col matrix formed at a time by im2col_matmul: a block small enough to stay in
# cache and to be recycled by the memory allocator. Forming the whole matrix of a U-Net
# layer (8 x 64 x 64 pixels, 32 channels: 19 MB in bfloat16) cost more in fresh-page faults
# than its matmul (2-core AMD EPYC: 35,000 faults per bfloat16 training step). 4 MiB rather
# than 2: bfloat16 training steps 2-3% faster on a 2-core Xeon with 2 MB of L2 per core (U-Net
# 65.0 -> 63.3 ms, default network 16.7 -> 16.3 ms), float32 the same; 8 MiB no better.
BLOCK_BYTES = 1 << 22


def _output_blocks(n: int, ho: int, row_bytes: int):
    """``(n0, n1, r0, r1)``: output rows ``r0:r1`` of images ``n0:n1`` in blocks of about
    BLOCK_BYTES of im2col (``row_bytes`` per output row): whole images when one fits, else
    row ranges of one image."""
    image_bytes = ho * row_bytes
    if image_bytes <= BLOCK_BYTES:
        per = BLOCK_BYTES // image_bytes
        for n0 in range(0, n, per):
            yield n0, min(n, n0 + per), 0, ho
        return
    parts = -(-image_bytes // BLOCK_BYTES)
    per = -(-ho // parts)  # equal parts of an image, each at most about BLOCK_BYTES
    for i in range(n):
        for r0 in range(0, ho, per):
            yield i, i + 1, r0, min(ho, r0 + per)


def im2col_matmul(
    xp: Tensor,
    wmat: Tensor,
    bias: Tensor | None,
    kernel: tuple,
    stride: tuple,
    dilation: tuple,
    out_hw: tuple,
) -> Tensor:
    """``im2col(xp) @ wmat (+ bias)`` as an (N, Ho, Wo, Cout) tensor, for a padded NHWC
    ``xp``: the im2col rows are formed and multiplied a block at a time
    (:func:`_output_blocks`), each output row in one matmul over its whole window, so
    every sum accumulates inside one matmul kernel (float32 for bfloat16 operands)."""
    n = xp.shape[0]
    ho, wo = out_hw
    k, cout = wmat.shape
    thin = cout < THIN  # then y is computed channels-first, each block as W^T @ cols^T
    y = xp.new_empty(cout, n, ho, wo) if thin else xp.new_empty(n, ho, wo, cout)
    view = windows(xp, kernel, stride, dilation, out_hw)
    blocks = list(_output_blocks(n, ho, wo * k * xp.element_size()))
    buffer = xp.new_empty(max((n1 - n0) * (r1 - r0) for n0, n1, r0, r1 in blocks) * wo * k)
    for n0, n1, r0, r1 in blocks:  # one buffer for all blocks: one allocation, reused
        part = view[n0:n1, r0:r1]
        cols = buffer[: part.numel()].view(part.shape).copy_(part).view(-1, k)
        if thin:
            out, a, b = y[:, n0:n1, r0:r1].view(cout, -1), wmat.t(), cols.t()
        else:
            out, a, b = y[n0:n1, r0:r1].view(-1, cout), cols, wmat
        if bias is not None:
            out.copy_((bias[:, None] if thin else bias).expand_as(out))
        out.addmm_(a, b, beta=0 if bias is None else 1)
    return y.permute(1, 2, 3, 0) if thin else y


# Bytes of one temporary copy (an im2col or space-to-depth matrix) that the float32 / float64
# engines form at a time where nothing needs the whole batch's, for a block of images
# (:func:`image_blocks`). The whole batch's copies, alive beside the activations, put the
# default network's training step (batch 100) at 1.49x the peak of torch.nn's live tensors;
# in blocks of 4 MiB (two) at 1.00x, 0.94-1.00x as fast; 2 MiB blocks made the step 10%
# slower (smaller matmuls, more ops; 2-core AMD EPYC).
GRAD_BLOCK_BYTES = 1 << 22


def image_blocks(n: int, image_bytes: int):
    """``(n0, n1)``: ``n`` images in blocks as equal as can be of at most GRAD_BLOCK_BYTES
    (``image_bytes`` an image), one image at least."""
    per = max(1, GRAD_BLOCK_BYTES // max(image_bytes, 1))
    per = -(-n // -(-n // per))  # as many blocks, sized evenly
    for n0 in range(0, n, per):
        yield n0, min(n, n0 + per)


class ColsWeightGrad(NamedTuple):
    """``a -> sum_rows a^T im2col(x)`` as a weight [A, C, kh, kw] (:func:`weight_grad`), for
    the NHWC ``x`` of :func:`conv_forward`, with the im2col matrix formed again when asked,
    a block of images at a time (:func:`image_blocks`), not kept from the forward pass.

    Used in float32 / float64 for strided convolutions whose matrix is at least 4x their input
    (kh kw >= 4 sh sw): the default network's first layer (3 -> 48 channels, k4 s2, batch 100)
    held 4.7 MB of it through the whole backward pass, which put its training step's peak of
    live tensors at 1.22x torch.nn's; forming it again costs 0.4-0.8 ms of a 40 ms step. The
    reference network's k3 s2 layers (2.25x their input) keep theirs: forming them again made
    its step 5-8% slower, for a peak already 0.82x torch.nn's (2-core AMD EPYC)."""

    x: Tensor
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    out_hw: tuple

    def __call__(self, a: Tensor) -> Tensor:
        geometry = (self.kernel, self.stride, self.padding, self.dilation, self.out_hw)
        return cols_products(self.x, geometry, a)[1]


def cols_products(
    x: Tensor, geometry: tuple, a: Tensor, wmat: Tensor | None = None, bias: Tensor | None = None
):
    """``(im2col(x) @ wmat (+ bias) or None, sum_rows a^T im2col(x))``, the second as a
    weight [A, C, kh, kw], for the NHWC ``x`` and ``geometry`` ``(kernel, stride, padding,
    dilation, out_hw)`` of :func:`conv_forward`, forming the im2col matrix a block of images
    at a time (:func:`image_blocks`); float32 / float64."""
    kernel, _, _, _, (ho, wo) = geometry
    n, k = x.shape[0], kernel[0] * kernel[1] * x.shape[3]
    y = None if wmat is None else x.new_empty(n, ho, wo, wmat.shape[1])

    def share(n0: int, n1: int) -> Tensor:
        cols = conv_cols(x[n0:n1], *geometry)
        if y is not None and wmat is not None:
            rows_ = y[n0:n1].view(-1, wmat.shape[1])
            if bias is None:
                rows_.addmm_(cols, wmat, beta=0)
            else:
                rows_.copy_(bias.expand_as(rows_)).addmm_(cols, wmat)
        return reduce_matmul(rows(a[n0:n1]).t(), cols)

    total = sum_over_blocks(n, ho * wo * k * x.element_size(), share)
    return y, matrix_to_weight(total, kernel)


def sum_over_blocks(n: int, image_bytes: int, share) -> Tensor:
    """``sum share(n0, n1)`` over the blocks of :func:`image_blocks` (n >= 1 images): each
    block's copies are freed, with ``share``'s locals, before the next block's are formed."""
    blocks = image_blocks(n, image_bytes)
    total = share(*next(blocks))
    for n0, n1 in blocks:
        total.add_(share(n0, n1))
    return total


def conv_matrix(weight: Tensor) -> Tensor:
    """A conv weight [out, in, kh, kw] as the (kh*kw*in, out) matrix that multiplies im2col rows."""
    o, c, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw * c, o)


def weight_grad(a2d: Tensor, cols: Tensor, kernel: tuple) -> Tensor:
    """``(a2d^T @ cols)`` reshaped to a [A, B, kh, kw] weight, for im2col ``cols`` of B channels.

    For a convolution ``a2d`` is the output gradient and the result is dL/dW [out, in, kh, kw];
    for a transposed convolution ``a2d`` is its input and ``cols`` the im2col of its
    output gradient, giving dL/dW [in, out, kh, kw].
    """
    return matrix_to_weight(reduce_matmul(a2d.t(), cols), kernel)


def matrix_to_weight(m: Tensor, kernel: tuple) -> Tensor:
    """The (A, kh*kw*B) matrix ``m`` (columns ordered as im2col's) as a contiguous weight
    [A, B, kh, kw]."""
    kh, kw = kernel
    return m.view(m.shape[0], kh, kw, -1).permute(0, 3, 1, 2).contiguous()


def rows(x: Tensor) -> Tensor:
    """An NHWC tensor as its (N*H*W, C) matrix of pixels (a view when contiguous)."""
    return x.reshape(-1, x.shape[-1])


# How many blocks reduce_matmul splits a long sum into (one per thread and more: 2 were as
# fast as 4 on 2 threads).
SPLIT = 4


def fast_width(n: int) -> int:
    """The smallest output width of at least ``n`` columns that MKL's float32 matmuls compute
    at full speed: a multiple of 8, at least 16 (one column is a matrix-vector product, fast
    as it is). Its generic kernels, which it runs on AMD CPUs, slow down on other widths:
    (33792, 72) @ (72, N) took 0.54 ms for N = 16, 1.94 ms for N = 9, 1.35 ms for N = 8 and
    1.55 ms for N = 27 against 0.95 ms for N = 32; its AVX-512 kernels took 0.47-0.50 ms for
    every N from 2 to 16 (2-core AMD EPYC)."""
    return n if n == 1 else max(16, -(-n // 8) * 8)


def _on_mkl_float32(t: Tensor) -> bool:
    """Whether a matmul with ``t`` runs in MKL's float32 kernels (:func:`fast_width`): a
    float32 CPU tensor (bfloat16 runs in oneDNN, a GPU in its own library)."""
    return t.device.type == "cpu" and t.dtype.is_floating_point and t.element_size() == 4


def widened(wmat: Tensor) -> Tensor:
    """``wmat`` (K, N) with zero columns appended up to :func:`fast_width` for MKL's float32
    kernels (a product with it, sliced to its first N columns, is the product with
    ``wmat``); ``wmat`` itself where it is that wide, or not float32 on the CPU."""
    k, n = wmat.shape
    width = fast_width(n)
    if width == n or not _on_mkl_float32(wmat):
        return wmat
    out = wmat.new_zeros(k, width)
    out[:, :n] = wmat
    return out


def reduce_matmul(lhs: Tensor, rhs: Tensor) -> Tensor:
    """``lhs @ rhs`` for a product dominated by its sum (``lhs`` (M, R), ``rhs`` (R, N), R >=
    4 max(M, N): a weight gradient, a sum over every pixel). In float32 / float64 the R terms
    are split into SPLIT blocks, multiplied as one batched matmul over strided views and the
    partial products added: one matmul with so small an output keeps a single thread busy
    (MKL splits the output, not the sum). 96 x 33664 by 33664 x 32: 1.18 -> 0.81 ms; 48 x 6400
    by 6400 x 768 2.27 -> 1.71 ms (2-core Xeon, 2 threads). Lower precisions (bfloat16,
    float16) keep one matmul, whose sum accumulates in float32 inside it. In MKL's float32
    kernels an output of a slow width N (:func:`fast_width`) and a fast height M is computed
    transposed, ``(rhs^T @ lhs^T)^T`` (48 x 8192 by 8192 x 27, the U-Net's first layer's
    weight gradient: 1.04 -> 0.59 ms; 2-core AMD EPYC)."""
    m, r = lhs.shape
    n = rhs.shape[1]
    if lhs.element_size() < 4 or r < 4 * max(m, n):
        return lhs.matmul(rhs)
    if _on_mkl_float32(lhs) and fast_width(n) != n and fast_width(m) == m:
        return reduce_matmul(rhs.t(), lhs.t()).t().contiguous()
    c = r // SPLIT
    (sm, sr), (sr2, sn) = lhs.stride(), rhs.stride()
    a = lhs.as_strided((SPLIT, m, c), (c * sr, sm, sr), lhs.storage_offset())
    b = rhs.as_strided((SPLIT, c, n), (c * sr2, sr2, sn), rhs.storage_offset())
    out = a.bmm(b).sum(0)
    if c * SPLIT < r:
        out.addmm_(lhs[:, c * SPLIT :], rhs[c * SPLIT :])
    return out


def channel_sums(x: Tensor) -> Tensor:
    """``sum_{n,h,w} x[n, h, w, c]`` of an NHWC tensor (a bias gradient), as ``rows(x).sum(0)``:
    PyTorch's sum accumulates 16-bit floats in float32, and float32 in cascades of partial
    sums: about 10x more accurate than a product with a vector of ones, and faster (float32,
    32768 x 32: 0.12 -> 0.05 ms, relative error 1.6e-6 -> 1.2e-7; 8192 x 64: 0.07 -> 0.02 ms;
    2-core AMD EPYC)."""
    return rows(x).sum(0)


# -------------------------------------------------------------------------- polyphase


class PhasePlan(NamedTuple):
    """How one spatial dim of an upsampling map splits into ``stride`` phases.

    Output ``o = stride*m + rho`` reads inputs ``m + offsets[rho] + j`` for ``j < width``
    through kernel taps ``taps[rho]`` = ((j, t), ...). ``counts[rho]`` outputs fall in
    phase rho; window starts run over ``first_start .. first_start + starts - 1``.
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
    if cached.is_inference() and not empty(0).is_inference():
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
    strides_ = []
    for plan, dim_stride, phase_stride in (
        (py, r.stride(1), r.stride(3)),
        (px, r.stride(2), r.stride(4)),
    ):
        offs = plan.offsets
        step = offs[1] - offs[0] if plan.stride > 1 else 0
        if any(o != offs[0] + i * step for i, o in enumerate(offs)) or len(set(plan.counts)) != 1:
            return None
        if step * dim_stride + phase_stride < 0:  # offsets falling fast (stride 2, dilation 3)
            return None
        strides_.append((dim_stride, step * dim_stride + phase_stride))
    (ry_, ryp), (rx_, rxp) = strides_
    start = (py.offsets[0] - py.first_start) * ry_ + (px.offsets[0] - px.first_start) * rx_
    return r.as_strided(
        (r.shape[0], py.counts[0], py.stride, px.counts[0], px.stride, r.shape[5]),
        (r.stride(0), ry_, ryp, rx_, rxp, r.stride(5)),
        r.storage_offset() + start,
    )


def polyphase_forward(
    x: Tensor,
    w_eff: Tensor,
    bias: Tensor | None,
    py: PhasePlan,
    px: PhasePlan,
    out_hw: tuple,
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
    n = x.shape[0]
    s = py.stride * px.stride
    co = w_eff.shape[1] // s
    bias_eff = None if bias is None else bias.repeat(s)
    cols = None
    taps = phase_taps_pay(x, co) and s2d_applies(
        x, (py.width, px.width), (1, 1), (1, 1), stride_one=True
    )
    if not keep_cols and taps:
        plan = s2d_plan(
            n,
            x.shape[1:3],
            (py.width, px.width),
            (1, 1),
            (py.pad_before, px.pad_before),
            (py.starts, px.starts),
        )
        image = plan.grid[0] * plan.grid[1] * x.shape[3] * x.element_size()
        blocks = list(image_blocks(n, image))
        if len(blocks) > 1:
            if co < THIN:  # channels-first memory (see below)
                y = x.new_empty(n, co, out_hw[0], out_hw[1]) if out is None else to_nchw(out)
            else:
                y = x.new_empty(n, out_hw[0], out_hw[1], co) if out is None else out
            for n0, n1 in blocks:
                part = to_nhwc(y[n0:n1]) if co < THIN else y[n0:n1]
                polyphase_forward(x[n0:n1], w_eff, bias, py, px, out_hw, False, part, add)
            return (to_nhwc(y) if co < THIN else y), None
        w_taps = w_eff.view(py.width, px.width, -1, w_eff.shape[1])
        r4 = tap_sum(space_to_depth(x, plan), w_taps, bias_eff, plan, n)
        st = r4.stride()
        r = r4.as_strided(
            (n, py.starts, px.starts, py.stride, px.stride, co),
            (st[0], st[1], st[2], px.stride * co * st[3], co * st[3], st[3]),
            r4.storage_offset(),
        )
    else:
        r2, cols = conv_forward(
            x,
            w_eff,
            bias_eff,
            (py.width, px.width),
            (1, 1),
            (py.pad_before, px.pad_before),
            (1, 1),
            (py.starts, px.starts),
            keep_cols,
        )
        r = r2.view(n, py.starts, px.starts, py.stride, px.stride, co)
    put = Tensor.add_ if add else Tensor.copy_
    if co < THIN:  # phase by phase into channels-first memory (see the docstring)
        y = x.new_empty(n, co, out_hw[0], out_hw[1]) if out is None else to_nchw(out)
        for ry, rx, sy, sx in phase_slices(py, px):
            src = r[:, sy, sx, ry, rx].permute(0, 3, 1, 2)
            put(y[:, :, ry :: py.stride, rx :: px.stride], src)
        return y.permute(0, 2, 3, 1), cols
    view = interleaved(r, py, px)
    if view is not None and out is not None:
        put(out.view(view.shape), view)
        return out, cols
    if view is not None:
        return view.contiguous().view(n, out_hw[0], out_hw[1], co), cols
    y = x.new_empty(n, out_hw[0], out_hw[1], co) if out is None else out
    for ry, rx, sy, sx in phase_slices(py, px):
        put(y[:, ry :: py.stride, rx :: px.stride], r[:, sy, sx, ry, rx])
    return y, cols


# A wide output (THIN channels or more per phase) is computed by shifted-view taps as well,
# rather than by blocks of its im2col matrix, on inputs of at least PHASE_TAPS_WIDTH columns and
# PHASE_TAPS_PIXELS pixels (N H W) in float32 / float64: no im2col copy, and MKL's generic
# float32 kernels run the taps' K = C about as fast as K = Uy Ux C there. Alone, forward, on a
# 2-core AMD EPYC: x2 + 3x3, 8 x 32 x 32, 64 -> 48 channels 1.11x, 32 -> 64 1.14x; one 96 x 96,
# 64 -> 48 1.12x; 4 x 64 x 64, 32 -> 32 1.22x; 48 -> 48 k4 s2 transposed, one 128 x 128 1.09x,
# 32 x 32 x 32 1.05x. Narrower images are even or slower (the padding columns the taps compute
# and ignore): 8 x 16 x 16 0.96-0.97x, the default network's 100 x 8 x 8 and 100 x 16 x 16
# 0.97x and 0.95x.
PHASE_TAPS_WIDTH = 32
PHASE_TAPS_PIXELS = 4096


def phase_taps_pay(x: Tensor, co: int) -> bool:
    """Whether :func:`polyphase_forward` takes taps for the NHWC ``x`` and ``co`` output
    channels per phase: a thin output always, a wide one on a large input (see above)."""
    n, h, w = x.shape[:3]
    return co < THIN or (w >= PHASE_TAPS_WIDTH and n * h * w >= PHASE_TAPS_PIXELS)


def polyphase_cols(x: Tensor, py: PhasePlan, px: PhasePlan) -> Tensor:
    """The im2col matrix of :func:`polyphase_forward` (what its ``keep_cols`` returns)."""
    window, pads = (py.width, px.width), (py.pad_before, px.pad_before)
    return conv_cols(x, window, (1, 1), pads, (1, 1), (py.starts, px.starts))


def polyphase_backward(
    g: Tensor, cols: Tensor, w_eff: Tensor, py: PhasePlan, px: PhasePlan, input_grad: bool = True
):
    """Gradients of :func:`polyphase_forward` wrt ``W_eff`` and (unless ``input_grad`` is
    False, then ``None``) wrt its input ``x`` (NHWC), for the im2col matrix ``cols`` of ``x``
    (:func:`polyphase_cols`). In 16-bit dtypes ``dx``'s column products and their col2im sums
    run in float32 on the 16-bit values, rounded once at the end, as a float32-accumulating
    convolution does (summed rounded products lost up to a third of ``dx`` where the window
    offsets' terms cancel: ``upsample`` with padding above ``d (k - 1)``, its one path here
    in lower precisions)."""
    n, co = g.shape[0], g.shape[3]
    dr = g.new_zeros(n, py.starts, px.starts, py.stride, px.stride, co)
    view = interleaved(dr, py, px)
    if view is not None:
        view.copy_(g.reshape(view.shape))
    else:
        for ry, rx, sy, sx in phase_slices(py, px):
            dr[:, sy, sx, ry, rx] = g[:, ry :: py.stride, rx :: px.stride]
    dr = dr.view(-1, py.stride * px.stride * co)
    d_eff = reduce_matmul(dr.t(), cols).t()
    if not input_grad:
        return d_eff, None
    low = g.dtype if g.element_size() < 4 else None
    if low is not None:
        dr, w_eff = dr.float(), w_eff.float()
    dcols = dr.matmul(w_eff.t()).view(n, py.starts, px.starts, py.width, px.width, -1)
    dx = unpad(
        col2im(dcols, (py.starts, px.starts), (py.width, px.width)),
        py.pad_before,
        py.pad_after,
        px.pad_before,
        px.pad_after,
    )
    return d_eff, dx if low is None else dx.to(dtype=low)


# --------------------------------------------------------- implicit GEMM (space-to-depth)
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
    thinner than WIDE_TAPS rows of z (the default network's first layer, 3 channels at
    stride 2: K = 12; one im2col matmul made its float32 training step 41.9 -> 40.1 ms).
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
    """Adjoint of :func:`s2d_weights`: tap gradients (Uy, Ux, sy*sx*C, O) -> [O, C, kh, kw]."""
    o, c, kh, kw = shape
    (uy, ux), (sy, sx) = plan.taps, plan.stride
    d = d_taps.view(uy, ux, sy, sx, c, o).permute(5, 4, 0, 2, 1, 3)
    return d.reshape(o, c, kh, kw)


def space_to_depth(x: Tensor, plan: S2DPlan) -> Tensor:
    """The padded NHWC input as flat z rows (N*Mh*Mw, sy*sx*C), ``z[(n, my, mx), (ry, rx, c)]
    = xp[n, sy*my + ry, sx*mx + rx, c]``.

    Written in one pass, a strided copy per phase (ry, rx) with only the padding zeroed,
    rather than padded first and rearranged by a second copy: half the memory traffic
    (``Model.predict`` of one 512 x 512 image 1.06-1.09x faster in float32; 2-core Xeon), and
    no moment holds both copies."""
    n, _, _, c = x.shape
    (mh, mw), (sy, sx) = plan.grid, plan.stride
    if (sy, sx) == (1, 1):
        return pad(x, *plan.pads).view(n * mh * mw, c)
    z = x.new_empty(n, mh, mw, sy, sx, c)
    top, _, left, _ = plan.pads
    for ry in range(sy):
        rows = _phase_span(ry, sy, top, x.shape[1], mh)
        for rx in range(sx):
            cols = _phase_span(rx, sx, left, x.shape[2], mw)
            phase = z[:, :, :, ry, rx]
            (m0, m1, i0), (k0, k1, j0) = rows, cols
            inner = phase[:, m0:m1]
            for border in (phase[:, :m0], phase[:, m1:], inner[:, :, :k0], inner[:, :, k1:]):
                if border.numel():  # empty slices skipped: a call each saved
                    border.zero_()
            if m1 > m0 and k1 > k0:
                inside = x[:, i0 : i0 + sy * (m1 - m0) : sy, j0 : j0 + sx * (k1 - k0) : sx]
                phase[:, m0:m1, k0:k1].copy_(inside)
    return z.view(n * mh * mw, sy * sx * c)


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


# Matmuls with an output this narrow run far below the GEMM peak (float32, 2048 x 432 by
# 432 x N on a 2-core AMD EPYC: N = 3 takes as long as N = 16): im2col_matmul computes them
# transposed, channels-first.
THIN = 8
# Below this many output channels the shifted-view taps share one matmul (tap_sum,
# s2d_conv_weight_grad): 8 x 64 x 64, 24 -> 3 channels, float32 fwd + bwd 9.0 -> 5.1 ms,
# 48 -> 3 channels 54.9 -> 9.2 ms; the default network's last layer (4 phases x 3 = 12
# outputs) float32 training step 41.9 -> 40.4 ms at batch 100 (2-core AMD EPYC).
THIN_TAPS = 16


# Tap weight gradients with at most this many outputs in all (taps x output channels), each
# reducing a z of at least 4 x as many columns as outputs, come from one matmul with g placed
# once per tap (see s2d_conv_weight_grad).
STACKED_TAPS = 256


# Below this many input channels a shifted-view tap (a matmul with K = channels) is too thin:
# one matmul with an im2col matrix (K = kh*kw*channels) is faster. On a 2-core AMD EPYC,
# 8 x 64 x 64: bfloat16 weight gradient of 3 -> 32 channels 1.6 vs 0.6 ms (a thin output is
# fine: its taps share one matmul, see tap_sum); float32 row taps (rows_applies), 3 -> 48
# channels fwd + weight gradient 5.5 vs 2.8 ms.
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
        wide = z.matmul(widened(wmat))[:, : wmat.shape[1]]  # (R, taps*O): the U-Net's output
        # layer (24 -> 3 channels, 3 row taps, 8 x 64 x 64) 1.94 -> 0.54 ms (2-core AMD EPYC)
        del z  # freed here when the caller passed a temporary (polyphase_forward): the
        # default network's float32 step at batch 100 peaked here, 37.5 -> 33.1 MB live
        wide = wide.view(-1, uy, ux, o)
        part = wide.shape[0] - (ux - 1)  # along x first: u[r, a] = sum_b wide[r + b, a, b]
        u = sum_of([wide[b : b + part, :, b] for b in range(ux)])
        del wide
        y = sum_of([u[a * mw : a * mw + rows, a] for a in range(uy)])
        if bias is not None:
            y.add_(bias)
        return _frame_view(y, n, plan)
    (mh, mw), ho, k = plan.grid, plan.out_hw[0], z.shape[1]
    per_image = z.view(n, mh * mw, k)
    length = ho * mw - (plan.taps[1] - 1)
    (a, b, shift), *rest = _shifts(plan)
    zs, w = per_image[:, shift : shift + length], w_taps[a, b].expand(n, k, o)
    if out is not None:  # (N, length, O): a block's rows (_s2d_conv_and_grad)
        y = out.baddbmm_(zs, w, beta=0) if bias is None else out.copy_(bias).baddbmm_(zs, w)
    else:
        y = zs.bmm(w) if bias is None else bias.expand(n, length, o).baddbmm(zs, w)
    for a, b, shift in rest:
        y.baddbmm_(per_image[:, shift : shift + length], w_taps[a, b].expand(n, k, o))
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


class TapWeightGrad(NamedTuple):
    """``g -> dW`` of the implicit-GEMM engine (shaped ``shape`` [O, C, kh, kw]) for a
    convolution of an ``in_hw`` input ``x`` (NHWC), whose space-to-depth copy ``z`` of the
    forward pass is formed again when the gradient is asked for: the input is kept anyway (by
    the activation before, or by the caller), the copy, with its padding, is larger and would
    be alive beside the later layers' backward passes (default network, float32, batch 100:
    the peak of live tensors 45.3 -> 39.1 MB).

    ``dW[a] = sum_r z[r]^T g[r - a]`` (:func:`s2d_conv_weight_grad`). Where the polyphase
    engine's im2col of ``g`` -- the (U x U)-window matrix of ``g`` padded by U - 1 that the
    input gradient multiplies (:func:`conv_input_grad`) -- has the z grid for its window
    starts, its column block ``j`` at row ``r`` is ``g[r + j - (U - 1)]``, what tap ``a = U - 1
    - j`` multiplies: ``dW = flip(cols^T @ z)``, one im2col copy of ``g`` instead of a frame of
    it per tap (the default network's transposed 48 -> 48 layer's kernel gradient, batch 100,
    float32: 2.80 -> 2.65 ms), which the input gradient then shares (:func:`_phase_grads`).

    The gradient is the sum of its blocks of images' (:meth:`block`, :func:`image_blocks`),
    so that z and the im2col of ``g`` exist for one block at a time."""

    x: Tensor
    plan: S2DPlan
    shape: tuple
    in_hw: tuple
    kept: Tensor | None = None  # z itself, where the gradient is asked for at once

    def z(self) -> Tensor:
        """The space-to-depth input of the forward pass (:func:`space_to_depth`)."""
        return space_to_depth(self.x, self.plan) if self.kept is None else self.kept

    def phase_plans(self) -> tuple[PhasePlan, PhasePlan] | None:
        """``(py, px)`` of the input gradient's polyphase engine when its im2col lines up with
        the z grid (see the class docstring), else None."""
        (kh, kw), (ho, wo), pads = self.shape[2:], self.plan.out_hw, self.plan.pads
        py = phase_plan("transpose", ho, self.in_hw[0], kh, self.plan.stride[0], pads[0], 1)
        px = phase_plan("transpose", wo, self.in_hw[1], kw, self.plan.stride[1], pads[2], 1)
        lined_up = all(
            p.width == u and p.pad_before == u - 1 and p.starts == m
            for p, u, m in zip((py, px), self.plan.taps, self.plan.grid)
        )
        return (py, px) if lined_up else None

    def image_bytes(self) -> int:
        """The bytes of z per image (the lined-up im2col of ``g`` is as large)."""
        (mh, mw), (sy, sx) = self.plan.grid, self.plan.stride
        return mh * mw * sy * sx * self.x.shape[3] * self.x.element_size()

    def block(self, n0: int, n1: int) -> "TapWeightGrad":
        """The same for images ``n0:n1`` of ``x`` (the gradient of a block of images)."""
        grid = self.plan.grid[0] * self.plan.grid[1]
        rows_ = self.plan.rows - (self.x.shape[0] - (n1 - n0)) * grid
        kept = None if self.kept is None else self.kept[n0 * grid : n1 * grid]
        return self._replace(x=self.x[n0:n1], plan=self.plan._replace(rows=rows_), kept=kept)

    def products(self, g: Tensor, plans, cols: Tensor | None = None) -> Tensor:
        """The raw sums for ``g`` that :meth:`finish` makes ``dW``: ``cols^T @ z`` with the
        lined-up im2col ``cols`` of ``g`` (formed here unless given) where ``plans`` (see
        :meth:`phase_plans`), else the tap gradients (:func:`s2d_conv_weight_grad`)."""
        if plans is None:
            return s2d_conv_weight_grad(self.z(), g, self.plan)
        if cols is None:
            cols = polyphase_cols(g, plans[0], plans[1])
        return reduce_matmul(cols.t(), self.z())

    def finish(self, sums: Tensor, plans) -> Tensor:
        """``dW`` from the (added) :meth:`products`."""
        if plans is not None:
            (uy, ux), o = self.plan.taps, self.shape[0]
            m = sums.view(uy, ux, o, -1)  # rows (jy, jx, o)
            sums = m.flip(0, 1).transpose(2, 3).contiguous()  # tap a = U - 1 - j
        return s2d_weight_grad_to_conv(sums, self.plan, self.shape)

    def __call__(self, g: Tensor) -> Tensor:
        """``dW`` for the NHWC output gradient ``g``, by blocks of images (their z and
        im2col copies formed a block at a time, :func:`image_blocks`)."""
        plans = self.phase_plans()

        def share(n0: int, n1: int) -> Tensor:
            return self.block(n0, n1).products(g[n0:n1], plans)

        return self.finish(sum_over_blocks(self.x.shape[0], self.image_bytes(), share), plans)


def _phase_grads(wg: TapWeightGrad, g: Tensor, weight: Tensor):
    """``(dW, dx)`` of a strided convolution of the implicit-GEMM engine from one im2col
    matrix of ``g`` (see :class:`TapWeightGrad`), or None where it does not line up (default
    network, 48 -> 48, k4 s2, float32, both gradients 5.6 -> 5.0 ms at batch 100, 2.15 -> 1.76
    ms at batch 32; 2-core Xeon)."""
    plans = wg.phase_plans()
    if plans is None or weight.shape[1] < THIN:
        return None
    w_eff = combine(weight.permute(2, 3, 0, 1), *plans)
    dx = g.new_empty(g.shape[0], *wg.in_hw, weight.shape[1])

    def share(n0: int, n1: int) -> Tensor:
        _, cols = polyphase_forward(g[n0:n1], w_eff, None, *plans, wg.in_hw, True, dx[n0:n1])
        return wg.block(n0, n1).products(g[n0:n1], plans, cols)

    return wg.finish(sum_over_blocks(g.shape[0], wg.image_bytes(), share), plans), dx


def _s2d_conv_and_grad(
    x: Tensor, w_taps: Tensor, bias: Tensor | None, wg: TapWeightGrad, a: Tensor
) -> tuple[Tensor, Tensor]:
    """``(y, dW)`` of the implicit-GEMM engine for the output gradient ``a``, both at once
    (:func:`conv_and_weight_grad`'s ``grad_for``): each block of images' space-to-depth copy
    gives its outputs (:func:`tap_sum`) and its share of ``dW``."""
    n, plans, plan = x.shape[0], wg.phase_plans(), wg.plan
    sums = x.new_empty(n, plan.out_hw[0] * plan.grid[1] - (plan.taps[1] - 1), w_taps.shape[-1])

    def share(n0: int, n1: int) -> Tensor:
        block = wg.block(n0, n1)
        z = block.z()
        tap_sum(z, w_taps, bias, block.plan, n1 - n0, out=sums[n0:n1])
        return block._replace(kept=z).products(a[n0:n1], plans)

    return _taps_view(sums, plan), wg.finish(sum_over_blocks(n, wg.image_bytes(), share), plans)


# --------------------------------------------------------------------------- row taps
# A stride-1 convolution as kh matmuls over shifted flat views: the padded input is unrolled
# along W only -- z[n, r, j] = (xp[n, r, j + b] for b < kw), kw*C columns, kw times the input
# instead of im2col's kh*kw -- and kernel row a multiplies z shifted by a*Wo rows:
#
#     y[n, i, j] = sum_a z[n, i + a, j] @ W[a],    W[a] of shape (kw*C, O),
#
# each a matmul batched over the images, whose Ho*Wo rows start a*Wo rows into the image's
# (Hp, Wo) grid of z: no row is computed and ignored, and y is a dense NHWC tensor. The weight
# gradient is the same sum transposed, dW[a] = sum_n z_n,shifted^T @ g_n. On a 2-core AMD
# EPYC row taps halved the forward + weight gradient of the U-Net's 3x3 convolutions against
# one im2col matmul (32 -> 32 channels, 8 x 64 x 64: 12.5 vs 25.9 ms). Float32 and float64
# only, like the shifted-view engine above. The forward pass of a large image takes kh x kw
# taps of the padded input itself instead (KERNEL_TAPS_PIXELS).


def rows_applies(x: Tensor, kernel: tuple, stride: tuple, dilation: tuple) -> bool:
    """Whether :func:`row_taps_conv` handles this convolution."""
    return (
        x.dtype.is_floating_point
        and x.element_size() >= 4
        and stride == (1, 1)
        and dilation == (1, 1)
        and kernel[0] > 1
        and x.shape[3] >= WIDE_TAPS
    )


def _stride_one_pads(x: Tensor, kernel: tuple, padding: tuple, out_hw: tuple) -> tuple:
    """``(top, bottom, left, right)`` (negative: crop) that put the NHWC ``x`` on the (Ho + kh -
    1, Wo + kw - 1) grid a stride-1 convolution with ``out_hw`` outputs reads."""
    (kh, kw), (ho, wo) = kernel, out_hw
    bottom, right = ho + kh - 1 - x.shape[1] - padding[0], wo + kw - 1 - x.shape[2] - padding[1]
    return padding[0], bottom, padding[1], right


def _row_unroll(x: Tensor, kernel: tuple, padding: tuple, out_hw: tuple):
    """``(z, plan)``: the padded NHWC input unrolled along W (kw*C columns, rows on the
    (N, Hp, Wo) grid) and the plan of its kh x 1 row taps (see the section comment)."""
    n, _, _, c = x.shape
    (kh, kw), (ho, wo) = kernel, out_hw
    hp, pads = ho + kh - 1, _stride_one_pads(x, kernel, padding, out_hw)
    plan = S2DPlan((1, 1), (kh, 1), (hp, wo), out_hw, pads, n * hp * wo - (kh - 1) * wo)
    xp = pad(x, *pads)
    st = xp.stride()
    z = xp.as_strided((n, hp, wo, kw, c), (st[0], st[1], st[2], st[2], st[3]))
    return z.contiguous().view(n * hp * wo, kw * c), plan


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
# outputs, and no unrolled copy is made. Alone, on a 2-core AMD EPYC, 8 images: 64 x 64, 48 ->
# 24 channels 8.6 -> 5.2 ms, 32 -> 32 5.0 -> 3.7 ms; 48 x 48, 64 -> 64 10.7 -> 7.7 ms; one 256 x
# 256 image, 64 -> 64 51.6 -> 30.0 ms. Below the bounds it is even or slower: 32 x 32 even, 16
# x 16 0.83-0.91x (the kw - 1 padding columns computed and ignored are 12% of the rows there,
# and the matmuls 9 rather than 3), 8 x 128 x 32 0.90x, 2 x 1024 x 4 0.73x, 16 -> 16 channels
# 0.87-0.96x. U-Net float32 step 1.04-1.07x (compare_commits, 15 rounds, three runs).
KERNEL_TAPS_PIXELS = 2048
KERNEL_TAPS_WIDTH = 48
KERNEL_TAPS_CHANNELS = 24


def kernel_taps_pay(c: int, o: int, out_hw: tuple) -> bool:
    """Whether :func:`stride_one_forward` takes kernel taps for ``c -> o`` channels."""
    (ho, wo) = out_hw
    return (
        ho * wo >= KERNEL_TAPS_PIXELS
        and wo >= KERNEL_TAPS_WIDTH
        and c >= KERNEL_TAPS_CHANNELS
        and o >= THIN_TAPS
    )


def stride_one_forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple, out_hw):
    """``y = conv(x)`` (NHWC) of a stride-1 convolution that :func:`rows_applies` to: on a
    large image (see KERNEL_TAPS_PIXELS) by kh x kw shifted-view taps of the padded input
    (:func:`tap_sum` on its (N, Hp, Wp) grid, ``y`` a strided view whose rows skip the kw - 1
    padding columns), else by row taps."""
    o, c, kh, kw = weight.shape
    (ho, wo), n = out_hw, x.shape[0]
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
    float32 / float64 by row taps when :func:`rows_applies` (the U-Net's 3 x 3 layers, 8 x 32
    x 32, 64 -> 64 channels: 3.9 -> 3.1 ms; 8 x 64 x 64, 32 -> 32: 3.4 -> 3.1 ms), else by
    im2col blocks on the flipped kernel's matrix, without the polyphase engine's kernel
    relayout (a 0/1 matmul per call: bfloat16 U-Net step 1.02x faster; 2-core Xeon). A thin
    ``dx`` (fewer than THIN channels) without row taps keeps the polyphase engine's
    shifted-view taps."""
    kernel = tuple(weight.shape[2:])
    if stride == dilation == (1, 1) and all(p < k for p, k in zip(padding, kernel)):
        flipped, pads = _flipped(weight, padding)
        if rows_applies(g, kernel, stride, dilation):
            return _row_taps(g, flipped, None, pads, in_hw)[0]
        if weight.shape[1] >= THIN:
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
        and weight.shape[0] >= WIDE_TAPS
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
    if (
        input_grad
        and isinstance(weight_grad, RowWeightGrad)
        and shares_row_taps(weight_grad.x, weight, stride, padding, dilation)
    ):
        return _row_tap_grads(weight_grad.x, g, weight, padding)
    if input_grad and isinstance(weight_grad, TapWeightGrad):
        both = _phase_grads(weight_grad, g, weight)
        if both is not None:
            return both
    dx = conv_input_grad(g, weight, stride, padding, dilation, in_hw) if input_grad else None
    return weight_grad(g), dx


def _row_tap_grads(x: Tensor, g: Tensor, weight: Tensor, padding: tuple):
    """``(dW, dx)`` of a stride-1 convolution from one W-unrolled copy of ``g`` padded by
    ``k - 1 - p`` (:func:`_row_unroll`), ``zg[n, r, j, b] = g_pad[n, r, j + b]``:

        dx = sum_a zg[a W :] @ Wf[a]                (row taps of the flipped kernel)
        dW[o, c, k-1-a, k-1-b] = sum_{n,i,j} x[n, i, j, c] zg[n, i + a, j, b, o],

    the second because ``g[i - a + p]`` is ``g_pad[i + (k-1-a)]``: the weight gradient reads
    ``x`` as it is and the input gradient's unrolled ``g`` instead of unrolling ``x`` again
    (kw times the input): the U-Net's 3 x 3 layers' backward passes 8-32% faster (8 x 64 x 64,
    48 -> 24 channels: 9.2 -> 6.2 ms; 8 x 32 x 32, 64 -> 64: 5.4 -> 5.0 ms), its float32 step
    1.04x (2-core Xeon)."""
    o, c, kh, kw = weight.shape
    n, h, w, _ = x.shape
    flipped, pads = _flipped(weight, padding)
    dx, zg, plan = _row_taps(g, flipped, None, pads, (h, w))
    xt = x.permute(0, 3, 1, 2).reshape(n, c, h * w)  # (N, C, H W), a view in either layout
    per_image = zg.view(n, plan.grid[0] * w, kw * o)
    d = g.new_empty(kh, c, kw * o)
    for a in range(kh):
        d[a] = xt.bmm(per_image[:, a * w : a * w + h * w]).sum(0)
    dw = d.view(kh, c, kw, o).permute(3, 1, 0, 2).flip(2, 3).contiguous()
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
    taps on the W-unrolled input when O >= C (8 x 64 x 64, 32 -> 32 channels, forward +
    weight gradient 8.55 -> 8.02 ms; 8 x 16 x 16, 64 -> 64: 2.31 -> 1.96 ms), else one
    tap per kernel element on the padded input; else the im2col matrix is kept (for stride 2, one
    matmul with it beat the space-to-depth copy and four tap matmuls: default network,
    batch 100, bfloat16 training step 4,294 against 3,863 img/s on a 2-core AMD EPYC).
    """

    def done(y, weight_grad):
        return (y, weight_grad) if grad_for is None else (y, weight_grad(grad_for))

    o, wide = weight.shape[0], x.element_size() >= 4
    if torch_order.applies(x, kernel) if like_torch is None else like_torch:
        return done(*torch_order.conv(x, weight, bias, kernel, stride, padding, dilation, out_hw))
    if rows_applies(x, kernel, stride, dilation):
        return done(*row_taps_conv(x, weight, bias, padding, out_hw))
    if s2d_applies(x, kernel, stride, dilation):
        plan = s2d_plan(x.shape[0], x.shape[1:3], kernel, stride, padding, out_hw)
        w_taps = s2d_weights(weight, plan)
        wg = TapWeightGrad(x, plan, tuple(weight.shape), tuple(x.shape[1:3]))
        if grad_for is not None and o >= THIN_TAPS:
            return _s2d_conv_and_grad(x, w_taps, bias, wg, grad_for)
        y, z = s2d_conv_forward(x, w_taps, bias, plan)
        return done(y, wg if grad_for is None else wg._replace(kept=z))
    wmat = conv_matrix(weight)
    geometry = (kernel, stride, padding, dilation, out_hw)
    if dilation == stride == (1, 1) and weight.shape[1] >= WIDE_TAPS:
        y, _ = conv_forward(x, wmat, bias, *geometry, False)
        if o >= weight.shape[1]:  # O >= C: row taps, kh wider matmuls
            return done(y, RowWeightGrad(x, tuple(weight.shape), padding, out_hw))
        plan = s2d_plan(x.shape[0], x.shape[1:3], kernel, stride, padding, out_hw)
        return done(
            y,
            lambda a: s2d_weight_grad_to_conv(
                s2d_conv_weight_grad(space_to_depth(x, plan), a, plan), plan, tuple(weight.shape)
            ),
        )
    if wide and grad_for is not None and o >= THIN:
        return cols_products(x, geometry, grad_for, wmat, bias)
    large = kernel[0] * kernel[1] >= 4 * stride[0] * stride[1] and max(stride) > 1
    if wide and grad_for is None and large:  # see ColsWeightGrad
        y, _ = conv_forward(x, wmat, bias, *geometry, False)
        return y, ColsWeightGrad(x, *geometry)
    y, cols = conv_forward(x, wmat, bias, *geometry)
    return done(y, lambda a: weight_grad(rows(a), cols, kernel))
