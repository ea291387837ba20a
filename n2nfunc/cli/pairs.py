"""The training and validation pairs a command line asks for: built-in, from pair folders,
or cut from photos with the noise of ``--noise``."""

from pathlib import Path

import torch

from ..data import (
    builtin_pairs,
    load_folder_pairs,
    load_pair_file,
    load_photos,
    mixed_factor_pairs,
    photo_pairs,
)
from ..data.noise import parse_noise, photo_noise_pairs
from ..data.photos import PATCH
from ..data.synthetic import to_int16, to_uint8
from .common import _camera_noise, _loading, _n_train_default, _say

PHOTO_CROP = 64  # crops of `train --photos` with camera noise (Gaussian, Poisson)
PHOTO_FACTORS = (4, 6, 8, 12)  # downsampling factors of `train --photos` (mixed_factor_pairs)


VAL_PHOTO_FACTOR = 8  # the one of `--val-photos`


def noise_words(spec: str, source: str = "built-in pairs") -> str:
    """A short description of a noise spec, for people."""
    noise = parse_noise(spec)
    blind = "blind " if noise.low != noise.high else ""
    level = str(noise).partition(":")[2]
    if noise.kind == "gaussian":
        return f"{blind}Gaussian noise, sigma {level} (of 255), {source}"
    if noise.kind == "poisson":
        return f"{blind}Poisson noise, peak {level}, {source}"
    return f"aliasing from point-sampled {level}x downsampling (the course data's kind), {source}"


def _n_train(args) -> int:
    """``--n-train``, by default 50,000 32x32 patches or as many pixels of 64x64 crops."""
    if args.n_train is not None:
        return args.n_train
    return _n_train_default(args)


def _photo_noise_pairs(photos, n: int, args, split: str):
    """Camera-noise pairs of 64x64 photo crops as the built-in pairs are: the noisy input
    uint8 (clipped and rounded, as a saved photo), the target int16 on the 0-255 scale
    (unclipped) or, to validate, the clean crop uint8. Integers say their scale: as floats on
    the 0-255 scale, the pairs of a dark photo (mean at most 2) were read as 0-1 images."""
    a, b = photo_noise_pairs(photos, n, args.noise, PHOTO_CROP, args.seed, split=split)
    return to_uint8(a), to_uint8(b) if split == "val" else to_int16(b)


def _say_if_identical(noisy, clean) -> None:
    """A note when the validation set's noisy images equal its clean ones (its PSNR is then
    the 200 dB cap, and the gain meaningless)."""
    if torch.equal(noisy, clean):
        print(
            "note: the noisy validation images equal the clean ones: nothing to denoise "
            "(check the data)"
        )


def _builtin(args, n: int, split: str):
    return builtin_pairs(n, split, args.noise, args.seed, announce=_say)


def _photo_factor(args) -> int | None:
    """The factor of ``--noise downsample:FACTOR``; None for plain ``downsample`` (photo pairs
    then take their own: mixed factors to train, VAL_PHOTO_FACTOR to validate)."""
    return int(parse_noise(args.noise).low) if args.noise != "downsample" else None


def _crop_sides(args, option: str) -> tuple:
    """The sides of the crops that ``--noise`` cuts from the photos of ``option`` ("photos"
    or "val_photos"): PHOTO_CROP for camera noise, else PATCH x each downsampling factor
    (plain ``downsample``: PHOTO_FACTORS to train, VAL_PHOTO_FACTOR to validate)."""
    if _camera_noise(args):
        return (PHOTO_CROP,)
    factor = _photo_factor(args)
    own = PHOTO_FACTORS if option == "photos" else (VAL_PHOTO_FACTOR,)
    return tuple(PATCH * f for f in ((factor,) if factor else own))


def _validation_data(args, training: tuple | None = None):
    """(noisy, clean, description) of the validation options shared by train and eval.
    ``training``: train's (noisy, clean) pairs, taken as they are where ``--val-pairs`` is
    the ``--pairs`` folder (read once: its notes said once)."""
    if getattr(args, "val", None):
        xv, yv = _loading("--val", load_pair_file, args.val)
        return xv, yv, f"course file {args.val}"
    if args.val_pairs:
        desc = f"image pairs in {args.val_pairs}"
        pairs = getattr(args, "pairs", None)
        if (
            training is not None
            and pairs
            and Path(pairs).resolve() == Path(args.val_pairs).resolve()
        ):
            return *training, desc
        xv, yv = _loading("--val-pairs", load_folder_pairs, args.val_pairs, announce=_say)
        return xv, yv, desc
    if args.val_photos:
        crop = min(_crop_sides(args, "val_photos"))
        photos = _loading("--val-photos", load_photos, args.val_photos, crop, _say)
        if _camera_noise(args):
            xv, yv = _loading("--val-photos", _photo_noise_pairs, photos, args.n_val, args, "val")
            return xv, yv, f"{args.n_val} crops of the photos in {args.val_photos}, {args.noise}"
        factor = crop // PATCH
        xv, yv = _loading(
            "--val-photos",
            photo_pairs,
            photos,
            args.n_val,
            "val",
            args.seed,
            factor=factor,
            scales=(1,),
        )
        return xv, yv, f"{args.n_val} patches of the photos in {args.val_photos} (factor {factor})"
    xv, yv = _builtin(args, args.n_val, "val")
    return xv, yv, f"{args.n_val} built-in validation pairs, noise {args.noise}"


def _training_data(args):
    """(train_a, train_b, description, noise description) from the command-line options."""
    if args.train:
        xt, yt = _loading("--train", load_pair_file, args.train)
        return xt, yt, f"course file {args.train}", f"the noise of the course file {args.train}"
    if args.pairs:
        xt, yt = _loading("--pairs", load_folder_pairs, args.pairs, announce=_say)
        return (
            xt,
            yt,
            f"image pairs in {args.pairs}",
            f"the noise of the image pairs in {args.pairs}",
        )
    n = _n_train(args)
    if args.photos:
        photos = _loading(
            "--photos", load_photos, args.photos, min(_crop_sides(args, "photos")), _say
        )
        desc = f"cut from the photos in {args.photos}, noise {args.noise}"
        if _camera_noise(args):
            xt, yt = _loading("--photos", _photo_noise_pairs, photos, n, args, "train")
            return xt, yt, desc, noise_words(args.noise, f"photos in {args.photos}")
        factor = _photo_factor(args)
        if factor:  # one factor asked for
            xt, yt = _loading("--photos", photo_pairs, photos, n, "train", args.seed, factor=factor)
            return xt, yt, desc, noise_words(args.noise, f"photos in {args.photos}")
        xt, yt = _loading(
            "--photos", mixed_factor_pairs, photos, n, "train", args.seed, PHOTO_FACTORS
        )
        return (
            xt,
            yt,
            desc,
            "aliasing from point-sampled downsampling by "
            f"{', '.join(map(str, PHOTO_FACTORS))} of the photos in {args.photos}",
        )
    xt, yt = _builtin(args, n, "train")
    return xt, yt, f"built-in, noise {args.noise}", noise_words(args.noise)
