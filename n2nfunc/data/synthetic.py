"""Built-in data: procedural "dead leaves" images and the noise models that make pairs.

A dead-leaves image stacks random shapes (ellipses and rotated rectangles, large ones
rarer, as in the classic model of natural-image statistics), each filled with a colour,
a smooth gradient and often a fine periodic texture. Images are rendered at
``factor`` times the output resolution; the noise models then produce 32x32 pairs:

* ``downsample`` (default, like the course data): the clean image is the box (area)
  average of each ``factor x factor`` cell; a noisy view takes *one* high-resolution pixel
  of each cell, at an independent random position. Its expectation is the clean image,
  so two views are a valid Noise2Noise pair; the error is aliasing: sparse, strong,
  wrong-coloured pixels where the image has fine texture.
* ``gaussian``: clean + N(0, sigma^2) (sigma in 0-255 units).
* ``poisson``: Poisson(clean * peak) / peak.

(A noisy input is clipped to [0, 1] as a saved photo would be; a training target is not, as
a clipped target would bias Noise2Noise near black and white.)

Everything is vectorised over a chunk of images and deterministic for a seed.
This is a data module, not compute path: it uses any torch function.
"""

import math

import torch
from torch import Tensor

from ..base import is_int, seed_error


def _uniform(g, *shape, low=0.0, high=1.0):
    return torch.rand(*shape, generator=g) * (high - low) + low


def render_dead_leaves(
    n: int,
    size: int,
    generator: torch.Generator,
    shapes: int = 20,
    texture_fraction: float = 0.35,
    texture_strength: float = 0.3,
) -> Tensor:
    """``n`` RGB images of ``size x size`` in [0, 1], float32, shape (n, 3, size, size).

    Shape membership is decided on a half-resolution grid (edges still fall inside the
    output cells) and colours on the full grid.
    """
    if not isinstance(size, int) or size < 2 or size % 2:
        raise ValueError(f"render_dead_leaves: size must be an even int >= 2, got {size!r}")
    g = generator
    half = size // 2
    k = shapes + 1  # label 0 is the background
    coords = (torch.arange(half, dtype=torch.float32) + 0.5) / half
    labels = torch.zeros(n, half, half, dtype=torch.long)
    rmin, rmax = 0.04, 0.7
    for s in range(1, k):
        cx, cy = _uniform(g, n, 1, 1), _uniform(g, n, 1, 1)
        # radius density ~ r^-3 on [rmin, rmax] (scale invariance of dead leaves)
        u = _uniform(g, n, 1, 1)
        r = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5
        rb = r * _uniform(g, n, 1, 1, low=0.35, high=1.0)
        theta = _uniform(g, n, 1, 1, high=math.pi)
        dx = coords.view(1, 1, half) - cx
        dy = coords.view(1, half, 1) - cy
        c, si = theta.cos(), theta.sin()
        a = dx * (c / r) + dy * (si / r)  # rotated, scaled coordinates
        b = dy * (c / rb) - dx * (si / rb)
        inside = (a * a + b * b < 1) if s % 2 else (a.abs_().maximum(b.abs_()) < 1)
        labels.masked_fill_(inside, s)
    labels += (torch.arange(n) * k).view(n, 1, 1)  # rows of the flat table

    # per-shape parameters: colour 3, gradient 2, wave vector 2, phase 1, texture tint 3
    base = _uniform(g, n, k, 3) ** 1.3
    grad = _uniform(g, n, k, 2, low=-0.6, high=0.6) * (_uniform(g, n, k, 1) < 0.5)
    textured = (_uniform(g, n, k, 1) < texture_fraction).float()
    period = 2 ** _uniform(g, n, k, 1, low=0.6, high=2.6)  # 1.5 .. 6 pixels
    angle = _uniform(g, n, k, 1, high=math.pi)
    wave = torch.cat([angle.cos(), angle.sin()], -1) * (2 * math.pi / period)
    phase = _uniform(g, n, k, 1, high=2 * math.pi)
    tint = _uniform(g, n, k, 3, low=-1, high=1) * 0.5 + _uniform(g, n, k, 1, low=-1, high=1)
    tint *= textured * texture_strength
    table = torch.cat([base, grad, wave, phase, tint], -1).view(n * k, 11)
    # parameters of each half-resolution pixel, shaped to broadcast over its 2x2 block
    p = table[labels.view(-1)].t().contiguous().view(11, n, half, 1, half, 1)

    pix = torch.arange(size, dtype=torch.float32)
    x = pix.view(1, 1, 1, half, 2)  # column of each pixel
    y = pix.view(1, half, 2, 1, 1)  # row of each pixel
    shade = p[3] * (x / size - 0.5) + p[4] * (y / size - 0.5)
    texture = (p[5] * x + p[6] * y + p[7]).sin_()
    img = torch.empty(n, 3, half, 2, half, 2)
    for c in range(3):
        img[:, c] = (texture * p[8 + c]).add_(p[c]).add_(shade)
    return img.clamp_(0, 1).view(n, 3, size, size)


