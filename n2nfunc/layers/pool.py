"""Pooling layers: ``max_pool2d``, ``avg_pool2d``, ``global_avg_pool``.

Windows are one strided view of the padded channels-last input (:func:`n2nfunc.nhwc.windows`)
reduced over the kernel axes; no loop over pixels.
"""

import math

from torch import Tensor

from ..base import (
    SAME_SIZE_INT,
    IntPair,
    Layer,
    Unchanged,
    apply_via_vjp,
    check_cotangent,
    check_image,
    check_params,
    check_tensor,
    flag,
    image_shape,
    output_of,
    pair,
)
from ..nhwc import sum_of, to_nchw, to_nhwc, windows
from .geometry import conv_out, describe, output_sizes


def _options(kind: str, kernel_size, stride, padding):
    """Name, kernel, stride (the kernel by default) and padding of a pooling layer; like
    PyTorch, padding may be at most half the kernel, so every window holds an input pixel."""
    name = describe(kind, kernel_size=kernel_size, stride=stride, padding=padding)
    k = pair(kernel_size, "kernel_size", name)
    s = k if stride is None else pair(stride, "stride", name)
    p = pair(padding, "padding", name, minimum=0)
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise ValueError(f"{name}: padding {p} must be at most half the kernel size {k}")
    return name, k, s, p


def _padded(xh: Tensor, p: tuple[int, int], value: float) -> Tensor:
    """The NHWC tensor ``xh`` with ``p`` rows / columns of ``value`` on each side."""
    if p == (0, 0):
        return xh
    n, h, w, c = xh.shape
    out = xh.new_full((n, h + 2 * p[0], w + 2 * p[1], c), value)
    out[:, p[0] : p[0] + h, p[1] : p[1] + w].copy_(xh)
    return out


