"""Convolutions as ``unfold`` and one batched matmul, channels-first: the engine off the CPU.

On a GPU a small network's step is bound by the number of kernels it launches, not by its
arithmetic; the CPU engines of :mod:`n2nfunc.kernels` (blocks sized for caches, phase
interleaves, shifted-view taps) launch many. Here a convolution of ``x`` (N, C, H, W) with
``W`` [O, C, kh, kw] is, ``cols`` its im2col (N, C kh kw, L) and L = Ho Wo:

    y  = W @ cols + b                 unfold, one batched matmul, the bias
    dW = sum_n g_n @ cols_n^T         one batched matmul and a sum over n
    dx = fold(W^T @ g)                one batched matmul, col2im
    db = sum_{n, l} g

and a transposed convolution (``W`` [C, O, kh, kw]) is its adjoint: ``y = fold(W^T @ x) + b``,
``dx = W @ unfold(g)``, ``dW = sum_n x_n @ unfold(g)_n^T``. Outputs are contiguous (N, C, H, W).

In bfloat16 (:func:`~n2nfunc.precision.mixed_precision`) each matmul accumulates in float32
and rounds once, as on the CPU's engines, the weight gradient as one matmul over all N L
columns; but ``fold`` adds up to kh kw / (sh sw) rounded partial sums (4 for the default
network's kernel 4, stride 2). Through the default network the errors against float32 stay
those of ``torch.autocast`` (tests/test_unfold_conv.py).
"""

from torch import Tensor
from torch.nn.functional import fold, unfold


def applies(x: Tensor) -> bool:
    """Whether convolutions of ``x`` run on this engine: a floating-point tensor off the CPU."""
    return x.device.type != "cpu" and x.dtype.is_floating_point


def _flat(x: Tensor) -> Tensor:
    """(N, C, H, W) as (N, C, H W), copied only if it must be."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    """``y + b`` over the channels of a fresh (N, O, ...) tensor, in place."""
    if bias is not None:
        y += bias.view(-1, *(1,) * (y.dim() - 2))
    return y


def _summed_products(a: Tensor, b: Tensor) -> Tensor:
    """``sum_n a_n @ b_n^T`` for (N, P, L) and (N, Q, L): one batched matmul, then the sum;
    in a lower precision one matmul over all N L columns (copies of both operands), so that
    the whole sum is accumulated in float32 inside it and rounded once."""
    if a.element_size() >= 4:
        return a.matmul(b.transpose(1, 2)).sum(0)
    n, p, length = a.shape
    a2 = a.transpose(0, 1).reshape(p, n * length)
    return a2.matmul(b.transpose(1, 2).reshape(n * length, b.shape[1]))


def bias_grad(g: Tensor) -> Tensor:
    """``db[o] = sum_{n, i, j} g[n, o, i, j]``."""
    return g.sum((0, 2, 3))


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, kernel, stride, padding, dilation):
    """``(y, cols)``: the convolution of ``x`` (N, C, H, W) with ``weight`` [O, C, kh, kw] and
    the im2col matrix ``cols`` (N, C kh kw, Ho Wo) that its gradients read."""
    cols = unfold(x, kernel, dilation, padding, stride)
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wmat = weight.reshape(weight.shape[0], -1)
    if bias is None:
        y = wmat.matmul(cols)
    else:  # the bias inside the matmul: added to the float32 sums before the one rounding
        y = bias[:, None].baddbmm(wmat.expand(x.shape[0], -1, -1), cols)
    return y.view(x.shape[0], weight.shape[0], ho, -1), cols


def conv_weight_grad(g: Tensor, cols: Tensor, shape: tuple) -> Tensor:
    """``dW = sum_n g_n @ cols_n^T`` for the output gradient ``g``, shaped ``shape``."""
    return _summed_products(_flat(g), cols).view(shape)


def conv_input_grad(g: Tensor, weight: Tensor, in_hw: tuple, kernel, stride, padding, dilation):
    """``dx = col2im(W^T @ g)`` (N, C, H, W) for the output gradient ``g``."""
    cols = weight.reshape(weight.shape[0], -1).t().matmul(_flat(g))
    return fold(cols, in_hw, kernel, dilation, padding, stride)


def conv_transpose(x: Tensor, weight: Tensor, bias: Tensor | None, out_hw: tuple, geometry):
    """``y = col2im(W^T @ x) + b``: the transposed convolution of ``x`` (N, C, H, W) with
    ``weight`` [C, O, kh, kw]; ``geometry`` is (kernel, stride, padding, dilation)."""
    kernel, stride, padding, dilation = geometry
    cols = weight.reshape(weight.shape[0], -1).t().matmul(_flat(x))
    return _add_bias(fold(cols, out_hw, kernel, dilation, padding, stride), bias)


def conv_transpose_grads(g: Tensor, x: Tensor, weight: Tensor, geometry, input_grad: bool = True):
    """``(dW, dx)`` of :func:`conv_transpose` for its output gradient ``g``, from one im2col
    of ``g``: ``dx = W @ unfold(g)``, ``dW = sum_n x_n @ unfold(g)_n^T`` (``dx`` None without
    ``input_grad``)."""
    kernel, stride, padding, dilation = geometry
    gcols = unfold(g, kernel, dilation, padding, stride)
    dw = _summed_products(_flat(x), gcols).view(weight.shape)
    if not input_grad:
        return dw, None
    dx = weight.reshape(weight.shape[0], -1).matmul(gcols)
    return dw, dx.view(x.shape)
