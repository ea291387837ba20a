"""``denoise_image``: run a network over a large image in overlapping tiles, with bounded
memory and no seams.

Along each axis, tiles of ``tile`` pixels start at multiples of ``step`` (``tile - 2 *
overlap`` rounded down to a multiple of ``align``); the last tile stops at the image
border. Each tile's output is cropped to the part at least ``overlap`` pixels away from
the tile's inner borders, and the crops tile the image exactly (no blending). Because
tiles start at multiples of ``align`` -- a multiple of the network's own padding multiple
-- every tile sees the same pooling grid and the same edge padding as the whole image, so
where ``overlap`` covers the network's *reach* (how far from an output pixel the input
pixels it depends on lie) the result is the untiled one, up to the rounding of
differently sized matrix products.

A network declares its multiple and reach with :func:`with_footprint` (the U-Nets do:
``5 * 2**depth - 2`` pixels, 78 at the default depth 4); ``denoise_image`` then takes
them as its defaults (the exercise's network: multiple 4, reach 27). A network without one --
any network of your own, a U-Net inside ``serial`` or ``residual`` too (combinators do not
pass a footprint on) -- must be given ``overlap`` and ``align`` where the image needs more
than one tile: defaults guessed for it had left seams. ``with_footprint`` declares them once.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

from . import tree
from .base import NOISY_MAX, Layer, Params, an_int, check_tensor, pixel_scale, positive_int
from .train import described

DEFAULT_ALIGN = 32
DEFAULT_TILE = 256
# The largest value a [0, 1] image with unclipped noise is taken to reach (Poisson noise at
# peak 0.3 reaches 20); a float image with a higher maximum and a mean above NOISY_MEAN, or a
# maximum above this, reads as 0-255 (a dark 0-255 image has a mean below 2).
UNCLIPPED_MAX = 4 * NOISY_MAX


class Footprint(NamedTuple):
    multiple: int  # the network pads its input to multiples of this
    reach: int  # an output pixel depends on input pixels at most this far away


def with_footprint(layer: Layer, multiple: int, reach: int) -> Layer:
    """``layer``, recording its size ``multiple`` and its ``reach`` for :func:`denoise_image`."""
    multiple = positive_int(multiple, "multiple", "with_footprint")
    if an_int(reach, "reach", "with_footprint") < 0:
        raise ValueError(f"with_footprint: reach must be an int >= 0, got {reach!r}")
    reach = int(reach)

    def apply(params, x):
        return layer.apply(params, x)

    apply.footprint = Footprint(multiple, reach)  # type: ignore[attr-defined]
    return Layer(layer.init, apply, layer.vjp)


def footprint(layer) -> Footprint | None:
    """What :func:`with_footprint` recorded, or None."""
    return getattr(layer.apply, "footprint", None)


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


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def least_tile(overlap: int, align: int) -> int:
    """The smallest tile that leaves room for one alignment step between two overlaps."""
    return round_up(2 * overlap + align, align)


def tile_settings(
    layer: Layer, tile=None, overlap=None, align=None, size: tuple | None = None
) -> tuple[int, int, int]:
    """``(tile, overlap, align)`` for ``layer``, each None taken from its footprint:
    ``overlap`` its reach, ``align`` its multiple (at least 32), ``tile`` at least 256 and
    six overlaps, so that at most about half of every tile is overlap. Bad values raise; a
    tile too small for its overlaps, or a network without a footprint given no ``overlap``
    and ``align``, only where the image (``size``, H and W) needs tiles."""
    name = "denoise_image"
    fp = footprint(layer)
    for value, what in ((tile, "tile"), (overlap, "overlap"), (align, "align")):
        low = 0 if what == "overlap" else 1
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and (not whole or value < low):
            error = ValueError if whole else TypeError
            raise error(f"{name}: {what} must be an int >= {low}, got {value!r}")
    if fp is None and (overlap is None or align is None):
        fits = size is not None and max(size) <= (tile or DEFAULT_TILE)
        if not fits:
            raise ValueError(
                f"{name}: the network's reach and size multiple are unknown (a network of "
                "your own, or a U-Net inside serial, residual, ..., which do not pass them on) "
                f"and the image {tuple(size) if size else ''} needs tiles: give overlap= (at "
                "least its reach, in pixels) and align= (a multiple of the size its input is "
                "padded to), or declare them once with "
                "n2nfunc.tiling.with_footprint(layer, multiple, reach)"
            )
        overlap = 0 if overlap is None else overlap  # one tile: the whole image, untiled
    if align is None:
        align = math.lcm(DEFAULT_ALIGN, fp.multiple) if fp else DEFAULT_ALIGN
    elif fp and align % fp.multiple:
        raise ValueError(
            f"{name}: align {align} must be a multiple of the network's size multiple "
            f"{fp.multiple}, or tiles would see other pooling grids than the whole image"
        )
    if overlap is None:
        overlap = fp.reach if fp else 0
    if tile is None:
        tile = round_up(max(DEFAULT_TILE, 6 * overlap), align)
    if tile % align:
        raise ValueError(f"{name}: tile {tile} must be a multiple of align {align}")
    rounded = least_tile(overlap, align)
    one_tile = size is not None and max(size) <= tile
    if (tile - 2 * overlap) // align * align < align and not one_tile:
        raise ValueError(
            f"{name}: tile {tile} leaves no room after the overlap {overlap} on both sides "
            f"(need tile >= 2 * overlap + align = {2 * overlap + align}"
            + (f", so {rounded} or more)" if rounded != 2 * overlap + align else ")")
        )
    return tile, overlap, align


def denoise_image(
    layer: Layer,
    params: Params,
    image: Tensor,
    tile: int | None = None,
    overlap: int | None = None,
    align: int | None = None,
    on_tile: Callable[[int, int], object] | None = None,
) -> Tensor:
    """``layer.apply(params, image)`` computed tile by tile (see the module docstring);
    ``tile``, ``overlap`` and ``align`` default to what the network's footprint asks for
    (:func:`tile_settings`). A smaller ``overlap`` than the network's reach is allowed and
    leaves seams where the reach is cut.

    ``image`` is (C, H, W) or (N, C, H, W), any size, on the parameters' device and dtype;
    the result has the network's output channels and the image's other sizes. Values may
    leave [0, 1] slightly: callers clamp. Memory is that of one ``tile`` x ``tile`` pass.
    ``on_tile(done, total)`` is called after each tile (a progress bar's hook).
    """
    name = "denoise_image"
    if not isinstance(layer, Layer):
        raise TypeError(f"{name}: layer must be a Layer, got {described(layer)}")
    check_tensor(image, name, "image")
    if on_tile is not None and not callable(on_tile):
        raise TypeError(f"{name}: on_tile must be callable (done, total), got {described(on_tile)}")
    shape = tuple(image.shape)
    if image.dim() not in (3, 4):
        raise ValueError(f"{name}: image must be (C, H, W) or (N, C, H, W), got {shape}")
    if image.dim() == 3 and shape[-1] in (1, 3) and shape[0] not in (1, 3):
        raise ValueError(
            f"{name}: image must be (C, H, W), got {shape}: channels last? image.permute(2, 0, 1)"
        )
    if image.is_floating_point() and image.numel():
        if not bool(image.isfinite().all()):
            raise ValueError(f"{name}: the image holds NaN or infinite values")
        if pixel_scale(image, UNCLIPPED_MAX) != 1.0:
            high, mean = float(image.max()), float(image.mean())
            raise ValueError(
                f"{name}: the image reads as 0-255 (maximum {high:g}, mean {mean:.4g}); it "
                "takes values in [0, 1] (divide a 0-255 image by 255)"
            )
    return tiled(layer, params, image, tile, overlap, align, on_tile)


def tiled(
    layer: Layer,
    params: Params,
    image: Tensor,
    tile: int | None = None,
    overlap: int | None = None,
    align: int | None = None,
    on_tile: Callable[[int, int], object] | None = None,
) -> Tensor:
    """:func:`denoise_image` without its checks of the image (its shape, finite values, the
    0-1 scale), for a caller that made them: ``Model.predict``, whose explicit ``scale``
    may leave unclipped noise above :func:`denoise_image`'s bound."""
    name = "denoise_image"
    tile, overlap, align = tile_settings(layer, tile, overlap, align, tuple(image.shape[-2:]))
    step = max((tile - 2 * overlap) // align * align, align)  # (one tile: any step)
    # no autograd graph kept: not of the image, nor of params that require grad (each
    # tile's graph would stay alive through the output)
    batch = (image if image.dim() == 4 else image[None]).detach()
    params = tree.detach(params)
    n, _, h, w = batch.shape
    out: Tensor | None = None
    rows, columns = _spans(h, tile, step, overlap), _spans(w, tile, step, overlap)
    for i, (y0, y1, ky0, ky1) in enumerate(rows):
        for j, (x0, x1, kx0, kx1) in enumerate(columns):
            y = layer.apply(params, batch[:, :, y0:y1, x0:x1])
            if tuple(y.shape[-2:]) != (y1 - y0, x1 - x0) or y.dim() != 4 or y.shape[0] != n:
                raise ValueError(
                    f"{name}: the network maps a tile {tuple(batch[:, :, y0:y1, x0:x1].shape)} "
                    f"to {tuple(y.shape)}; tiling needs one that keeps the batch and the size"
                )
            if out is None:
                out = y.new_empty((n, y.shape[1], h, w))
            out[:, :, ky0:ky1, kx0:kx1] = y[:, :, ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0]
            if on_tile is not None:
                on_tile(i * len(columns) + j + 1, len(rows) * len(columns))
    assert out is not None
    return out if image.dim() == 4 else out[0]
