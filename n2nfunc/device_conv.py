"""Convolutions off the CPU: one im2col copy and one matmul per product, whatever the batch.

On a GPU a small network's step is bound by the number of kernels it launches, not by its
arithmetic. The CPU engines of :mod:`n2nfunc.kernels` (cache-sized blocks, phase
interleaves, shifted-view taps) launch many. Here, on NHWC tensors, each product is one copy
of a strided view (im2col) of a zero-padded input and one matmul over all N Ho Wo rows (an
earlier engine on ``unfold`` / ``fold``, one small matmul per image in a batched matmul,
ran a batch-4096 step of the default network 3.5x slower on an H200):

    convolution             y  = im2col(x) @ W^T + b        dW = g^T @ im2col(x) (again)
                            dx = conv_transpose(g, W)
    transposed convolution  y  = conv_transpose(x, W) + b
                            dx = im2col(g) @ W^T             dW = x^T @ im2col(g)

For stride 1, ``conv_transpose`` is the convolution of the input padded by ``d (k - 1) - p``
with the flipped kernel; for stride ``s`` > 1 it is the polyphase product
of :mod:`n2nfunc.kernels` instead (the sub-pixel identity): each of the ``s^2`` output phases
is a small convolution of the input, all of them one matmul with the phase kernels side by
side (:func:`~n2nfunc.kernels.combine`), then one strided copy interleaves the phases. (The
input spread ``s`` apart in zeros would also make it one stride-1 convolution, but with
``s^2`` times the multiply-adds and 16x the im2col memory for the default network's kernel
4, stride 2: 17x torch's CUDA memory per training step on an H200.) Every sum lies inside
one matmul, which in bfloat16 (:func:`~n2nfunc.precision.mixed_precision`) accumulates in
float32 and rounds once, as on the CPU's engines. Columns are ordered (kh, kw, C), so that
the im2col copy reads whole pixels (C contiguous values) at a time; the weight matrices are
small copies of the weights.
"""

from torch import Tensor

from .kernels import (
    combine,
    conv_matrix,
    interleaved,
    matrix_to_weight,
    phase_plan,
    phase_slices,
)
from .nhwc import im2col, reads

# Bytes of im2col matrix formed at a time (whole images; all of them when they fit). On a
# GPU, blocks sized for caches (as the CPU's kernels.direct.BLOCK_BYTES) only multiply kernel
# launches; here they bound the memory of large inputs (docs/performance.md, 'The engines'
# constants').
BLOCK_BYTES = 1 << 26


def applies(x: Tensor) -> bool:
    """Whether convolutions of ``x`` run on this engine: a floating-point tensor off the CPU."""
    return x.device.type != "cpu" and x.dtype.is_floating_point


def padded(x: Tensor, before: tuple, size: tuple) -> Tensor:
    """A contiguous NHWC tensor of spatial ``size`` holding ``x`` at offset ``before`` (per
    spatial dim, negative: cropped) in zeros, the part of ``x`` outside it dropped (two
    launches: the zeros and one copy)."""
    n, h, w, c = x.shape
    if before == (0, 0) and size == (h, w):
        return x.contiguous()
    out = x.new_zeros(n, size[0], size[1], c)
    src, dst = [], []
    for length, b, m in zip((h, w), before, size):
        first, last = max(0, -b), min(length, m - b)  # the part of x that lands inside
        if last <= first:
            return out
        src.append(slice(first, last))
        dst.append(slice(b + first, b + last))
    out[:, dst[0], dst[1]] = x[:, src[0], src[1]]
    return out


def _product(cols: Tensor, wmat: Tensor, bias: Tensor | None) -> Tensor:
    """``cols @ wmat (+ bias)``: one matmul, the bias added to its sums."""
    return cols.matmul(wmat) if bias is None else bias.addmm(cols, wmat)


