"""``denoise_image``: run a network over a large image in overlapping tiles, with bounded
memory and no seams.

Along each axis, tiles of ``tile`` pixels start at multiples of ``step`` (``tile - 2 *
overlap`` rounded down to a multiple of ``align``); the last tile stops at the image
border. Each tile's output is cropped to the part at least ``overlap`` pixels away from
the tile's inner borders, and the crops tile the image exactly (no blending). Because
tiles start at multiples of ``align`` -- a multiple of the network's own padding multiple
(32 covers the U-Nets up to depth 5 and the exercise's network) -- every tile sees the
same pooling grid and the same edge padding as the whole image, so the result equals
the untiled one wherever the network's receptive field fits in the overlap, and is
within rounding of it in practice.
"""

from torch import Tensor

from .base import Layer, check_tensor


def _starts(size: int, tile: int, step: int) -> list[int]:
    """Tile starts along an axis: 0, step, 2 step, ... up to the first tile reaching the end."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + step)
    return starts


def _spans(size: int, tile: int, step: int, overlap: int):
    """``(start, end, keep_from, keep_to)`` of each tile along an axis (image coordinates)."""
    starts = _starts(size, tile, step)
    spans = []
    for i, s in enumerate(starts):
        keep_from = 0 if i == 0 else s + overlap
        keep_to = size if i == len(starts) - 1 else starts[i + 1] + overlap
        spans.append((s, min(s + tile, size), keep_from, keep_to))
    return spans


def denoise_image(
    layer: Layer, params, image: Tensor, tile: int = 256, overlap: int = 32, align: int = 32
) -> Tensor:
    """``layer.apply(params, image)`` computed tile by tile (see the module docstring).

    ``image`` is (C, H, W) or (N, C, H, W), any size, on the parameters' device and dtype;
    the result has the network's output channels and the image's other sizes. Values may
    leave [0, 1] slightly: callers clamp. Memory is that of one ``tile`` x ``tile`` pass.
    """
    name = "denoise_image"
    check_tensor(image, name, "image")
    if image.dim() not in (3, 4):
        raise ValueError(
            f"{name}: image must be (C, H, W) or (N, C, H, W), got {tuple(image.shape)}"
        )
    for value, what in ((tile, "tile"), (overlap, "overlap"), (align, "align")):
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < (0 if what == "overlap" else 1)
        ):
            raise ValueError(f"{name}: {what} must be a positive int, got {value!r}")
    if tile % align:
        raise ValueError(f"{name}: tile {tile} must be a multiple of align {align}")
    step = (tile - 2 * overlap) // align * align
    if step < align:
        raise ValueError(
            f"{name}: tile {tile} leaves no room after the overlap {overlap} on both sides "
            f"(need tile >= 2 * overlap + align = {2 * overlap + align})"
        )
    batch = image if image.dim() == 4 else image[None]
    n, _, h, w = batch.shape
    out: Tensor | None = None
    for y0, y1, ky0, ky1 in _spans(h, tile, step, overlap):
        for x0, x1, kx0, kx1 in _spans(w, tile, step, overlap):
            y = layer.apply(params, batch[:, :, y0:y1, x0:x1])
            if out is None:
                out = y.new_empty((n, y.shape[1], h, w))
            out[:, :, ky0:ky1, kx0:kx1] = y[:, :, ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0]
    assert out is not None
    return out if image.dim() == 4 else out[0]
