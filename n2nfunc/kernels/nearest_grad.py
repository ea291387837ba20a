"""The weight gradient of ``upsample`` -- nearest upsampling by ``s``, then a stride-1
convolution -- on the low-resolution grid, from box sums of the output gradient: the route of
16-bit dtypes, with every product summed in float32 and the result rounded about once.

Output row ``Y`` reads, through kernel row ``ky``, upsampled row ``Y + d ky - p``, a copy of
input row ``m = (Y + d ky - p) // s``. So, per spatial dim alike,

    dW[:, :, ky, kx] = sum_{n, m, l} S_{ky,kx}[n, m, l]^T x[n, m, l],

where ``S_{ky,kx}[m, l]`` sums ``g`` over the ``s x s`` box of output pixels whose rows start
at ``s m + p - d ky`` and columns at ``s l + p - d kx`` (zero outside the output). A box's
start depends on the tap only by its residue mod ``s`` (the box's *slot*) and a shift of
whole cells: so the sums are formed once per slot (at most ``s * s``), in float32,
channels-first in one (slots, parts, O, cells) tensor; each tap's gradient is one matmul of
a shifted view of its slot's sums with the input placed in a frame of zeros (the shifted
cells that leave an image's frame meet those zeros). Taps of one shift whose slots lie side
by side share one matmul. Channels-first, the matmuls read the cells contiguously: 1.1-1.6x
faster than channels-last, the transposing copy of ``g`` included.

In bfloat16 a sum is two operands (parts): itself rounded, and its remainder rounded, exact
to about 16 bits; their two products, each summed in float32 inside the matmul, are added in
float32 and rounded. Its error is then about two roundings of the result, as autocast's
(one). Rounded alone, the sums had lost the result where the terms of different cells
cancel (a near-constant cotangent against a zero-mean input: 0.37 of max |dW|), and the
combined 4 x 4 kernel's rounded gradient, summed onto the 3 x 3 taps afterwards, where the
phases' terms cancel (0.87). float16, whose range a sum of s * s values can leave, multiplies
the float32 sums in float32.

Against that combined kernel's gradient computed in float32 (the route before; bfloat16, 2
threads, 2-core AMD EPYC Zen 5, ms): 100 x 8 x 8 input, 64 -> 32 channels 3.5 -> 2.4; 8 x 32
x 32, 64 -> 48 6.8 -> 3.8; but 100 x 16 x 16, 32 -> 3 1.0 -> 1.2. In float32 the two are
even, and that route stays.
"""

import functools
import itertools
from typing import NamedTuple

from torch import Tensor

from ..base import BFLOAT16, FLOAT32
from ..nhwc import pad


class _DimPlan(NamedTuple):
    """One spatial dim: ``g`` is put ``before`` rows into a zero frame of ``rows`` =
    ``s (cells + 1)``; tap ``t``'s boxes start at ``s (m + shifts[t]) + residues[t]`` in it."""

    before: int
    residues: tuple
    shifts: tuple
    cells: int
    rows: int