def _pool(kind, kernel_size, stride, padding, pad_value, reduce, reduce_saving, backward):
    """A pooling layer over the (N, Ho, Wo, kh, kw, C) window view of the input padded with
    ``pad_value``: ``reduce(windows) -> y`` (NHWC), ``reduce_saving(windows) -> (y, saved)``
    and ``backward(g, saved, padded_shape, kernel, stride, padding) -> dxp`` (wrt the padded
    input)."""
    name, k, s, p = _options(kind, kernel_size, stride, padding)

    def out_size(dim, size):
        i = "HW".index(dim)
        return conv_out(size, k[i], s[i], p[i], 1)

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        ho, wo = output_sizes((n, c, h, w), out_size, name)
        return (n, c, ho, wo), {}

    def window_view(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        check_image(x, name, -1, x)
        out_hw = output_sizes(x.shape, out_size, name)
        xp = _padded(to_nhwc(x), p, pad_value)
        return xp, windows(xp, k, s, (1, 1), out_hw)

    def apply(params, x):
        return to_nchw(reduce(window_view(params, x)[1]))

    def vjp(params, x):
        xp, win = window_view(params, x)
        y_h, saved = reduce_saving(win)
        y = to_nchw(y_h)
        h, w = x.shape[2:]
        y_out, xp_shape = output_of(y), xp.shape
        seen = Unchanged(name, **({} if saved is None else {"input": x, "output": y}))

        def pullback(ct):
            seen.check()
            # detached: the sums below run in place, and build no autograd graph for inputs
            # that require grad
            g = to_nhwc(check_cotangent(ct, y_out, name)).detach()
            kept = None if saved is None else tuple(t.detach() for t in saved)
            dxp = backward(g, kept, xp_shape, k, s, p)
            return {}, to_nchw(dxp[:, p[0] : p[0] + h, p[1] : p[1] + w])

        return y, pullback

    return Layer(init, apply, vjp)


def _offsets(win: Tensor) -> list[Tensor]:
    """The (N, Ho, Wo, C) views of a window view, one per kernel offset, in row-major order;
    elementwise passes over them are much faster than reductions over the kernel axes."""
    return [win[:, :, :, a, b] for a in range(win.shape[3]) for b in range(win.shape[4])]


def _max(win: Tensor) -> Tensor:
    parts = _offsets(win)
    best = parts[0].maximum(parts[1]) if len(parts) > 1 else parts[0].clone()
    for v in parts[2:]:
        best = best.maximum(v)
    return best


def _max_saving(win: Tensor):
    """Max over each window; saves the window view and the max for the backward pass."""
    y = _max(win)
    return y, (win, y)


def _max_backward(g: Tensor, saved, padded_shape, k, s, p) -> Tensor:
    """Route each output gradient to the first input of its window (row-major) that equals
    the window's maximum: one pass per kernel offset, each claiming the share of the
    gradient that earlier offsets left free, so tied maxima count once and overlapping
    windows add up. On the bits of finite numbers (:func:`_route_by_bits`) when every maximum
    and gradient is finite (an infinite gradient times 0 would be NaN off the maximum;
    comparisons producing bool tensors are several times slower on the CPU); otherwise, and
    on a GPU (where the finiteness test would make the host wait for the device), boolean
    masks that also route a NaN maximum to the first NaN, and a window of -inf only to its
    first input, never to the padding (which counts as -inf too)."""
    win, y = saved
    ho, wo = g.shape[1], g.shape[2]
    tiles = tuple(k) == tuple(s)  # every input in one window at most: written, not added
    finite = y.device.type == "cpu" and all(math.isfinite(float(t.sum())) for t in (y, g))
    if finite and tiles:
        dxp = g.new_empty(padded_shape)
        dxp[:, k[0] * ho :].zero_()  # rows and columns past the last window
        dxp[:, : k[0] * ho, k[1] * wo :].zero_()
    else:
        dxp = g.new_zeros(padded_shape)
    parts = _offsets(win)
    slots = [
        dxp[:, a : a + s[0] * (ho - 1) + 1 : s[0], b : b + s[1] * (wo - 1) + 1 : s[1]]
        for a in range(k[0])
        for b in range(k[1])
    ]
    if finite:
        _route_by_bits(g, y, parts, slots, add=not tiles)
    else:
        _route_by_masks(g, y, parts, slots, padded_shape, k, s, p)
    return dxp


def _route_by_bits(g: Tensor, y: Tensor, parts, slots, add: bool) -> None:
    """:func:`_max_backward` for finite maxima and gradients, on the bits: ``y - v`` is +0
    exactly where ``v`` is the window's maximum and positive elsewhere, so its bits read as
    an integer clamped to [0, 1] are 0 at the maximum and 1 elsewhere; the gradient still
    free (its bits) times that is what later offsets may claim, and its XOR with what was
    free before is this offset's share -- the free gradient where it claims, else +0. Five
    passes per offset, written into the offset's slot (``add``: added, where windows
    overlap), against six and a zeroed input gradient as float arithmetic (``sign(v - y) +
    1``). Written, a -0 gradient is first made +0 (``g + 0``), as the sum into zeros that
    PyTorch's backward pass is makes it."""
    ints = SAME_SIZE_INT[g.element_size()]
    free = (g if add else g + 0.0).view(ints)
    for v, slot in zip(parts[:-1], slots[:-1]):
        left = y.sub(v).view(ints).clamp_(0, 1).mul_(free)  # free where v is not the maximum
        _write(slot, free.bitwise_xor(left).view(g.dtype), add)
        free = left
    _write(slots[-1], free.view(g.dtype), add)


def _write(slot: Tensor, share: Tensor, add: bool) -> None:
    if add:
        slot.add_(share)
    else:
        slot.copy_(share)


def _route_by_masks(g: Tensor, y: Tensor, parts, slots, padded_shape, k, s, p) -> None:
    """:func:`_max_backward` by boolean masks: a NaN maximum goes to the first NaN, a window
    of -inf to its first input, never to the padding."""
    ho, wo = g.shape[1], g.shape[2]
    inside = None  # per offset, whether each window's cell is an input, not padding
    if p != (0, 0):
        real = g.new_zeros(1, padded_shape[1], padded_shape[2], 1)
        real[:, p[0] : padded_shape[1] - p[0], p[1] : padded_shape[2] - p[1]] = 1
        inside = _offsets(windows(real.bool(), k, s, (1, 1), (ho, wo)))
    rest = g
    for i, (v, slot) in enumerate(zip(parts, slots)):
        hit = v.eq(y).logical_or_(v.isnan())
        if inside is not None:
            hit.logical_and_(inside[i])
        slot.add_(rest.where(hit, 0.0))  # (rest * hit: 0 * inf = NaN off the maximum)
        if i + 1 < len(parts):
            rest = rest.masked_fill(hit, 0)


def max_pool2d(kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> Layer:
    """2-d max pooling, as ``torch.nn.functional.max_pool2d`` (padding counts as -inf):
    ``y[n, c, i, j] = max_{a, b} x[n, c, s*i - p + a, s*j - p + b]``, stride = kernel by default.

    The gradient of each output goes to the first maximum of its window in row-major order,
    as in PyTorch; overlapping windows add up: ``dx[n, c, r, t]`` is the sum of the
    ``g[n, c, i, j]`` of the windows whose first maximum is at ``(r, t)``. A NaN in a window is
    its maximum (as in PyTorch); with several NaNs in one window the gradient goes to the
    first (PyTorch: the last).
    """
    return _pool(
        "max_pool2d",
        kernel_size,
        stride,
        padding,
        float("-inf"),
        _max,
        _max_saving,
        _max_backward,
    )


def _mean(win: Tensor) -> Tensor:
    """Mean over each window, padding included (``count_include_pad=True``); 16-bit inputs
    summed and divided in float32, rounded once (a float16 sum of 4 x 30,000 is inf)."""
    total = sum_of(_offsets(win), float32_sum=True).div_(win.shape[3] * win.shape[4])
    return total if total.dtype == win.dtype else total.to(dtype=win.dtype)


def _avg_backward(g: Tensor, saved, padded_shape, k, s, p) -> Tensor:
    """Every pixel of a window gets ``g / (kh kw)``: one strided add per kernel offset."""
    n, hp, wp, c = padded_shape
    _, ho, wo, _ = g.shape
    low = g.dtype if g.element_size() == 2 and (s[0] < k[0] or s[1] < k[1]) else None
    if low is not None:  # overlapping windows add up: in float32, rounded once at the end
        g = g.float()
    share = g / (k[0] * k[1])
    dxp = g.new_zeros(n, hp, wp, c)
    for a in range(k[0]):
        for b in range(k[1]):
            dxp[:, a : a + s[0] * (ho - 1) + 1 : s[0], b : b + s[1] * (wo - 1) + 1 : s[1]].add_(
                share
            )
    return dxp if low is None else dxp.to(dtype=low)


def avg_pool2d(kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0) -> Layer:
    """2-d average pooling, as ``torch.nn.functional.avg_pool2d`` (zero padding counted in the
    mean, PyTorch's default): ``y[n, c, i, j] = mean_{a, b} x[n, c, s*i - p + a, s*j - p + b]``,
    stride = kernel by default. Its gradient shares each output's evenly over its window:
    ``dx[n, c, r, t]`` is the sum of ``g[n, c, i, j] / (kh kw)`` over the windows that hold
    ``(r, t)``.
    """
    return _pool(
        "avg_pool2d",
        kernel_size,
        stride,
        padding,
        0.0,
        _mean,
        lambda win: (_mean(win), None),
        _avg_backward,
    )


def global_avg_pool(keepdims: bool = False) -> Layer:
    """``(N, C, H, W) -> (N, C)``, the mean over each channel's pixels
    (``adaptive_avg_pool2d(x, 1)`` flattened); with ``keepdims=True`` ``(N, C, 1, 1)``, as
    ``adaptive_avg_pool2d(x, 1)`` (a channel attention's input); ``dx[n, c, h, w] = g[n, c]
    / (H W)``."""
    keepdims = flag(keepdims, "keepdims", "global_avg_pool")
    name = "global_avg_pool" + ("(keepdims=True)" if keepdims else "")

    def init(generator, in_shape):
        n, c, _, _ = image_shape(in_shape, name)
        return ((n, c, 1, 1) if keepdims else (n, c)), {}

    def vjp(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        check_image(x, name, -1, x)
        n, c, h, w = x.shape
        y = x.mean((2, 3), keepdim=keepdims)
        y_out = output_of(y)

        def pullback(ct):
            share = check_cotangent(ct, y_out, name) / (h * w)
            return {}, to_nchw(share.reshape(n, 1, 1, c).expand(n, h, w, c).contiguous())

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)
