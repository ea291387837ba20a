"""Direct convolutions on NHWC tensors: one matmul with an im2col matrix of kernel windows,
formed a block of images at a time, and the products, weight matrices and sums around it."""

from typing import NamedTuple

from torch import Tensor, cat

from ..base import FLOAT32
from ..nhwc import im2col, pad, pads_to_read, windows


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
    pads = pads_to_read(x, kernel, stride, padding, dilation, out_hw)
    return x if not any(pads) else pad(x, *pads)


def conv_cols(x: Tensor, kernel, stride, padding, dilation, out_hw) -> Tensor:
    """The im2col matrix of :func:`conv_forward` (rows: output pixels; kh*kw*C columns)."""
    xp = _padded_input(x, kernel, stride, padding, dilation, out_hw)
    return im2col(xp, kernel, stride, dilation, out_hw)


# Bytes of im2col matrix formed at a time by im2col_matmul: a block small enough to stay in
# cache and to be recycled by the memory allocator, where a whole matrix cost more in fresh
# page faults than its matmul (measurements: docs/performance.md, 'The engines' constants').
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
    every sum accumulates inside one matmul kernel (float32 for bfloat16 operands).

    In float32 on the CPU a bias rides in the matmul, as a column of ones beside the windows
    and a row of the weight matrix: the output is written once, not twice (21,760 x 48 by 48
    x 48 with its bias: 0.42 ms with the bias copied into the output first, 0.31 ms with it
    in the matmul; MKL, 2-core Xeon). Elsewhere (bfloat16, whose kernels want K a multiple of
    32; a GPU) the output starts as the bias and the matmul adds onto it."""
    n = xp.shape[0]
    ho, wo = out_hw
    k, cout = wmat.shape
    thin = cout < THIN  # then y is computed channels-first, each block as W^T @ cols^T
    y = xp.new_empty(cout, n, ho, wo) if thin else xp.new_empty(n, ho, wo, cout)
    view = windows(xp, kernel, stride, dilation, out_hw)
    blocks = list(_output_blocks(n, ho, wo * k * xp.element_size()))
    ones = bias is not None and _on_mkl_float32(xp)
    width = k + 1 if ones else k  # of a row of the buffer
    most = max((n1 - n0) * (r1 - r0) for n0, n1, r0, r1 in blocks) * wo
    buffer = xp.new_empty(most, width)  # one buffer for all blocks: one allocation, reused
    if bias is not None and ones:
        buffer[:, k].fill_(1)
        wmat = cat([wmat, bias[None]])
    for n0, n1, r0, r1 in blocks:
        part = view[n0:n1, r0:r1]
        cols = buffer[: part.numel() // k]
        cols[:, :k].as_strided(part.shape, _row_strides(part.shape, width)).copy_(part)
        if thin:
            out, a, b = y[:, n0:n1, r0:r1].view(cout, -1), wmat.t(), cols.t()
        else:
            out, a, b = y[n0:n1, r0:r1].view(-1, cout), cols, wmat
        if bias is not None and not ones:
            out.copy_((bias[:, None] if thin else bias).expand_as(out))
        out.addmm_(a, b, beta=0 if bias is None or ones else 1)
    return y.permute(1, 2, 3, 0) if thin else y


def _row_strides(shape, width: int) -> tuple:
    """Strides that lay a tensor of ``shape`` out as the rows of a matrix ``width`` wide
    (its last three dims, kh x kw x C, along a row; the rest over the rows)."""
    inner = (shape[-2] * shape[-1], shape[-1], 1)
    outer, step = [], width
    for size in reversed(shape[:-3]):
        outer.append(step)
        step *= size
    return (*reversed(outer), *inner)


# Bytes of one temporary copy (an im2col or space-to-depth matrix) that the float32 / float64
# engines form at a time where nothing needs the whole batch's, for a block of images
# (:func:`image_blocks`): the whole batch's copies, alive beside the activations, had put the
# default network's peak memory at 1.49x torch.nn's (docs/performance.md, 'The engines'
# constants').
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
    its step 5-8% slower, for a peak already 0.82x torch.nn's (2-core AMD EPYC). A matrix of
    at most GRAD_BLOCK_BYTES (one block: the default network's first layer up to batch 85) is
    kept too: its step 1.03-1.04x faster at batches 8, 32 and 64, its peak of live tensors
    1.30 -> 1.52x torch.nn's at batch 32 (9.2 -> 10.8 MB; 2-core Xeon)."""

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

    def block_term(n0: int, n1: int) -> Tensor:
        cols = conv_cols(x[n0:n1], *geometry)
        if y is not None and wmat is not None:
            rows_ = y[n0:n1].view(-1, wmat.shape[1])
            if bias is None:
                rows_.addmm_(cols, wmat, beta=0)
            else:
                rows_.copy_(bias.expand_as(rows_)).addmm_(cols, wmat)
        return reduce_matmul(rows(a[n0:n1]).t(), cols)

    total = sum_over_blocks(n, ho * wo * k * x.element_size(), block_term)
    return y, matrix_to_weight(total, kernel)