def _dim_plan(size: int, k: int, s: int, p: int, d: int) -> _DimPlan:
    starts = [p - d * t for t in range(k)]  # box starts of cell 0 in the output, per tap
    before = max(0, -min(starts))
    residues = tuple((a + before) % s for a in starts)
    shifts = tuple((a + before) // s for a in starts)
    cells = size + max(shifts)
    return _DimPlan(before, residues, shifts, cells, s * (cells + 1))


class _Plan(NamedTuple):
    dims: tuple  # (_DimPlan, _DimPlan)
    slots: tuple  # the (residue y, residue x) of each slot, in the order they are stored
    groups: tuple  # per shift: (shift, ((first slot, last slot + 1, taps), ...))


@functools.lru_cache(maxsize=256)
def _plan(hw: tuple, kernel: tuple, scale: tuple, padding: tuple, dilation: tuple) -> _Plan:
    dims = tuple(_dim_plan(*args) for args in zip(hw, kernel, scale, padding, dilation))
    py, px = dims
    by_shift: dict = {}  # shift -> {slot: tap}
    for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
        shift = py.shifts[ky] * px.cells + px.shifts[kx]
        by_shift.setdefault(shift, {})[py.residues[ky], px.residues[kx]] = (ky, kx)
    slots = tuple(sorted({slot for taps in by_shift.values() for slot in taps}))
    if len(slots) <= 4:  # (s = 2: some order puts each shift's slots side by side)
        slots = min(
            itertools.permutations(slots),
            key=lambda order: sum(len(_runs(order, taps)) for taps in by_shift.values()),
        )
    groups = tuple((shift, _runs(slots, taps)) for shift, taps in sorted(by_shift.items()))
    return _Plan(dims, slots, groups)


def _runs(order, taps: dict) -> tuple:
    """The runs of consecutive slots of ``order`` that ``taps`` ({slot: tap}) holds, as
    ``(first, stop, (tap, ...))``."""
    runs, start = [], None
    for i, slot in enumerate(list(order) + [None]):
        if slot in taps and start is None:
            start = i
        elif slot not in taps and start is not None:
            runs.append((start, i, tuple(taps[order[j]] for j in range(start, i))))
            start = None
    return tuple(runs)


def _box_rows(t: Tensor, dim: int, residue: int, s: int, cells: int) -> Tensor:
    """``sum_{i < s} t[s j + residue + i]`` along ``dim``, for ``j < cells``."""
    views = t.narrow(dim, residue, s * cells).unflatten(dim, (cells, s)).unbind(dim + 1)
    total = views[0] + views[1] if s > 1 else views[0]
    for view in views[2:]:
        total += view
    return total


def _framed(g: Tensor, py: _DimPlan, px: _DimPlan, dtype) -> Tensor:
    """``g`` (..., H, W) put ``before`` rows and columns into a fresh zero frame of ``rows``
    each, in ``dtype`` (its rows and columns past the frame are cut: they read no input);
    only the border is zeroed."""
    frame = g.new_empty(*g.shape[:-2], py.rows, px.rows, dtype=dtype)
    (top, rows), (left, cols) = (
        (p.before, min(size, p.rows - p.before)) for p, size in zip((py, px), g.shape[-2:])
    )
    frame[..., :top, :].zero_()
    frame[..., top + rows :, :].zero_()
    frame[..., top : top + rows, :left].zero_()
    frame[..., top : top + rows, left + cols :].zero_()
    frame[..., top : top + rows, left : left + cols].copy_(g[..., :rows, :cols])
    return frame


def nearest_conv_weight_grad(
    g: Tensor, xh: Tensor, kernel: tuple, scale: tuple, padding: tuple, dilation: tuple
) -> Tensor:
    """``dW`` [O, C, kh, kw] of nearest upsampling of the NHWC ``xh`` by ``scale``, then a
    stride-1 convolution (``padding``, ``dilation``), for its NHWC output gradient ``g``, in
    ``g``'s dtype (see the module docstring). The box sums are formed in float32; in
    bfloat16 each is split into a rounded part and its rounded remainder, whose two products
    (each a matmul's result) are added in float32 and rounded (a sum rounded to bfloat16 had
    lost the result where the terms of different cells cancel: 0.37 of max |dW|); float16,
    whose range a box sum can leave, multiplies them in float32."""
    n, h, w, c = xh.shape
    o = g.shape[3]
    plan = _plan((h, w), kernel, scale, padding, dilation)
    py, px = plan.dims
    sy, sx = scale
    wide = g.dtype if g.element_size() >= 4 else FLOAT32
    parts, operands = (2, g.dtype) if g.dtype == BFLOAT16 else (1, wide)
    # g channels-first in a frame of zeros, in float32 (rows past the frame read no input:
    # cropped); then row sums by residue, and column sums into each slot
    frame = _framed(g.permute(3, 0, 1, 2), py, px, wide)
    rows = {r: _box_rows(frame, 2, r, sy, py.cells) for r in set(py.residues)}
    del frame
    cells = n * py.cells * px.cells
    boxes = g.new_empty(len(plan.slots), parts, o, cells, dtype=operands)
    for i, (ry, rx) in enumerate(plan.slots):
        box = _box_rows(rows[ry], 3, rx, sx, px.cells)
        rounded = boxes[i, 0].view(box.shape).copy_(box)
        if parts == 2:  # the remainder, exact in float32, rounded
            boxes[i, 1].view(box.shape).copy_(box.sub_(rounded))
    del rows
    xf = pad(xh, 0, py.cells - h, 0, px.cells - w).view(-1, c)  # the input in the same frame
    xf = xf.to(dtype=operands)
    dw = g.new_empty(kernel[0], kernel[1], o, c, dtype=wide)
    for shift, runs in plan.groups:
        length = cells - shift
        for first, stop, taps in runs:  # slots x parts x O rows of cells, contiguous: a view
            lhs = boxes[first:stop, :, :, shift : shift + length].reshape(-1, length)
            products = lhs.matmul(xf[:length]).view(stop - first, parts, o, c)
            for (ky, kx), product in zip(taps, products.unbind(0)):
                dw[ky, kx] = product.sum(0, dtype=wide)
    return dw.permute(2, 3, 0, 1).contiguous().to(dtype=g.dtype)
