"""Image quality: PSNR as the course computes it."""

import math

from torch import Tensor


def psnr(denoised: Tensor, clean: Tensor, max_value: float = 1.0) -> float:
    """Mean over images of ``-10 log10(mean((denoised - clean)^2))``, values scaled to 0-1.

    ``max_value`` is the value of white in the inputs (1 or 255); inputs are (N, C, H, W).
    An image equal to its reference counts as 200 dB (its error is floored at 1e-20, so that
    one such image does not make the mean infinite).
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
    d = denoised.double() / top
    c = clean.double() / top
    mse = ((d - c) ** 2).mean((1, 2, 3)).clamp(min=1e-20)
    return float((-10 * mse.log10()).mean())


def evaluate(model, noisy: Tensor, clean: Tensor) -> dict:
    """PSNR of the noisy input and of ``model.predict(noisy)`` against ``clean`` (uint8 or
    0-255 images), and the gain in dB."""
    denoised = model.predict(noisy)
    before = psnr(noisy.float(), clean.float(), 255.0)
    after = psnr(denoised.float(), clean.float(), 255.0)
    return {"noisy_psnr": before, "denoised_psnr": after, "gain": after - before}
