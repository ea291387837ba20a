"""Image quality: PSNR as the course computes it."""

import math

from torch import Tensor


def psnr(denoised: Tensor, clean: Tensor, max_value: float = 1.0) -> float:
    """Mean over images of ``-10 log10(mean((denoised - clean)^2))``, values scaled to 0-1.

    ``max_value`` is the value of white in the inputs (1 or 255); inputs are (N, C, H, W).
    A reference above it is refused: 0-255 images read on the 0-1 scale would score some 48
    dB too high. An image equal to its reference counts as 200 dB (its error is floored at
    1e-20, so that one such image does not make the mean infinite).
    """
    try:
        top = float(max_value) if not isinstance(max_value, (bool, str)) else math.nan
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        top = math.nan
    if not (math.isfinite(top) and top > 0):
        raise ValueError(f"psnr: max_value must be a finite number > 0, got {max_value!r}")
    if denoised.shape != clean.shape or denoised.dim() != 4:
        raise ValueError(
            f"psnr: expected two (N, C, H, W) tensors of equal shape, got "
            f"{tuple(denoised.shape)} and {tuple(clean.shape)}"
        )
    high = float(clean.max()) if clean.numel() else 0.0
    if high > top:
        raise ValueError(
            f"psnr: the clean images reach {high:g}, above max_value={top:g} (the value of "
            f"white); 0-255 images need max_value=255"
        )
    d = denoised.double() / top
    c = clean.double() / top
    mse = ((d - c) ** 2).mean((1, 2, 3)).clamp(min=1e-20)
    return float((-10 * mse.log10()).mean())


def evaluate(model, noisy: Tensor, clean: Tensor) -> dict:
    """PSNR of the noisy input and of ``model.predict(noisy)`` against ``clean``, and the gain
    in dB. The clean images set the scale, as ``predict`` keeps the input's: integers, or
    floats above 1, are 0-255 images; other floats 0-1 images."""
    white = 1.0 if clean.dtype.is_floating_point and float(clean.max()) <= 1.0 else 255.0
    denoised = model.predict(noisy)
    before = psnr(noisy.float(), clean.float(), white)
    after = psnr(denoised.float(), clean.float(), white)
    return {"noisy_psnr": before, "denoised_psnr": after, "gain": after - before}
