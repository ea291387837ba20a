"""``bilinear_upsample``: bilinear resizing, as ``torch.nn.Upsample(mode="bilinear")`` and
``torch.nn.functional.interpolate(..., mode="bilinear")``.

Separable: along each spatial axis every output index ``o`` reads two neighbouring inputs,

    y[o] = w0[o] x[i0[o]] + w1[o] x[i1[o]],   w0 = 1 - w1,

first along the width, then along the height. PyTorch's source coordinate, computed in the
input's precision (float32 for float32 and 16-bit inputs, float64 for float64 ones; the
weights within an ulp of torch's, whose compiled arithmetic fuses a multiply and an add):

* ``align_corners=False``: ``src = max(r (o + 0.5) - 0.5, 0)``, with ``r = 1 / scale_factor``
  when a scale factor is given, else ``in / out``;
* ``align_corners=True``: ``src = o (in - 1) / (out - 1)`` (0 for one output);

``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``w1 = src - i0``. An axis whose size
does not change is copied, whatever the factor (1.1 on 5 pixels gives 5), as PyTorch's CPU
kernel does (its CUDA kernel copies only where both axes keep their size). The output size
is ``floor(in * scale_factor)``, or ``size``.

The pullback is the transposed map: each output gradient, times its two weights, added back
onto the two inputs it read (``index_add_``), again an axis at a time. An axis that grows by
a power of two ``s`` (``align_corners=False``) has the same two weights at every ``s``-th
output and is computed phase by phase on strided views instead of by gathers and
``index_add_``. 16-bit tensors are computed in float32 and rounded once.
"""

import math

from torch import Tensor, arange

from ..base import (
    FLOAT32,
    FLOAT64,
    IntPair,
    Layer,
    ScalePair,
    apply_via_vjp,
    check_cotangent,
    check_image,
    check_params,
    check_tensor,
    flag,
    float32_if_16bit,
    image_shape,
    is_number,
    output_of,
    pair,
)
from ..nhwc import to_nchw, to_nhwc
from .geometry import describe


