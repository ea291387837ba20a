"""Camera-style noise for Noise2Noise training and evaluation, from a ``--noise`` text.

Grammar (levels on the 0-255 scale for Gaussian noise):

* ``gaussian:SIGMA`` or ``gaussian:LO-HI``: ``clean + sigma * n``, ``n ~ N(0, 1)`` per pixel
  and channel, ``sigma / 255`` in [0, 1] units;
* ``poisson:PEAK`` or ``poisson:LO-HI``: ``Poisson(PEAK * clean) / PEAK`` (PEAK photons at
  white: a smaller PEAK is stronger noise);
* ``downsample[:FACTOR]``: the exercise's aliasing, one random pixel of each FACTOR x
  FACTOR cell (default 4); the noisy images are FACTOR times smaller than the clean one in height
  and in width.

A range means a *blind* level, drawn uniformly per image (the same for both images of a
pair). All noise is zero-mean given the clean image. :func:`noisy_pair` returns the
noisy *input* clipped to [0, 1], as a saved photo would be, and the noisy *target*
unclipped: clipping a target would bias Noise2Noise near black and white.
"""

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .photos import PhotoLevel, photo_levels
from .synthetic import box_downsample, point_sample, split_generator

KINDS = ("gaussian", "poisson", "downsample")
MAX_FACTOR = 16  # downsampling factors (the clean images are rendered FACTOR times larger)
# Photons at white. Above 1e6 torch.poisson's range ends (1e19 gave black images); below 0.1
# a built-in training target, int16 on the 0-255 scale where one photon is worth 255/peak,
# would overflow (at 0.001 targets averaged 0.06 for a clean mean of 0.43): at 0.1 that takes
# 13 photons where 0.1 are expected.
POISSON_PEAKS = (0.1, 1e6)
_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only
GRAMMAR = "gaussian:SIGMA, gaussian:LO-HI, poisson:PEAK, poisson:LO-HI or downsample[:FACTOR]"


class NoiseSpec(NamedTuple):
    """A parsed noise text: ``kind`` and the level range ``[low, high]`` (sigma on the 0-255
    scale, Poisson peak, or the integer downsampling factor)."""

    kind: str
    low: float
    high: float

    def __str__(self) -> str:
        if self.kind == "downsample":
            return f"downsample:{int(self.low)}"
        level = f"{self.low:g}" if self.low == self.high else f"{self.low:g}-{self.high:g}"
        return f"{self.kind}:{level}"


def parse_noise(text) -> NoiseSpec:
    """The :class:`NoiseSpec` of ``text`` (see the module docstring); a ValueError quotes the
    text and the grammar."""
    if isinstance(text, NoiseSpec):  # one made by hand: checked as its text would be
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in text[1:]
        )
        if not numbers:
            raise ValueError(f"noise {text!r}: the levels must be finite numbers")
        if text.kind == "downsample":
            if not text.low == text.high == int(text.low):
                raise ValueError(f"noise {text!r}: a downsampling factor is one whole number")
            parse_noise(str(text))
        else:  # the levels as written, not rounded by str's :g
            parse_noise(f"{text.kind}:{float(text.low)!r}-{float(text.high)!r}")
        return text
    if not isinstance(text, str):
        raise TypeError(f"noise must be a string like 'gaussian:25', got {type(text).__name__}")

    def bad(why: str) -> ValueError:
        return ValueError(f"noise {text!r}: {why}; expected {GRAMMAR}")

    kind, colon, level = text.strip().partition(":")
    if kind not in KINDS:
        raise bad(f"unknown kind {kind!r}")
    if kind == "downsample":
        if not colon:
            return NoiseSpec("downsample", 4.0, 4.0)
        if not level.isascii() or not level.isdigit() or not 2 <= int(level) <= MAX_FACTOR:
            raise bad(f"the factor must be an integer from 2 to {MAX_FACTOR}")
        return NoiseSpec("downsample", float(level), float(level))
    if not level:
        raise bad(f"{kind} needs a level, e.g. {kind}:25")
    if level.startswith("-") and _NUMBER.match(level, 1):  # "-5" is a number, not a level
        raise bad(
            f"the Poisson peak must be from {POISSON_PEAKS[0]:g} to {POISSON_PEAKS[1]:g}"
            if kind == "poisson"
            else "sigma must be in [0, 255] (0-255 scale) and not all zero"
        )
    parts = re.fullmatch(rf"({_NUMBER.pattern})(?:-({_NUMBER.pattern}))?", level)
    if parts is None:  # (a "-" inside an exponent, as in 1e-1, is not the range's)
        if re.search("nan|inf", level.lower()):
            raise bad("levels must be finite")
        raise bad(f"{level!r} is not a number or a range LO-HI")
    low = float(parts.group(1))
    high = float(parts.group(2)) if parts.group(2) else low
    if not (math.isfinite(low) and math.isfinite(high)):
        raise bad("levels must be finite")
    if low > high:
        raise bad(f"the range {level!r} is empty (LO > HI)")
    if kind == "gaussian" and not (0 <= low and 0 < high <= 255):
        raise bad("sigma must be in [0, 255] (0-255 scale) and not all zero")
    if kind == "poisson" and not POISSON_PEAKS[0] <= low <= high <= POISSON_PEAKS[1]:
        raise bad(f"the Poisson peak must be from {POISSON_PEAKS[0]:g} to {POISSON_PEAKS[1]:g}")
    return NoiseSpec(kind, low, high)


def levels(spec: NoiseSpec, n: int, generator: torch.Generator) -> Tensor:
    """``n`` noise levels, uniform in ``[low, high]`` (all equal to ``low`` for a fixed one)."""
    if spec.low == spec.high:
        return torch.full((n,), spec.low)
    return torch.empty(n).uniform_(spec.low, spec.high, generator=generator)