def box_downsample(high: Tensor, factor: int) -> Tensor:
    """Area average of each ``factor x factor`` cell: (n, c, f*h, f*w) -> (n, c, h, w)."""
    n, c, hh, ww = high.shape
    return high.view(n, c, hh // factor, factor, ww // factor, factor).mean((3, 5))


def point_sample(high: Tensor, factor: int, generator: torch.Generator) -> Tensor:
    """One pixel of each ``factor x factor`` cell at an independent random position (all
    channels of that pixel): an unbiased but aliased estimate of :func:`box_downsample`."""
    n, c, hh, ww = high.shape
    h, w = hh // factor, ww // factor
    pick = torch.randint(factor * factor, (n, 1, h, w), generator=generator)  # a * factor + b
    rows = torch.arange(h).view(1, 1, h, 1).mul(factor).add(pick.div(factor, rounding_mode="floor"))
    cols = torch.arange(w).view(1, 1, 1, w).mul(factor).add(pick.remainder(factor))
    flat = rows.mul_(ww).add_(cols).view(n, 1, h * w).expand(n, c, h * w)
    return high.reshape(n, c, hh * ww).gather(2, flat).view(n, c, h, w)  # only the picked pixels


def to_uint8(x: Tensor) -> Tensor:
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def to_int16(x: Tensor) -> Tensor:
    """``x`` on the 0-255 scale, rounded but not clipped (an unclipped Noise2Noise target)."""
    return (x * 255).round_().clamp_(-32768, 32767).to(torch.int16)


def noisy_views(
    high: Tensor,
    clean: Tensor,
    noise,
    factor: int,
    generator: torch.Generator,
    level=None,
    clip: bool = True,
) -> Tensor:
    """One noisy view (float) of each image for a noise spec
    (:func:`n2nfunc.data.noise.parse_noise`): ``high`` point-sampled by ``factor`` for
    downsampling, else ``clean`` plus noise at ``level`` (one per image), clipped to [0, 1]
    when ``clip``."""
    from .noise import add_noise  # noise.py builds on this module's samplers

    if noise.kind == "downsample":
        return point_sample(high, factor, generator)
    return add_noise(clean, noise, generator, level=level, clip=clip)


def split_generator(seed: int, split: str) -> torch.Generator:
    """The generator of a split's draws: train and val take disjoint streams of a seed
    (``2 seed`` and ``2 seed + 1``, modulo 2**64 as torch reads a negative seed), for a seed
    of :data:`~n2nfunc.base.SEEDS`, where no two seeds share one."""
    if error := seed_error(seed):
        raise (ValueError if is_int(seed) else TypeError)(error)
    return torch.Generator().manual_seed((int(seed) * 2 + (split == "val")) % 2**64)


def make_pairs(
    n: int,
    split: str,
    noise="downsample",
    seed: int = 0,
    size: int = 32,
    chunk: int | None = None,
    clean_targets: bool = False,
) -> tuple[Tensor, Tensor]:
    """``n`` pairs (n, 3, size, size) on the 0-255 scale: noisy/noisy for ``split="train"``,
    noisy/clean for ``split="val"``, with the noise of a spec (a ``--noise`` text or a
    ``NoiseSpec``; both images of a pair share one level). Train and val draw from disjoint
    seeds. The first image, and every image of aliasing pairs, is uint8 (clipped, like a
    saved photo); a training target of Gaussian or Poisson noise is int16, rounded but not
    clipped, as a clipped target would bias Noise2Noise near black and white. Images are
    made ``chunk`` at a time (default: 1000 rendered at 128 x 128, fewer when the downsampling
    factor renders them larger, so that memory stays about 1 GB at any factor).
    ``clean_targets``: the training split's inputs, each beside its clean image (uint8) instead
    of its second noisy view -- the same draws, so a model trained on them sees exactly the
    inputs of one trained Noise2Noise (bench/psnr.py compares the two)."""
    from .noise import levels, parse_noise

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    noise = parse_noise(noise)
    factor = int(noise.low) if noise.kind == "downsample" else 4
    if n < 1:
        raise ValueError(f"need at least one pair, got n={n}")
    if not isinstance(size, int) or size < 1 or size * factor % 2:
        raise (ValueError if isinstance(size, int) else TypeError)(
            f"make_pairs: size must be an int >= 1 whose rendering at {factor}x is even "
            f"(images are drawn on a half-resolution grid), got size={size!r}"
        )
    if chunk is None:
        chunk = max(1, min(1000, 16000 // factor**2))
    g = split_generator(seed, split)
    first, second = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        high = render_dead_leaves(m, size * factor, g)
        clean = box_downsample(high, factor)
        lv = None if noise.kind == "downsample" else levels(noise, m, g)
        first.append(to_uint8(noisy_views(high, clean, noise, factor, g, lv)))
        if split == "val":
            second.append(to_uint8(clean))
            continue
        if noise.kind == "downsample":
            view = to_uint8(noisy_views(high, clean, noise, factor, g, lv))
        else:
            view = to_int16(noisy_views(high, clean, noise, factor, g, lv, clip=False))
        second.append(to_uint8(clean) if clean_targets else view)  # drawn either way: the
    return torch.cat(first), torch.cat(second)  # next chunk's images are the same
