"""``pixel_shuffle`` and ``pixel_unshuffle``: channels traded for resolution, as
``torch.nn.PixelShuffle`` / ``PixelUnshuffle`` (the sub-pixel upsampling of super-resolution
and denoising networks, and its inverse, space-to-depth).

With factor ``r``: ``pixel_shuffle`` maps (N, C r^2, H, W) to (N, C, H r, W r),

    y[n, c, h r + i, w r + j] = x[n, c r^2 + i r + j, h, w],

and ``pixel_unshuffle`` is its inverse. Both only move numbers, so each one's pullback is the
other applied to the output gradient. The result is one copy in the input's layout:
contiguous (N, C, H, W) for a contiguous input, else channels-last, as the other layers'
outputs.
"""

from torch import Tensor

from ..base import (
    Layer,
    apply_via_vjp,
    check_cotangent,
    check_image,
    check_params,
    image_shape,
    output_of,
    positive_int,
)
from ..nhwc import to_nchw, to_nhwc


def _shuffled(x: Tensor, r: int) -> Tensor:
    """(N, C r^2, H, W) -> (N, C, H r, W r), in ``x``'s layout: contiguous for a contiguous
    ``x`` (one copy along runs of W numbers), else channels-last, one copy per sub-pixel
    phase ``(i, j)`` along runs of C numbers (one copy of the whole, whose innermost loop
    ran over the r sub-pixels, took 1.3-5x as long)."""
    n, crr, h, w = x.shape
    c = crr // (r * r)
    if x.is_contiguous():
        xc = x.view(n, c, r, r, h, w)  # (n, c, i, j, h, w)
        return xc.permute(0, 1, 4, 2, 5, 3).reshape(n, c, h * r, w * r)
    xh = to_nhwc(x).reshape(n, h, w, c, r, r)  # (n, h, w, c, i, j)
    out = x.new_empty(n, h, r, w, r, c)
    for i in range(r):
        for j in range(r):
            out[:, :, i, :, j].copy_(xh[..., i, j])
    return to_nchw(out.view(n, h * r, w * r, c))


def _unshuffled(x: Tensor, r: int) -> Tensor:
    """(N, C, H r, W r) -> (N, C r^2, H, W), in ``x``'s layout as :func:`_shuffled`."""
    n, c, hr, wr = x.shape
    h, w = hr // r, wr // r
    if x.is_contiguous():
        xc = x.view(n, c, h, r, w, r)  # (n, c, h, i, w, j)
        return xc.permute(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h, w)
    xh = to_nhwc(x).reshape(n, h, r, w, r, c)  # (n, h, i, w, j, c)
    out = x.new_empty(n, h, w, c, r, r)
    for i in range(r):
        for j in range(r):
            out[..., i, j].copy_(xh[:, :, i, :, j])
    return to_nchw(out.view(n, h, w, c * r * r))


def _mover(name: str, forward, backward, out_shape) -> Layer:
    """A parameterless layer that moves numbers: ``forward`` and its inverse ``backward``,
    ``out_shape`` the output shape of an (N, C, H, W) input shape (checking it)."""

    def init(generator, in_shape):
        return out_shape(image_shape(in_shape, name)), {}

    def vjp(params, x):
        check_params(params, name, {})
        check_image(x, name, -1, x)
        out_shape(tuple(x.shape))
        y = forward(x)
        if y.data_ptr() == x.data_ptr():  # a move that moves nothing (factor 1, one pixel, ...)
            y = y.clone()
        y_out = output_of(y)

        def pullback(ct):
            return {}, backward(check_cotangent(ct, y_out, name))

        return y, pullback

    return Layer(init, apply_via_vjp(vjp), vjp)


def pixel_shuffle(upscale_factor: int) -> Layer:
    """(N, C r^2, H, W) -> (N, C, H r, W r) with ``r = upscale_factor`` (see the module
    docstring)."""
    name = f"pixel_shuffle(upscale_factor={upscale_factor!r})"
    r = positive_int(upscale_factor, "upscale_factor", name)

    def out_shape(shape):
        n, c, h, w = shape
        if c % (r * r):
            raise ValueError(
                f"{name}: the {c} channels of input shape {shape} are not a multiple of "
                f"upscale_factor^2 = {r * r}"
            )
        return (n, c // (r * r), h * r if h > 0 else -1, w * r if w > 0 else -1)

    return _mover(name, lambda x: _shuffled(x, r), lambda g: _unshuffled(g, r), out_shape)


def pixel_unshuffle(downscale_factor: int) -> Layer:
    """(N, C, H r, W r) -> (N, C r^2, H, W) with ``r = downscale_factor``, the inverse of
    :func:`pixel_shuffle` (space-to-depth)."""
    name = f"pixel_unshuffle(downscale_factor={downscale_factor!r})"
    r = positive_int(downscale_factor, "downscale_factor", name)

    def out_shape(shape):
        n, c, h, w = shape
        if any(s > 0 and s % r for s in (h, w)):
            raise ValueError(
                f"{name}: the height and width of input shape {shape} must be multiples of "
                f"downscale_factor {r}"
            )
        return (n, c * r * r, h // r if h > 0 else -1, w // r if w > 0 else -1)

    return _mover(name, lambda x: _unshuffled(x, r), lambda g: _shuffled(g, r), out_shape)