def _image_blocks(n: int, image_bytes: int) -> list:
    """Slices of the N images whose im2col matrices fit BLOCK_BYTES together (one slice of
    all of them when the whole matrix fits, single images when none do)."""
    step = max(1, BLOCK_BYTES // max(1, image_bytes))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _windows_product(xp: Tensor, window, stride, dilation, out_hw, wmat, bias) -> Tensor:
    """``im2col(xp) @ wmat (+ bias)``, (N Ho Wo, O), for the padded NHWC ``xp`` and a
    (kh kw C, O) ``wmat`` (:func:`~n2nfunc.kernels.conv_matrix`): one im2col copy and one
    matmul, or one of each per block of images where the whole im2col matrix would pass
    BLOCK_BYTES (exact: no sum crosses a block)."""
    n, rows = xp.shape[0], out_hw[0] * out_hw[1]
    blocks = _image_blocks(n, rows * wmat.shape[0] * xp.element_size())
    if len(blocks) == 1:
        return _product(im2col(xp, window, stride, dilation, out_hw), wmat, bias)
    out = xp.new_empty(n * rows, wmat.shape[1])
    for b in blocks:
        part = out[b.start * rows : b.stop * rows]
        if bias is None:
            part.addmm_(im2col(xp[b], window, stride, dilation, out_hw), wmat, beta=0)
        else:  # the bias inside the matmul's sums, as in _product
            part.copy_(bias.expand_as(part))
            part.addmm_(im2col(xp[b], window, stride, dilation, out_hw), wmat)
    return out


def _windows_gram(a: Tensor, xp: Tensor, window, stride, dilation, out_hw) -> Tensor:
    """``a^T @ im2col(xp)`` for ``a`` (N Ho Wo, P): one matmul, or in float32 / float64 a sum
    over the blocks of :func:`_windows_product` (in a lower precision always one matmul, so
    that the whole sum accumulates in float32 and rounds once)."""
    n, rows = xp.shape[0], out_hw[0] * out_hw[1]
    k = window[0] * window[1] * xp.shape[3]
    blocks = _image_blocks(n, rows * k * xp.element_size())
    if len(blocks) == 1 or xp.element_size() < 4:
        return a.t().matmul(im2col(xp, window, stride, dilation, out_hw))
    out = a.new_zeros(a.shape[1], k)
    for b in blocks:
        out.addmm_(
            a[b.start * rows : b.stop * rows].t(), im2col(xp[b], window, stride, dilation, out_hw)
        )
    return out


def _flipped(weight: Tensor) -> Tensor:
    """:func:`~n2nfunc.kernels.conv_matrix` of ``weight`` [A, B, kh, kw] flipped in both
    spatial dims, its two channel axes swapped: a (kh kw A, B) matrix."""
    return conv_matrix(weight.flip(2, 3).transpose(0, 1))


def _span(kernel: tuple, dilation: tuple) -> tuple:
    """``d (k - 1)`` per spatial dim."""
    return tuple(d * (k - 1) for k, d in zip(kernel, dilation))


def _conv_input(x: Tensor, kernel, stride, padding, dilation, out_hw) -> Tensor:
    """The NHWC ``x`` padded as a convolution with these output sizes reads it."""
    return padded(x, tuple(padding), reads(out_hw, kernel, stride, dilation))


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, kernel, stride, padding, dilation, out_hw):
    """The convolution of the NHWC ``x`` with ``weight`` [O, C, kh, kw], an NHWC tensor."""
    xp = _conv_input(x, kernel, stride, padding, dilation, out_hw)
    y = _windows_product(xp, kernel, stride, dilation, out_hw, conv_matrix(weight), bias)
    return y.view(x.shape[0], out_hw[0], out_hw[1], -1)


def conv_weight_grad(g: Tensor, x: Tensor, kernel, stride, padding, dilation) -> Tensor:
    """``dW = g^T @ im2col(x)`` for the NHWC output gradient ``g``, a weight [O, C, kh, kw]. The
    im2col matrix is formed again rather than kept from the forward pass: kept through the
    backward pass it holds k^2 / s^2 times its input (9x for a 3 x 3 convolution): the live
    tensors of a U-Net step at 8 x 128 x 128 peaked at 1,507 MB instead of 515 (torch 300),
    the default network's at batch 100 at 65.7 MB instead of 42.3 (torch 22.3)."""
    out_hw = tuple(g.shape[1:3])
    xp = _conv_input(x, kernel, stride, padding, dilation, out_hw)
    a = g.reshape(-1, g.shape[3])
    return matrix_to_weight(_windows_gram(a, xp, kernel, stride, dilation, out_hw), kernel)


def bias_grad(g: Tensor) -> Tensor:
    """``db = sum_{n, i, j} g[n, i, j, :]`` for an NHWC output gradient."""
    return g.sum((0, 1, 2))


