"""Image quality: PSNR as the course computes it."""

import math
from collections.abc import Callable
from typing import Protocol

from torch import Tensor

from .base import pixel_scale


class Predictor(Protocol):
    """What :func:`evaluate` runs: a :class:`~n2nfunc.Model`, or anything with its ``predict``
    (which takes ``scale=`` too where :func:`evaluate` is given one)."""

    def predict(self, test_input: Tensor) -> Tensor: ...


# psnr compares blocks of images of at most this many numbers (16 MiB as float64): a whole
# validation set at once took 75 bytes a number (8,000 photo crops: 7.2 GB)
CHUNK_NUMBERS = 2**21


def _check_images(name: str, **images) -> None:
    """Each of ``images`` must be a real-valued tensor (integer or float)."""
    for what, t in images.items():
        if not isinstance(t, Tensor) or t.is_complex():
            got = f"dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{name}: {what} must be a real-valued tensor, got {got}")


def psnr(denoised: Tensor, clean: Tensor, max_value: float = 1.0) -> float:
    """Mean over images of ``-10 log10(mean((denoised - clean)^2))``, values scaled to 0-1.

    ``max_value`` is the value of white in the inputs (1 or 255); inputs are (N, C, H, W), or
    (3, H, W) for one RGB image.
    A reference above twice that is refused: 0-255 images read on the 0-1 scale would score
    some 48 dB too low (20 log10 255). An image equal to its reference counts as 200 dB (its
    error is floored at 1e-20, so that one such image does not make the mean infinite).
    """
    _check_images("psnr", denoised=denoised, clean=clean)
    if denoised.device != clean.device:
        raise ValueError(f"psnr: denoised is on {denoised.device}, clean on {clean.device}")
    try:
        top = float(max_value) if not isinstance(max_value, (bool, str)) else math.nan
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        top = math.nan
    if not (math.isfinite(top) and top > 0):
        raise ValueError(f"psnr: max_value must be a finite number > 0, got {max_value!r}")
    if denoised.shape == clean.shape and denoised.dim() == 3 and len(clean) == 3:  # one image
        denoised, clean = denoised[None], clean[None]
    if denoised.shape != clean.shape or denoised.dim() != 4:
        raise ValueError(
            f"psnr: expected two (N, C, H, W) (or (3, H, W)) tensors of equal shape, got "
            f"{tuple(denoised.shape)} and {tuple(clean.shape)}"
        )
    high = float(clean.max()) if clean.numel() else 0.0
    if high > 2 * top:  # no overshoot of a resampled reference: another scale
        hint = "0-255 images need max_value=255" if top < 255 else "is it on another scale?"
        raise ValueError(
            f"psnr: the clean images reach {high:g}, over twice max_value={top:g} (the value "
            f"of white); {hint}"
        )
    per_image = max(1, math.prod(clean.shape[1:]))
    step = max(1, CHUNK_NUMBERS // per_image)  # images a block: float64 copies of a block only
    total = 0.0
    for i in range(0, clean.shape[0], step):
        d = denoised[i : i + step].double() / top
        c = clean[i : i + step].double() / top
        mse = ((d - c) ** 2).mean((1, 2, 3)).clamp(min=1e-20)
        total += float((-10 * mse.log10()).sum())
    return total / clean.shape[0] if clean.shape[0] else math.nan


def evaluate(
    model: Predictor, noisy: Tensor, clean: Tensor, scale: float | None = None
) -> dict[str, float]:
    """PSNR of the noisy input and of ``model.predict(noisy)`` against ``clean``, and the gain
    in dB, on the images' own scale (``predict`` keeps the input's): ``scale`` (the value of
    white) when given, else 0-255 for integers, and for floats as ``Model.predict`` reads them
    (:func:`~n2nfunc.base.pixel_scale`: 0-1 up to a maximum of 1, or with unclipped noise);
    noisy and clean must be on the same one."""
    if not callable(getattr(model, "predict", None)):
        raise TypeError(
            f"evaluate: model must have a predict method (a Model), got {type(model).__name__}"
        )
    _check_images("evaluate", noisy=noisy, clean=clean)
    for what, images in (("noisy", noisy), ("clean", clean)):
        if isinstance(images, Tensor) and not images.numel():
            raise ValueError(f"evaluate: the {what} images are empty: shape {tuple(images.shape)}")
    if scale is not None:
        predict: Callable[..., Tensor] = model.predict
        denoised = predict(noisy, scale=scale)  # checks scale and the noisy images
        top = float(clean.max()) if clean.numel() else 0.0  # (above 2 x scale: psnr refuses)
        if clean.is_floating_point() and float(scale) > 2 and top <= 1:
            raise ValueError(
                f"evaluate: the clean images lie within 0-{top:.3g}, a 0-1 image beside "
                f"white at scale={float(scale):g}; give both on one scale"
            )
        return _gains(noisy, clean, denoised, float(scale))
    white, noisy_white = pixel_scale(clean), pixel_scale(noisy)
    if noisy_white != white:
        raise ValueError(
            f"evaluate: the noisy images read as 0-{noisy_white:g} and the clean ones "
            f"as 0-{white:g} ({noisy.dtype} and {clean.dtype}); give both on one scale "
            "(or pass scale=)"
        )
    return _gains(noisy, clean, model.predict(noisy), white)


def _gains(noisy: Tensor, clean: Tensor, denoised: Tensor, white: float) -> dict[str, float]:
    """The PSNRs of ``noisy`` and ``denoised`` against ``clean`` (white ``white``), the gain."""
    before = psnr(noisy, clean, white)
    after = psnr(denoised, clean, white)
    return {"noisy_psnr": before, "denoised_psnr": after, "gain": after - before}
