"""Depthwise convolutions, the grouped convolutions (``groups`` > 1) whose groups hold one
input channel each, as ``torch.nn.functional.conv2d(x, w, groups=C)``: output channel
``c m + r`` (``r < m``, the depth multiplier) is input channel ``c`` convolved with its own
kh x kw kernel ``w[c m + r, 0]``. (Grouped convolutions with wider groups run as ungrouped
ones with a block-diagonal weight: :func:`n2nfunc.layers.conv.conv2d`.)

A matmul per channel would multiply a column by a number: each kernel tap is instead one
elementwise pass over channels-last (N, H, W, C) tensors, the tap's shifted window view of
the padded input times that tap's weight per channel. With ``xr`` the padded input, its
channel ``c`` repeated ``m`` times so that channel ``q = c m + r`` of ``xr`` feeds output
channel ``q``:

* ``y[n, i, j, q] = sum_{a, b} xr[n, s i + d a, s j + d b, q] w[q, 0, a, b]``;
* ``dw[q, 0, a, b] = sum_{n, i, j} g[n, i, j, q] xr[n, s i + d a, s j + d b, q]``;
* ``dx``: each tap adds ``g[n, i, j, q] w[q, 0, a, b]`` back onto the position it read, and
  the ``m`` copies of each input channel are summed.

16-bit tensors are computed in float32 and rounded once, so that the taps' sums are not
rounded after each tap.
"""

from torch import Tensor

from ..base import float32_if_16bit
from ..nhwc import pad, pads_to_read, reads, windows


def _taps(weight: Tensor) -> Tensor:
    """(C m, 1, kh, kw) -> (kh, kw, C m): each tap's weights a contiguous vector (a strided
    one, broadcast over the channels-last pixels, made the passes several times slower)."""
    return float32_if_16bit(weight)[:, 0].permute(1, 2, 0).contiguous()


def _repeated(xp: Tensor, m: int) -> Tensor:
    """The padded input with each channel repeated ``m`` times, (N, H, W, C m): a depth
    multiplier ``m`` as a depthwise convolution of C m channels."""
    return xp if m == 1 else xp.repeat_interleave(m, 3)


def depthwise_conv(xh: Tensor, weight: Tensor, bias, k, s, p, d, out_hw):
    """``(y, saved)``: the depthwise convolution of the NHWC ``xh`` with ``weight``
    (C m, 1, kh, kw), ``y`` (N, Ho, Wo, C m) in ``xh``'s dtype, and what its gradients read:
    the padded input (channels repeated ``m`` times) and ``m``."""
    m = weight.shape[0] // xh.shape[3]
    xp = _repeated(pad(float32_if_16bit(xh), *pads_to_read(xh, k, s, p, d, out_hw)), m)
    win = windows(xp, k, s, d, out_hw)  # (N, Ho, Wo, kh, kw, C m)
    w = _taps(weight)
    y = win[:, :, :, 0, 0] * w[0, 0]
    for a in range(k[0]):
        for b in range(k[1]):
            if a or b:
                y.addcmul_(win[:, :, :, a, b], w[a, b])
    if bias is not None:
        y.add_(bias)
    return y.to(xh.dtype), (xp, m)


def depthwise_conv_grads(g: Tensor, weight: Tensor, saved, k, s, p, d, in_hw, input_grad):
    """``(dw, dx)`` of :func:`depthwise_conv` for the NHWC output gradient ``g``; ``dx``
    (NHWC, the input's size ``in_hw``) is None unless ``input_grad``."""
    (n, ho, wo, cm), (xp, m) = g.shape, saved
    g32 = float32_if_16bit(g)
    win = windows(xp, k, s, d, (ho, wo))
    taps = [(a, b) for a in range(k[0]) for b in range(k[1])]
    dw = g32.new_empty(cm, k[0], k[1])
    for a, b in taps:
        dw[:, a, b] = (g32 * win[:, :, :, a, b]).sum((0, 1, 2))
    dw = dw.view(weight.shape).to(weight.dtype)
    if not input_grad:
        return dw, None
    w = _taps(weight)
    ih, iw = reads((ho, wo), k, s, d)
    buf = g32.new_zeros(n, ih, iw, cm)
    into = windows(buf, k, s, d, (ho, wo))
    for a, b in taps:
        into[:, :, :, a, b].addcmul_(g32, w[a, b])
    if m > 1:  # the repeated channels' gradients summed
        buf = buf.view(n, ih, iw, cm // m, m).sum(4)
    return dw, _on_input_grid(buf, in_hw, p).to(g.dtype)


def _on_input_grid(buf: Tensor, in_hw, p) -> Tensor:
    """A gradient on the padded grid a convolution read, ``buf`` (NHWC), as one on the input:
    the padding dropped, and zeros where the input reaches past what any window read."""
    (h, w), (top, left) = in_hw, p
    inner = buf[:, top : top + h, left : left + w]
    if tuple(inner.shape[1:3]) == (h, w):
        return inner
    out = buf.new_zeros(buf.shape[0], h, w, buf.shape[3])
    out[:, : inner.shape[1], : inner.shape[2]] = inner
    return out