def bilinear_upsample(
    scale_factor: ScalePair | None = None, size: IntPair | None = None, align_corners: bool = False
) -> Layer:
    """Bilinear resizing of (N, C, H, W) images by ``scale_factor`` (a positive number or a
    pair; 2 when neither it nor ``size`` is given) or to ``size=(H_out, W_out)``, as
    ``torch.nn.functional.interpolate(x, ..., mode="bilinear", align_corners=...)`` (see the
    module docstring). Factors below 1 shrink, as torch's do (reading two pixels per output,
    without averaging the others)."""
    if scale_factor is not None and size is not None:
        raise ValueError(
            f"bilinear_upsample: give size or scale_factor, not both (got size={size!r}, "
            f"scale_factor={scale_factor!r})"
        )
    scale_factor = 2 if scale_factor is None and size is None else scale_factor
    given = {"scale_factor": scale_factor} if size is None else {"size": size}
    name = describe("bilinear_upsample", **given, align_corners=align_corners)
    align_corners = flag(align_corners, "align_corners", name)
    by_size = size is not None
    sizes = pair(size, "size", name) if by_size else (0, 0)
    scales = (0.0, 0.0) if by_size else _scales(scale_factor, name)

    def out_sizes(h: int, w: int, shape) -> tuple[int, int]:
        if by_size:
            return sizes
        out = tuple(-1 if n == -1 else math.floor(n * f) for n, f in zip((h, w), scales))
        if 0 in out:
            raise ValueError(f"{name}: input shape {tuple(shape)} gives an empty output {out}")
        return out[0], out[1]

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        return (n, c, *out_sizes(h, w, in_shape)), {}

    def vjp(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        check_image(x, name, -1, x)
        n, c, h, w = x.shape
        ho, wo = out_sizes(h, w, x.shape)
        rows = _axis_map(h, ho, None if by_size else scales[0], align_corners, x)
        cols = _axis_map(w, wo, None if by_size else scales[1], align_corners, x)
        xh = float32_if_16bit(to_nhwc(x))
        y = _along(_along(xh, 2, cols), 1, rows).to(x.dtype)
        y = to_nchw(y)
        y_out = output_of(y)

        def pullback(ct):
            g = to_nhwc(check_cotangent(ct, y_out, name))
            g = float32_if_16bit(g)
            dx = _back_along(_back_along(g, 1, rows, h), 2, cols, w)
            return {}, to_nchw(dx.to(x.dtype))

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def _scales(scale_factor, name: str) -> tuple[float, float]:
    """``scale_factor`` as (height, width) factors: positive finite numbers."""
    both = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    numbers = all(is_number(f) and not isinstance(f, bool) for f in both)
    if not numbers or len(both) != 2 or not all(0 < f < math.inf for f in both):
        raise (ValueError if numbers else TypeError)(
            f"{name}: scale_factor must be a positive number or a pair of them, got "
            f"{scale_factor!r}"
        )
    return float(both[0]), float(both[1])


def _axis_map(n_in: int, n_out: int, scale, align_corners: bool, x: Tensor):
    """One axis's map: its factor ``s`` (:func:`_phase_weights`) where the output is ``s``
    times the input for a power of two ``s`` (``align_corners=False``, a factor of exactly
    ``s`` or a size), else its gather taps (:func:`_taps`). Only powers of two: PyTorch's
    source coordinates are exact there, so both read the same inputs with the same weights
    (for a factor of 3, ``(o + 0.5) / 3`` rounded puts some outputs on the other side of an
    input, which moves where an infinity's NaN lands)."""
    s = n_out // n_in
    whole = n_out == s * n_in and s >= 2 and s & (s - 1) == 0 and scale in (None, s)
    return s if whole and not align_corners else _taps(n_in, n_out, scale, align_corners, x)


def _phase_weights(s: int) -> list:
    """``(w0, w1, reads_before)`` of each output phase ``r`` of an integer factor ``s``:
    output ``s i + r`` has the source coordinate ``i + d``, ``d = (2 r + 1 - s) / (2 s)``, so
    it is ``w0 x[i - 1] + w1 x[i]`` (``w1 = 1 + d``) where ``d < 0``, else ``w0 x[i] + w1 x[i +
    1]`` (``w1 = d``), with ``w0 = 1 - w1``; the same weights at every ``i`` (exact for a
    power of two, as PyTorch's source coordinates then are), the image's edges aside: the
    first outputs of a ``d < 0`` phase read ``x[0]`` and ``x[1]`` with weights 1 and 0 (the
    coordinate clamped at 0), the last of a ``d >= 0`` phase ``x[n - 1]`` twice."""
    out = []
    for r in range(s):
        d = (2 * r + 1 - s) / (2 * s)
        w1 = 1 + d if d < 0 else d
        out.append((1 - w1, w1, d < 0))
    return out


def _taps(n_in: int, n_out: int, scale, align_corners: bool, x: Tensor):
    """``(i0, i1, w0, w1)`` of one axis for the input ``x`` (see the module docstring): the
    two input indices each output reads, and their weights, on ``x``'s device, computed in
    float64 for a float64 ``x``, else in float32, as PyTorch's coordinates."""
    like = arange(0, device=x.device).to(FLOAT64 if x.dtype == FLOAT64 else FLOAT32)
    o = arange(n_out, device=x.device).to(like.dtype)
    if n_out == n_in:  # copied, as PyTorch's CPU kernel
        index = arange(n_in, device=x.device)
        return index, index, o.new_ones(n_out), o.new_zeros(n_out)
    if align_corners:
        ratio = like.new_tensor(n_in - 1) / (n_out - 1) if n_out > 1 else like.new_tensor(0.0)
        src = o * ratio
    else:
        ratio = like.new_tensor(1.0 / scale) if scale is not None else like.new_tensor(n_in) / n_out
        src = ((o + 0.5) * ratio - 0.5).clamp(min=0)
    i0 = src.long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = (src - i0.to(like.dtype)).clamp(0, 1)
    return i0, i1, 1 - w1, w1


def _along(x: Tensor, axis: int, taps) -> Tensor:
    """``w0 x[i0] + w1 x[i1]`` along ``axis`` of the NHWC ``x``: by phases for a power-of-two
    factor (:func:`_phases_along`), else by gathers."""
    if isinstance(taps, int):
        return _phases_along(x, axis, taps)
    i0, i1, w0, w1 = taps
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    return (
        x.index_select(axis, i0)
        .mul_(w0.to(x.dtype).view(shape))
        .addcmul_(x.index_select(axis, i1), w1.to(x.dtype).view(shape))
    )


def _back_along(g: Tensor, axis: int, taps, n_in: int) -> Tensor:
    """The adjoint of :func:`_along`: ``g w0`` added onto ``i0``, ``g w1`` onto ``i1``."""
    if isinstance(taps, int):
        return _phases_back_along(g, axis, taps)
    i0, i1, w0, w1 = taps
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    size = list(g.shape)
    size[axis] = n_in
    out = g.new_zeros(size)
    out.index_add_(axis, i0, g * w0.to(g.dtype).view(shape))
    return out.index_add_(axis, i1, g * w1.to(g.dtype).view(shape))


def _segments(n: int, s: int):
    """``(r, o0, length, a0, b0, wa, wb)``: the outputs ``o0 <= i < o0 + length`` of phase
    ``r`` of an integer factor ``s`` along an axis of ``n`` inputs are ``wa x[i - o0 + a0] +
    wb x[i - o0 + b0]`` (:func:`_phase_weights`; segments of no outputs left out)."""
    last = max(n - 1, 0)
    for r, (w0, w1, before) in enumerate(_phase_weights(s)):
        if before:  # x[i - 1], x[i] from i = 1; output 0 reads x[0] and x[1] by 1 and 0
            parts = [(1, n - 1, 0, 1, w0, w1), (0, 1, 0, min(1, last), 1.0, 0.0)]
        else:  # x[i], x[i + 1] up to n - 2; the last output reads x[n - 1] twice
            parts = [(0, n - 1, 0, 1, w0, w1), (last, 1, last, last, w0, w1)]
        yield from ((r, *part) for part in parts if part[1] > 0)


def _phases_along(x: Tensor, axis: int, s: int) -> Tensor:
    """:func:`_along` for an integer factor ``s``: each phase's outputs (every ``s``-th) are
    written into a strided view of the output from two shifted views of ``x`` (:func:`_segments`),
    ``wa a + wb b`` as PyTorch's order, no gather (x2, float32, forward and backward, 2-core
    Intel Xeon: 100 x 32 x 16 x 16 6.6 -> 5.1 ms, 8 x 48 x 64 x 64 16.0 -> 8.3 ms, one 3 x 512 x
    512 image 20.0 -> 6.5 ms)."""
    n = x.shape[axis]
    shape = list(x.shape)
    shape[axis : axis + 1] = [n, s]
    y = x.new_empty(shape)
    for r, o0, length, a0, b0, wa, wb in _segments(n, s):
        out = y.select(axis + 1, r).narrow(axis, o0, length)
        out.copy_(x.narrow(axis, a0, length)).mul_(wa).add_(x.narrow(axis, b0, length), alpha=wb)
    return y.flatten(axis, axis + 1)


def _phases_back_along(g: Tensor, axis: int, s: int) -> Tensor:
    """The adjoint of :func:`_phases_along`: each segment's output gradient, times its two
    weights, added onto the two input views it read."""
    shape = list(g.shape)
    n = shape[axis] // s
    shape[axis : axis + 1] = [n, s]
    g = g.reshape(shape)
    shape[axis : axis + 2] = [n]
    dx = g.new_zeros(shape)
    for r, o0, length, a0, b0, wa, wb in _segments(n, s):
        part = g.select(axis + 1, r).narrow(axis, o0, length)
        dx.narrow(axis, a0, length).add_(part, alpha=wa)
        dx.narrow(axis, b0, length).add_(part, alpha=wb)
    return dx
