"""Grouped convolutions (``groups`` > 1), as ``torch.nn.functional.conv2d(..., groups=G)``:
the C input channels split into G groups of C / G, the O output channels into G groups of
O / G, and output group ``g`` is the convolution of input group ``g`` with its own weights,
``w[g O/G : (g+1) O/G]`` of shape (O / G, C / G, kh, kw). A group per channel
(``groups = C``) is a depthwise convolution.

One engine for every group count, on channels-last (N, H, W, C) tensors and on any device:
the im2col matrix of the padded input with its columns grouped, (G, N Ho Wo, kh kw C/G), times
the weights as (G, kh kw C/G, O/G): one batched matmul (each product accumulated inside it,
in float32 for 16-bit operands). Gradients, for the output gradient ``g`` as (G, N Ho Wo, O/G):

* ``dw = cols^T g``, a batched matmul with the kept matrix;
* ``dx``: ``g w^T``, the (G, N Ho Wo, kh kw C/G) gradient of the matrix, each kernel tap's
  column block added back onto the input positions it read (the adjoint of im2col), the
  sums in float32 for 16-bit tensors.
"""

from torch import Tensor

from ..base import FLOAT32
from ..nhwc import pad, pads_to_read, reads, windows


def _grouped_weight(weight: Tensor, groups: int) -> Tensor:
    """(O, C/G, kh, kw) -> (G, kh kw C/G, O/G), rows in im2col's (kh, kw, c) order."""
    o, size, kh, kw = weight.shape
    return (
        weight.view(groups, o // groups, size, kh, kw)
        .permute(0, 3, 4, 2, 1)
        .reshape(groups, kh * kw * size, o // groups)
    )


def grouped_conv(
    xh: Tensor, weight: Tensor, bias, groups: int, k, s, p, d, out_hw
) -> tuple[Tensor, Tensor]:
    """The grouped convolution of the NHWC ``xh``: ``(y, cols)``, ``y`` (N, Ho, Wo, O) and
    ``cols`` the (G, N Ho Wo, kh kw C/G) matrix the weight gradient needs."""
    n, c = xh.shape[0], xh.shape[3]
    size = c // groups
    xp = pad(xh, *pads_to_read(xh, k, s, p, d, out_hw))
    win = windows(xp, k, s, d, out_hw)  # (N, Ho, Wo, kh, kw, C)
    cols = (
        win.unflatten(5, (groups, size))
        .permute(5, 0, 1, 2, 3, 4, 6)  # (G, N, Ho, Wo, kh, kw, C/G)
        .contiguous()
        .view(groups, n * out_hw[0] * out_hw[1], k[0] * k[1] * size)
    )
    y = cols.bmm(_grouped_weight(weight, groups))  # (G, N Ho Wo, O/G)
    y = y.permute(1, 0, 2).reshape(n, out_hw[0], out_hw[1], weight.shape[0])
    return (y if bias is None else y.add_(bias)), cols


def grouped_conv_grads(
    g: Tensor, weight: Tensor, cols: Tensor, groups: int, k, s, p, d, in_hw, input_grad: bool
):
    """``(dw, dx)`` of :func:`grouped_conv` for the NHWC output gradient ``g``; ``dx`` (NHWC,
    the input's size ``in_hw``) is None unless ``input_grad``."""
    n, ho, wo, o = g.shape
    size, (kh, kw) = weight.shape[1], k
    gg = g.reshape(n * ho * wo, groups, o // groups).transpose(0, 1)  # (G, N Ho Wo, O/G)
    dw = cols.transpose(1, 2).bmm(gg)  # (G, kh kw C/G, O/G)
    dw = dw.view(groups, kh, kw, size, o // groups).permute(0, 4, 3, 1, 2)
    dw = dw.reshape(o, size, kh, kw)
    if not input_grad:
        return dw, None
    dcols = gg.bmm(_grouped_weight(weight, groups).transpose(1, 2))
    dcols = dcols.view(groups, n, ho, wo, kh, kw, size).permute(1, 2, 3, 4, 5, 0, 6)
    ih, iw = reads((ho, wo), k, s, d)
    low = g.element_size() <= 2  # taps summed in float32, rounded once
    buf = g.new_zeros(n, ih, iw, groups * size, dtype=FLOAT32 if low else g.dtype)
    win = windows(buf, k, s, d, (ho, wo)).unflatten(5, (groups, size))
    for a in range(kh):
        for b in range(kw):
            win[:, :, :, a, b].add_(dcols[:, :, :, a, b])
    dx = _on_input_grid(buf, in_hw, p)
    return dw, dx.to(g.dtype) if low else dx


def _on_input_grid(buf: Tensor, in_hw, p) -> Tensor:
    """The gradient on the padded grid the convolution read, ``buf``, as one on the input:
    the padding dropped, and zeros where the input reaches past what any window read."""
    (h, w), (top, left) = in_hw, p
    inner = buf[:, top : top + h, left : left + w]
    if tuple(inner.shape[1:3]) == (h, w):
        return inner
    out = buf.new_zeros(buf.shape[0], h, w, buf.shape[3])
    out[:, : inner.shape[1], : inner.shape[2]] = inner
    return out
