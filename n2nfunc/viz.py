"""Pictures of a training run: loss / PSNR curves and a noisy | denoised | clean grid.

Needs the ``viz`` extra (matplotlib); every function returns the path it wrote, or None
with a message when matplotlib is missing. Figures are drawn without pyplot, so the
caller's matplotlib backend (a notebook's, say) is left as it was.
"""

from pathlib import Path

import torch

from .base import is_int, real_number
from .model import to_unit_range


def _figure(**kwargs):
    """A matplotlib Figure outside pyplot's state, or None (with a message) without it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed (pip install 'n2nfunc[viz]'): no pictures written")
        return None
    return Figure(**kwargs)


def plot_curves(history: list, path) -> Path | None:
    """Training loss and validation PSNR per epoch, side by side. ``history``: the dicts that
    ``n2nfunc train`` writes (``epoch``, ``loss``, ``val_psnr``, ``noisy_psnr``), or the
    losses alone (what ``Model.train`` returns); without ``val_psnr`` the loss alone."""
    if not history:
        raise ValueError("plot_curves: the history is empty (no epoch to plot)")
    rows = [_epoch_row(h, i) for i, h in enumerate(history)]
    validated = all("val_psnr" in h for h in rows)
    fig = _figure(figsize=(9, 3.4) if validated else (4.8, 3.4))
    if fig is None:
        return None
    epochs = [h["epoch"] for h in rows]
    axes = fig.subplots(1, 2 if validated else 1, squeeze=False)[0]
    axes[0].plot(epochs, [h["loss"] for h in rows], marker="o")
    axes[0].set(xlabel="epoch", ylabel="training loss (MSE)", yscale="log", title="loss")
    if validated:
        b = axes[1]
        b.plot(epochs, [h["val_psnr"] for h in rows], marker="o", label="denoised")
        if "noisy_psnr" in rows[0]:
            b.axhline(rows[0]["noisy_psnr"], color="grey", linestyle="--", label="noisy input")
        b.set(xlabel="epoch", ylabel="PSNR (dB)", title="validation PSNR")
        b.legend()
    fig.tight_layout()
    return _save(fig, path)


def _epoch_row(entry, i: int) -> dict:
    """One epoch of a history as a dict with ``epoch`` and ``loss``: a number is a loss."""
    loss = real_number(entry)  # a Python, NumPy or 0-dim tensor number (a train step's loss)
    if loss is not None:
        return {"epoch": i + 1, "loss": loss}
    if isinstance(entry, dict) and "loss" in entry:
        return {"epoch": i + 1, **entry}
    raise ValueError(
        f"plot_curves: history entry {i} must be a loss or a dict with 'loss' (and 'epoch', "
        f"'val_psnr', 'noisy_psnr', as n2nfunc train writes them), got {entry!r}"
    )


def _save(fig, path) -> Path:
    """Write ``fig`` to ``path`` (a name without a suffix gets ``.png``, as matplotlib would
    write it) and return the path written."""
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    fig.savefig(path, dpi=110)
    return path


def sample_grid(
    noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor, path, count: int = 8
) -> Path | None:
    """Rows of noisy | denoised | clean images: batches of one shape (N, 3, H, W), each uint8
    or float, each on the 0-255 or the 0-1 scale by the scale rule of ``Model.predict``;
    the first ``count`` images of each."""
    rows = {"noisy": noisy, "denoised": denoised, "clean": clean}
    units = {
        name: to_unit_range(images, f"sample_grid: {name}")[0] for name, images in rows.items()
    }
    if len({tuple(x.shape) for x in units.values()}) > 1:
        shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in units.items())
        raise ValueError(f"sample_grid: the three batches must have one shape, got {shapes}")
    if not is_int(count) or count < 1:
        error = ValueError if is_int(count) else TypeError
        raise error(f"sample_grid: count must be an int >= 1, got {count!r}")
    count = min(int(count), noisy.shape[0])
    fig = _figure(figsize=(1.3 * count, 4.2))
    if fig is None:
        return None
    axes = fig.subplots(3, count, squeeze=False)
    for row, (name, images) in enumerate(units.items()):
        for i in range(count):
            ax = axes[row][i]
            picture = images[i].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name)
    fig.tight_layout()
    return _save(fig, path)
