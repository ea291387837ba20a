import json

import torch

from n2nfunc import checkpoint
from n2nfunc.cli import denoise_tiled, main
from n2nfunc.data import read_image, write_image
from n2nfunc.model import Model

TINY = [
    "--n-train",
    "96",
    "--n-val",
    "16",
    "--widths",
    "8",
    "8",
    "--batch-size",
    "16",
    "--no-pictures",
    "--quiet",
]


def test_train_writes_weights_history_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert "validation PSNR" in capsys.readouterr().out
    state = checkpoint.load(out / "checkpoint.pth")
    assert state["epoch"] == 2 and state["optimizer"]["step"] == 12
    # resuming a finished run trains nothing more; resuming with more epochs continues
    state["config"]["num_epochs"] = 3
    checkpoint.save(out / "more.pth", state)
    assert main(["train", *TINY, "--resume", str(out / "more.pth"), "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert checkpoint.load(out / "checkpoint.pth")["optimizer"]["step"] == 18


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    assert main(["train", *TINY, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    real = Model.train_epoch
    calls = []

    def ctrl_c_in_epoch_2(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Model, "train_epoch", ctrl_c_in_epoch_2)
    assert main(["train", *TINY, "--epochs", "3", "--out", str(tmp_path / "cut")]) == 130
    assert "--resume" in capsys.readouterr().out
    monkeypatch.setattr(Model, "train_epoch", real)
    assert (
        main(
            [
                "train",
                *TINY,
                "--resume",
                str(tmp_path / "cut" / "checkpoint.pth"),
                "--out",
                str(tmp_path / "cut"),
            ]
        )
        == 0
    )
    full = checkpoint.load(tmp_path / "full" / "model.pth")["params"]
    resumed = checkpoint.load(tmp_path / "cut" / "model.pth")["params"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_eval_and_denoise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    model = Model({"widths": (8, 8)})
    model.save(tmp_path / "m.pth")
    assert main(["eval", "--checkpoint", str(tmp_path / "m.pth"), "--n-val", "16"]) == 0
    assert "gain:" in capsys.readouterr().out
    rgb = torch.randint(0, 256, (3, 70, 45), dtype=torch.uint8)
    alpha = torch.randint(0, 256, (1, 70, 45), dtype=torch.uint8)
    write_image(tmp_path / "in.png", rgb, alpha)
    assert (
        main(
            [
                "denoise",
                str(tmp_path / "in.png"),
                str(tmp_path / "out.png"),
                "--checkpoint",
                str(tmp_path / "m.pth"),
                "--tile",
                "32",
            ]
        )
        == 0
    )
    out = read_image(tmp_path / "out.png")
    assert out.rgb.shape == rgb.shape and torch.equal(out.alpha, alpha)
    write_image(tmp_path / "grey.png", rgb, grey=True)
    assert (
        main(
            [
                "denoise",
                str(tmp_path / "grey.png"),
                str(tmp_path / "grey_out.png"),
                "--checkpoint",
                str(tmp_path / "m.pth"),
            ]
        )
        == 0
    )
    assert read_image(tmp_path / "grey_out.png").grey


def test_tiles_agree_with_whole_image_away_from_tile_borders():
    model = Model({"widths": (8, 8)})
    rgb = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    whole = model.predict(rgb[None].float())[0].round().to(torch.uint8)
    tiled = denoise_tiled(model, rgb, tile=32, margin=16)
    assert (whole.int() - tiled.int()).abs().max() <= 1


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--train", str(tmp_path / "t.pkl"), "--out", str(tmp_path)]) == 2
    assert "--train and --val go together" in capsys.readouterr().err