def add_noise(
    clean: Tensor, spec, generator: torch.Generator, level: Tensor | None = None, clip=True
) -> Tensor:
    """One noisy draw of ``clean`` (N, C, H, W) in [0, 1]; ``level`` (N,) overrides the
    drawn levels; clipped to [0, 1] when ``clip``. For ``downsample`` the result is the
    point-sampled image (H and W divided by the factor)."""
    spec = parse_noise(spec)
    if not isinstance(clean, Tensor) or clean.dim() != 4 or not clean.is_floating_point():
        got = tuple(clean.shape) if isinstance(clean, Tensor) else type(clean).__name__
        raise ValueError(f"add_noise: clean must be a float (N, C, H, W) tensor, got {got}")
    n = clean.shape[0]
    if spec.kind == "downsample":
        f = int(spec.low)
        h, w = clean.shape[2] // f * f, clean.shape[3] // f * f
        if h == 0 or w == 0:
            raise ValueError(f"add_noise: {spec} needs images of at least {f}x{f}")
        return point_sample(clean[:, :, :h, :w].contiguous(), f, generator)
    lv = (levels(spec, n, generator) if level is None else level).view(n, 1, 1, 1)
    if spec.kind == "gaussian":
        z = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        noisy = clean + z.to(clean.device) * (lv.to(clean) / 255)
    else:
        peak = lv.to(clean)
        counts = torch.poisson((clean.clamp(min=0) * peak).cpu(), generator=generator)
        noisy = counts.to(clean.device) / peak
    return noisy.clamp(0, 1) if clip else noisy


def clean_for(clean: Tensor, spec) -> Tensor:
    """The clean image a denoiser should return for noise ``spec`` applied to ``clean``: itself,
    or its box average for ``downsample``."""
    spec = parse_noise(spec)
    if spec.kind != "downsample":
        return clean
    f = int(spec.low)
    h, w = clean.shape[2] // f * f, clean.shape[3] // f * f
    return box_downsample(clean[:, :, :h, :w].contiguous(), f)


def noisy_pair(clean: Tensor, spec, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two independent noisy draws of ``clean`` at one level per image (drawn uniformly when
    ``spec`` is a range): ``(input clipped to [0, 1], target not clipped)``."""
    spec = parse_noise(spec)
    if spec.kind == "downsample":
        return add_noise(clean, spec, generator), add_noise(clean, spec, generator)
    lv = levels(spec, clean.shape[0], generator)
    first = add_noise(clean, spec, generator, level=lv, clip=True)
    return first, add_noise(clean, spec, generator, level=lv, clip=False)


def random_crops(images: Sequence, n: int, size: int, generator: torch.Generator) -> Tensor:
    r"""``n`` crops (n, 3, size, size) of float images (3, H, W) or :class:`PhotoLevel`\ s,
    each from a random image (chosen in proportion to its area, among those large enough),
    randomly flipped and turned by quarter turns."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"random_crops: size must be a positive int, got {size!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"random_crops: need at least one crop, got n={n!r}")
    big = [img for img in images if min(img.shape[1:]) >= size]
    if not big:
        raise ValueError(f"random_crops: no image is at least {size} pixels on its short side")
    areas = torch.tensor([float(img.shape[1] * img.shape[2]) for img in big])
    which = torch.multinomial(areas, n, replacement=True, generator=generator).tolist()
    out = torch.empty(n, 3, size, size)
    for i, j in enumerate(which):
        img = big[j]
        y = int(torch.randint(img.shape[1] - size + 1, (1,), generator=generator))
        x = int(torch.randint(img.shape[2] - size + 1, (1,), generator=generator))
        patch = (
            img.crop(y, x, size)
            if isinstance(img, PhotoLevel)
            else img[:, y : y + size, x : x + size]
        )
        if int(torch.randint(2, (1,), generator=generator)):
            patch = patch.flip(2)
        out[i] = patch.rot90(int(torch.randint(4, (1,), generator=generator)), (1, 2))
    return out


def photo_noise_pairs(
    photos: Sequence[Tensor],
    n: int,
    spec,
    size: int = 64,
    seed: int = 0,
    scales: Sequence[int] = (1, 2),
    split: str = "train",
) -> tuple[Tensor, Tensor]:
    """``n`` Noise2Noise training pairs (inputs clipped, targets not) of ``size`` x ``size``
    from random crops of ``photos`` (uint8 (3, H, W)); for ``downsample:F`` the crops are
    ``F * size`` and point-sampled down to ``size``. ``split="val"`` gives (noisy input,
    clean) pairs instead. Deterministic for a seed; train and val use disjoint streams."""
    if split not in ("train", "val"):
        raise ValueError(f"photo_noise_pairs: split must be 'train' or 'val', got {split!r}")
    spec = parse_noise(spec)
    if not isinstance(size, int) or size < 64:
        raise ValueError(f"photo_noise_pairs: crops must be at least 64x64, got size={size!r}")
    g = split_generator(seed, split)
    factor = int(spec.low) if spec.kind == "downsample" else 1
    clean = random_crops(photo_levels(photos, scales), n, size * factor, g)
    if split == "val":
        return add_noise(clean, spec, g), clean_for(clean, spec)
    return noisy_pair(clean, spec, g)


__all__ = [
    "GRAMMAR",
    "NoiseSpec",
    "add_noise",
    "clean_for",
    "levels",
    "noisy_pair",
    "parse_noise",
    "photo_levels",
    "photo_noise_pairs",
    "random_crops",
]