def sum_over_blocks(n: int, image_bytes: int, block_term) -> Tensor:
    """``sum block_term(n0, n1)`` over the blocks of :func:`image_blocks` (n >= 1 images): each
    block's copies are freed, with ``block_term``'s locals, before the next block's are formed."""
    blocks = image_blocks(n, image_bytes)
    total = block_term(*next(blocks))
    for n0, n1 in blocks:
        total.add_(block_term(n0, n1))
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
    as it is). Its generic kernels, which it runs on AMD CPUs, slow down on other widths
    (docs/performance.md, 'What limits the speed')."""
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
    """``sum_{n,h,w} x[n, h, w, c]`` of an NHWC tensor (a bias gradient) by PyTorch's sum,
    which accumulates 16-bit floats in float32, and float32 in cascades of partial sums:
    about 10x more accurate than a product with a vector of ones, and faster (float32, 32768
    x 32: 0.12 -> 0.05 ms, relative error 1.6e-6 -> 1.2e-7; 2-core AMD EPYC).

    In whatever memory layout ``x`` has: a gradient in NCHW memory (a loss's) is reduced over
    the first three axes where it lies, not copied to rows first (100 x 3 x 32 x 32: 0.22 ->
    0.02 ms). Where the channels are innermost (NHWC memory, or broadcast along some axes)
    and from SUM_IN_TWO numbers, in two reductions, over (N, H) to a (W, C) row, kept in
    float32 for 16-bit floats (rounded once, at the end), and then over W: one reduction to C
    numbers splits its work poorly (100 x 16 x 16 x 48: 0.21 -> 0.07-0.09 ms; 8 x 64 x 64 x
    24: 0.19 -> 0.04 ms; as accurate; 2-core Xeon)."""
    if x.dim() == 4 and x.numel() >= SUM_IN_TWO and _channels_innermost(x):
        if x.element_size() < 4:
            return x.sum((0, 1), dtype=FLOAT32).sum(0).to(x.dtype)
        return x.sum((0, 1)).sum(0)
    return x.sum((0, 1, 2))


def _channels_innermost(x: Tensor) -> bool:
    """Whether the axes that move through memory (size > 1, stride > 0) have strides falling
    from N to C, as in NHWC memory."""
    moving = [st for st, size in zip(x.stride(), x.shape) if size > 1 and st > 0]
    return moving == sorted(moving, reverse=True)


# From how many numbers channel_sums reduces an NHWC tensor in two steps (below, the second
# reduction's call costs more than it saves: 8 x 16 x 16 x 48, 0.009 against 0.015 ms).
SUM_IN_TWO = 1 << 17


# Matmuls with an output this narrow run far below the GEMM peak (float32, 2048 x 432 by
# 432 x N on a 2-core AMD EPYC: N = 3 takes as long as N = 16): im2col_matmul computes them
# transposed, channels-first.
THIN = 8
