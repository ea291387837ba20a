"""Noise2Noise pairs cut from real photographs, with the course's kind of noise.

Each pair comes from a random crop of ``32*factor`` pixels of a photo (at a random
scale, flipped and rotated at random): the clean target is its box average to 32x32
and each noisy view point-samples one pixel per cell (see :mod:`.synthetic`).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..base import is_int
from .synthetic import box_downsample, point_sample, split_generator, to_uint8

PATCH = 32  # the side of photo_pairs' patches (the course's image size)


class PhotoLevel(NamedTuple):
    """A photo (uint8, 3 x H x W) box-downsampled by ``scale``, cut on demand: :meth:`crop`
    gives a float [0, 1] crop of the downsampled photo, the same numbers as downsampling
    the whole photo and cropping that, without holding it. A float32 copy of every photo at
    scales 1 and 2 took 15 bytes a pixel (9 GB for 50 photos of 12 megapixels), the uint8
    photos 3."""

    photo: Tensor
    scale: int

    @property
    def shape(self) -> tuple:
        """(3, H // scale, W // scale)."""
        return (3, self.photo.shape[1] // self.scale, self.photo.shape[2] // self.scale)

    def crop(self, y: int, x: int, size: int) -> Tensor:
        """Rows ``y:y+size`` and columns ``x:x+size`` of the level, float32 in [0, 1]."""
        s = self.scale
        region = self.photo[:, y * s : (y + size) * s, x * s : (x + size) * s].float().div_(255)
        return box_downsample(region[None], s)[0] if s > 1 else region


def photo_levels(photos: Sequence[Tensor], scales: Sequence[int] = (1, 2)) -> list[PhotoLevel]:
    """Every photo (uint8, 3 x H x W) box-downsampled by each of ``scales``, to crop from
    (:class:`PhotoLevel`: float [0, 1] crops, cut on demand)."""
    return [PhotoLevel(p, s) for p in photos for s in scales]


def _check_count(n) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"need at least one pair, got n={n!r}")


def photo_pairs(
    photos: Sequence[Tensor],
    n: int,
    split: str,
    seed: int = 0,
    size: int = PATCH,
    factor: int = 4,
    scales: Sequence[int] = (1, 2, 3),
    chunk: int = 500,
) -> tuple[Tensor, Tensor]:
    """``n`` uint8 pairs from ``photos``: noisy/noisy (``split="train"``) or noisy/clean
    (``"val"``). Crops are drawn from the photos' scale levels large enough for them, each
    with probability proportional to its area (so a photo too small at some scales is drawn
    less than its share of the pixels)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    _check_count(n)
    g = split_generator(seed, split)
    crop = size * factor
    big = [img for img in photo_levels(photos, scales) if min(img.shape[1:]) >= crop]
    if not big:
        raise ValueError(f"no photo is at least {crop} pixels on its short side")
    areas = torch.tensor([float(img.shape[1] * img.shape[2]) for img in big])
    which = torch.multinomial(areas, n, replacement=True, generator=g).tolist()
    firsts, seconds = [], []
    for start in range(0, n, chunk):  # bounded memory: crops are large
        picks = which[start : start + chunk]
        highs = torch.empty(len(picks), 3, crop, crop)
        for i, j in enumerate(picks):
            img = big[j]
            y = int(torch.randint(img.shape[1] - crop + 1, (1,), generator=g))
            x = int(torch.randint(img.shape[2] - crop + 1, (1,), generator=g))
            patch = img.crop(y, x, crop)
            flips, turns = torch.randint(2, (1,), generator=g), torch.randint(4, (1,), generator=g)
            if flips:
                patch = patch.flip(2)
            highs[i] = patch.rot90(int(turns), (1, 2))
        clean = box_downsample(highs, factor)
        firsts.append(to_uint8(point_sample(highs, factor, g)))
        seconds.append(to_uint8(clean if split == "val" else point_sample(highs, factor, g)))
    return torch.cat(firsts), torch.cat(seconds)


def load_photos(folder, min_side: int = 1, announce=None) -> list[Tensor]:
    """Every image in ``folder`` as a uint8 (3, H, W) tensor, but those less than
    ``min_side`` pixels on their short side (too small for any crop) and those that cannot be
    read (damaged, empty, not an image), which ``announce(line)`` names in a note: one bad
    file among a folder of photos had stopped the run, and the next run stopped at the next.
    A folder with no readable image is an error giving the first file's reason."""
    from .files import _skipped_note, list_images, read_image

    paths = list_images(folder)
    if not paths:
        raise ValueError(f"no images (png, jpg, ...) in {folder}")
    photos, unreadable, first_reason = [], [], ""
    for p in paths:
        try:
            photos.append((p, read_image(p).rgb))
        except (ValueError, OSError) as e:
            unreadable.append(p.name)
            first_reason = first_reason or str(e)
    if not photos:
        raise ValueError(f"no image in {folder} can be read ({first_reason})")
    small = [p.name for p, photo in photos if min(photo.shape[1:]) < min_side]
    if (small or unreadable) and announce is not None:
        announce(_skipped_note(folder, [], small, min_side, unreadable))
    return [photo for _, photo in photos if min(photo.shape[1:]) >= min_side]


def mixed_factor_pairs(
    photos: Sequence[Tensor],
    n: int,
    split: str,
    seed: int = 0,
    factors: Sequence[int] = (4, 6, 8, 12),
) -> tuple[Tensor, Tensor]:
    """``n`` pairs split evenly over several downsampling factors (several noise strengths;
    with fewer pairs than factors, the first ``n`` factors)."""
    _check_count(n)
    low, high = -(2**62 // 100), (2**62 - 1 - max(factors, default=0)) // 100
    if is_int(seed) and not low <= seed <= high:  # (each factor f draws from 100 seed + f)
        raise ValueError(
            f"mixed_factor_pairs: seed must be an int from {low} to {high}, got {seed} (each "
            "factor f draws from the seed 100 seed + f)"
        )
    shares = [n // len(factors) + (i < n % len(factors)) for i in range(len(factors))]
    parts = [
        photo_pairs(photos, m, split, seed=seed * 100 + f, factor=f)
        for m, f in zip(shares, factors)
        if m
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
