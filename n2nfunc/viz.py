"""Pictures of a training run: loss / PSNR curves and a noisy | denoised | clean grid.

Needs the ``viz`` extra (matplotlib); every function returns the path it wrote, or None
with a message when matplotlib is missing.
"""

from pathlib import Path

import torch


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        print("matplotlib is not installed (pip install 'n2nfunc[viz]'): no pictures written")
        return None


def plot_curves(history: list, path) -> Path | None:
    """Training loss and validation PSNR per epoch, side by side."""
    plt = _pyplot()
    if plt is None or not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [h["loss"] for h in history], marker="o")
    a.set(xlabel="epoch", ylabel="training loss (MSE)", yscale="log", title="loss")
    b.plot(epochs, [h["val_psnr"] for h in history], marker="o", label="denoised")
    b.axhline(history[0]["noisy_psnr"], color="grey", linestyle="--", label="noisy input")
    b.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation PSNR")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def sample_grid(
    noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor, path, count: int = 8
) -> Path | None:
    """Rows of noisy | denoised | clean images (uint8 or 0-255 floats, N x 3 x H x W)."""
    plt = _pyplot()
    if plt is None:
        return None
    count = min(count, noisy.shape[0])
    fig, axes = plt.subplots(3, count, figsize=(1.3 * count, 4.2), squeeze=False)
    for row, (name, images) in enumerate(
        (("noisy", noisy), ("denoised", denoised), ("clean", clean))
    ):
        for i in range(count):
            ax = axes[row][i]
            ax.imshow(
                images[i].float().clamp(0, 255).div(255).permute(1, 2, 0).cpu().numpy(),
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
