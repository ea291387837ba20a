"""Pictures of a run: files written, the caller's matplotlib backend kept, bad input named."""

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from n2nfunc.viz import plot_curves, sample_grid  # noqa: E402

HISTORY = [
    {"epoch": 1, "loss": 0.02, "val_psnr": 23.0, "noisy_psnr": 21.0},
    {"epoch": 2, "loss": 0.01, "val_psnr": 24.0, "noisy_psnr": 21.0},
]


def _pixels(path):
    with Image.open(path) as im:
        return torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)


def test_pictures_are_written_and_the_backend_is_left_alone(tmp_path):
    before = matplotlib.get_backend()
    assert plot_curves(HISTORY, tmp_path / "curves.png") == tmp_path / "curves.png"
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (5, 3, 12, 10), generator=g, dtype=torch.uint8) for _ in "abc"]
    assert sample_grid(*images, tmp_path / "grid.png", count=4) == tmp_path / "grid.png"
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > im.size[1] > 100  # four columns, three rows
    assert matplotlib.get_backend() == before
    # the same images as 0-1 floats or 0-255 floats draw the same picture
    sample_grid(*[x.float() / 255 for x in images], tmp_path / "unit.png", count=4)
    sample_grid(*[x.float() for x in images], tmp_path / "float.png", count=4)
    assert torch.equal(_pixels(tmp_path / "unit.png"), _pixels(tmp_path / "grid.png"))
    assert torch.equal(_pixels(tmp_path / "float.png"), _pixels(tmp_path / "grid.png"))


def test_bad_input_is_named(tmp_path):
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"sample_grid: denoised must have shape \(N, 3, H, W\)"):
        sample_grid(x, x[0], x, tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"one shape, got noisy \(2, 3, 8, 8\), denoised \(1, 3"):
        sample_grid(x, x[:1], x, tmp_path / "g.png")
    with pytest.raises(ValueError, match="count must be an int >= 1, got 0"):
        sample_grid(x, x, x, tmp_path / "g.png", count=0)
    with pytest.raises(ValueError, match="history is empty"):
        plot_curves([], tmp_path / "c.png")
    assert not list(tmp_path.iterdir())


def test_plot_curves_takes_losses_alone_and_returns_the_file_it_wrote(tmp_path):
    """Model.train's list of losses and a history without validation were refused with a
    bare TypeError / KeyError; a path without a suffix was returned though matplotlib had
    written it with '.png'."""
    losses = ([0.02, 0.015], [torch.tensor(0.02), torch.tensor(0.015).numpy()[()]])
    for history in (*losses, [{"epoch": 1, "loss": 0.1}, {"epoch": 2, "loss": 0.05}]):
        path = plot_curves(history, tmp_path / "curves")
        assert path == tmp_path / "curves.png"
        with Image.open(path) as im:
            assert im.size[0] > 100
    with pytest.raises(ValueError, match=r"history entry 1 must be a loss or a dict with 'loss'"):
        plot_curves([0.1, "0.2"], tmp_path / "bad.png")