def conv_input_grad(g: Tensor, weight: Tensor, in_hw: tuple, kernel, stride, padding, dilation):
    """``dx`` (NHWC, spatial ``in_hw``) of a convolution for its NHWC output gradient ``g``:
    the transposed convolution of ``g`` with the same weight."""
    return conv_transpose(g, weight, None, in_hw, (kernel, stride, padding, dilation))


def conv_transpose(x: Tensor, weight: Tensor, bias: Tensor | None, out_hw: tuple, geometry):
    """The transposed convolution of the NHWC ``x`` with ``weight`` [C, O, kh, kw] (an NHWC
    output of spatial ``out_hw``); ``geometry`` is (kernel, stride, padding, dilation): for
    stride 1 the convolution of the padded ``x`` with the flipped kernel, else by phases."""
    kernel, stride, padding, dilation = geometry
    if tuple(stride) != (1, 1):
        return _by_phases(x, weight, bias, out_hw, geometry)
    span = _span(kernel, dilation)
    before = tuple(e - p for e, p in zip(span, padding))
    size = tuple(h + e for h, e in zip(out_hw, span))
    xp = padded(x, before, size)
    y = _windows_product(xp, kernel, (1, 1), dilation, out_hw, _flipped(weight), bias)
    return y.view(x.shape[0], out_hw[0], out_hw[1], -1)


def _by_phases(x: Tensor, weight: Tensor, bias: Tensor | None, out_hw: tuple, geometry):
    """:func:`conv_transpose` for stride > 1: output ``o = s m + rho`` of phase ``rho`` reads
    a window of ``x`` at ``m + offset[rho]`` through that phase's taps
    (:func:`~n2nfunc.kernels.phase_plan`): one im2col of the padded ``x`` over the windows,
    one matmul with the combined (window, phase) kernel, one copy to interleave the phases."""
    (kh, kw), stride, padding, dilation = geometry
    n, h, w, _ = x.shape
    py = phase_plan("transpose", h, out_hw[0], kh, stride[0], padding[0], dilation[0])
    px = phase_plan("transpose", w, out_hw[1], kw, stride[1], padding[1], dilation[1])
    starts, window = (py.starts, px.starts), (py.width, px.width)
    size = (py.starts + py.width - 1, px.starts + px.width - 1)
    xp = padded(x, (py.pad_before, px.pad_before), size)
    w_eff = combine(weight.permute(2, 3, 0, 1), py, px)  # (window, C) x (phase, O)
    bias_eff = None if bias is None else bias.repeat(py.stride * px.stride)
    r = _windows_product(xp, window, (1, 1), (1, 1), starts, w_eff, bias_eff)
    r = r.view(n, py.starts, px.starts, py.stride, px.stride, -1)
    view = interleaved(r, py, px)
    if view is not None:
        return view.reshape(n, out_hw[0], out_hw[1], -1)
    y = x.new_empty(n, out_hw[0], out_hw[1], r.shape[5])
    for ry, rx, sy, sx in phase_slices(py, px):
        y[:, ry :: py.stride, rx :: px.stride] = r[:, sy, sx, ry, rx]
    return y


def conv_transpose_grads(g: Tensor, x: Tensor, weight: Tensor, geometry, input_grad: bool = True):
    """``(dW, dx)`` of :func:`conv_transpose` for its NHWC output gradient ``g``, from one
    im2col of ``g`` (a convolution's): ``dx = im2col(g) @ W^T``, ``dW = x^T @ im2col(g)``
    (``dx`` None without ``input_grad``)."""
    kernel, stride, padding, dilation = geometry
    n, h, w, c = x.shape
    gp = _conv_input(g, kernel, stride, padding, dilation, (h, w))
    x2 = x.reshape(-1, c)
    if len(_image_blocks(n, h * w * weight[0].numel() * g.element_size())) > 1:  # too large
        dw = _windows_gram(x2, gp, kernel, stride, dilation, (h, w))  # to form it at once
        dx = None
        if input_grad:
            dx = _windows_product(gp, kernel, stride, dilation, (h, w), conv_matrix(weight), None)
    else:  # one im2col of g for both
        cols = im2col(gp, kernel, stride, dilation, (h, w))
        dw = x2.t().matmul(cols)
        dx = _product(cols, conv_matrix(weight), None) if input_grad else None
    return matrix_to_weight(dw, kernel), None if dx is None else dx.view(n, h, w, c)
