import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from n2nfunc import checkpoint
from n2nfunc.cli import SHIPPED_NOISE, checks, common, main, runs, train, use
from n2nfunc.data import read_image, write_image
from n2nfunc.data.files import same_image_files
from n2nfunc.model import DEFAULT_CONFIG, DEFAULT_WEIGHTS, Model
from n2nfunc.pretrained import load_network
from n2nfunc.progress import Progress, clock

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
    log = capsys.readouterr().out
    assert "generating 96 built-in train pairs" in log and "generating 16 built-in val" in log
    assert "validation PSNR" in log
    # how to use what was just trained
    assert f"--checkpoint {out / 'model.pth'}" in log
    assert "aliasing" in checkpoint.load(out / "model.pth")["noise"]
    state = checkpoint.load(out / "checkpoint.pth")
    assert state["epoch"] == 2 and state["optimizer"]["step"] == 12
    # resuming a finished run trains nothing more; resuming with more epochs continues
    state["config"]["num_epochs"] = 3
    checkpoint.save(out / "more.pth", state)
    monkeypatch.chdir(tmp_path)  # no --out: the run continues in its own folder, not runs/latest
    assert main(["train", *TINY, "--resume", str(out / "more.pth")]) == 0
    assert not (tmp_path / "runs").exists()
    assert "generating" not in capsys.readouterr().out  # cached by the first run
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert checkpoint.load(out / "checkpoint.pth")["optimizer"]["step"] == 18


def test_a_run_without_pictures_removes_an_earlier_runs_pictures(tmp_path, monkeypatch, capsys):
    """A run into a folder of an earlier run with pictures, itself without any, leaves its
    weights and no curves or samples of the other run beside them."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0  # the earlier run
    for name in ("curves.png", "samples.png"):
        (out / name).write_bytes(b"an earlier run's picture")
    (out / "notes.txt").write_text("the user's own file")
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert not (out / "curves.png").exists() and not (out / "samples.png").exists()
    assert (out / "notes.txt").exists() and (out / "model.pth").is_file()
    assert f"removed {out / 'samples.png'}: an earlier run's picture" in capsys.readouterr().out


def test_ctrl_c_while_the_pictures_are_drawn_leaves_no_other_runs_pictures(
    tmp_path, monkeypatch, capsys
):
    """A Ctrl-C while this run drew its pictures left its weights and history beside the
    earlier run's curves and samples, with a bare "interrupted" (and --resume, finding the run
    complete, kept them)."""
    pytest.importorskip("matplotlib")
    import n2nfunc.viz

    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out, drawn = tmp_path / "run", [t for t in TINY if t != "--no-pictures"]
    assert main(["train", *drawn, "--epochs", "1", "--out", str(out)]) == 0  # the earlier run
    assert (out / "samples.png").is_file()
    earlier_curves = (out / "curves.png").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(n2nfunc.viz, "sample_grid", interrupted)
    capsys.readouterr()
    assert main(["train", *drawn, "--epochs", "1", "--seed", "1", "--out", str(out)]) == 130
    said = capsys.readouterr().out
    assert "interrupted while drawing the pictures; the run is complete" in said
    assert not (out / "samples.png").exists()  # the earlier run's, removed; this run's curves
    assert (out / "curves.png").read_bytes() != earlier_curves  # (drawn before the Ctrl-C)
    assert checkpoint.load(out / "checkpoint.pth")["config"]["seed"] == 1


def test_a_folder_of_the_users_own_files_with_a_runs_names_is_refused(tmp_path, capsys):
    """--no-pictures removed a samples.png from a folder that had never held a run, and the run
    wrote over a history.json there: files of the user's own, lost without a word."""
    out = tmp_path / "photos"
    out.mkdir()
    (out / "samples.png").write_bytes(b"my picture")
    (out / "history.json").write_text("my notes")
    (out / "checkpoint.pth").write_text("not a checkpoint")
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoint.pth, history.json, samples.png but no n2nfunc run" in err
    assert (out / "samples.png").read_bytes() == b"my picture"
    assert (out / "history.json").read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pth",
        "history.json",
        "samples.png",
    ]


def test_ctrl_c_while_the_weights_are_written_says_how_to_write_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out, save = tmp_path / "run", checkpoint.save

    def cut_at_the_weights(path, tree):
        if Path(path).name == "model.pth":
            raise KeyboardInterrupt
        save(path, tree)

    monkeypatch.setattr(checkpoint, "save", cut_at_the_weights)
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 130
    said = capsys.readouterr().out
    assert (
        f"interrupted after the last epoch; {out / 'checkpoint.pth'} holds the trained run" in said
    )
    command = re.search(r"`n2nfunc (train --resume .*)` writes its weights", said).group(1)
    monkeypatch.setattr(checkpoint, "save", save)
    assert main(command.split()) == 0
    assert (out / "model.pth").is_file()


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    """Ctrl-C partway through an epoch, then the resume command the run prints, as it is:
    the checkpoint holds the state from the epoch's start (not the half-trained weights), and
    the data options (here Gaussian noise, 96 pairs) and the settings come from it."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    run = ["train", *TINY, "--noise", "gaussian:10", "--epochs", "3"]
    assert main([*run, "--out", str(tmp_path / "full")]) == 0
    real = Model.train_epoch

    def ctrl_c_in_epoch_2(self, x, y, epoch, total, callback=None, parallel=None):
        def step(e, b, steps, loss):  # after three of its six steps have updated the weights
            if e == 1 and b == 2:
                raise KeyboardInterrupt
            if callback is not None:
                callback(e, b, steps, loss)

        return real(self, x, y, epoch, total, step, parallel)

    monkeypatch.setattr(Model, "train_epoch", ctrl_c_in_epoch_2)
    assert main([*run, "--out", str(tmp_path / "cut")]) == 130
    printed = re.search(r"`n2nfunc (train --resume .*)`", capsys.readouterr().out).group(1)
    monkeypatch.setattr(Model, "train_epoch", real)
    assert main([*printed.split(), "--no-pictures", "--quiet"]) == 0
    assert "training on 96 pairs (built-in, noise gaussian:10)" in capsys.readouterr().out
    full = checkpoint.load(tmp_path / "full" / "model.pth")
    resumed = checkpoint.load(tmp_path / "cut" / "model.pth")
    assert all(torch.equal(full["params"][k], resumed["params"][k]) for k in full["params"])
    assert resumed["noise"] == full["noise"] and "Gaussian" in resumed["noise"]
    history = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert history == [
        {**h, "seconds": c["seconds"]}
        for h, c in zip(json.loads((tmp_path / "full" / "history.json").read_text()), history)
    ]


def test_resume_refuses_options_that_disagree_with_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--noise", "gaussian:10", "--out", str(out)]) == 0
    capsys.readouterr()
    resume = ["train", "--resume", str(out / "checkpoint.pth"), "--out", str(out), "--quiet"]
    for extra, said in [
        (["--noise", "gaussian:25"], r"trained with --noise gaussian:10; drop --noise gaussian:25"),
        (["--n-train", "200"], r"trained with --n-train 96; drop --n-train 200"),
        (["--epochs", "5"], r"--epochs 5 differs from its 1 .*4 epochs more.*--epochs 4 --out"),
        (["--lr", "0.1"], r"own settings: --lr 0.1 differs from its 0.006 "),
        (
            ["--no-augment"],
            r"own settings: --no-augment differs from the run, which augments its pairs",
        ),
        (["--widths", "8", "9"], r"--widths 8 9 differs from its 8 8 "),
        (["--warmup-steps", "7"], r"own settings: --warmup-steps 7 differs from its 200 "),
        (["--final-lr-fraction", "0.5"], r"--final-lr-fraction 0.5 differs from its 0.02 "),
        (["--finetune-lr-scale", "0.5"], r"--finetune-lr-scale 0.5 differs from its 0.1 "),
    ]:
        assert main([*resume, *extra]) == 2
        err = capsys.readouterr().err
        assert re.search(said, err), err
    # refused before any worker starts, as a usage error
    assert main([*resume, "--nproc", "2", "--noise", "gaussian:25"]) == 2
    assert "drop --noise gaussian:25" in capsys.readouterr().err
    # the run's own values, given again (in any spelling), are fine; it trains nothing more
    again = ["--noise", "gaussian:10.0", "--epochs", "1", "--n-train", "96", "--no-pictures"]
    again += ["--finetune-lr-scale", "0.1"]  # (the run's own, given again: no refusal)
    before = (out / "model.pth").read_bytes()
    assert main([*resume, *again]) == 0
    said = capsys.readouterr().out
    assert "this run has finished its 1 epoch; nothing to train; its weights: " in said
    assert f"{out / 'model.pth'} (to train on" in said and "generating" not in said
    assert (out / "model.pth").read_bytes() == before  # nothing rewritten


def test_the_schedule_settings_reach_the_run_and_its_learning_rates(tmp_path, monkeypatch, capsys):
    """warmup_steps, final_lr_fraction and finetune_lr_scale were config keys without an
    option: the command line could not set them."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    schedule = ["--warmup-steps", "1", "--final-lr-fraction", "1"]
    assert main(["train", *TINY, "--epochs", "1", *schedule, "--out", str(out)]) == 0
    config = checkpoint.load(out / "model.pth")["config"]
    assert (config["warmup_steps"], config["final_lr_fraction"]) == (1, 1.0)
    finetuned = tmp_path / "tuned"
    init = ["--init", str(out / "model.pth"), "--finetune-lr-scale", "0.5"]
    tiny = [a for a in TINY if a not in ("--widths", "8")]  # (--init's network is its own)
    assert main(["train", *tiny, "--epochs", "1", *init, "--out", str(finetuned)]) == 0
    config = checkpoint.load(finetuned / "model.pth")["config"]
    assert config["lr"] == pytest.approx(0.5 * DEFAULT_CONFIG["lr"])
    assert config["finetune_lr_scale"] == 0.5
    capsys.readouterr()
    assert main(["train", *tiny, *init, "--lr", "0.01", "--out", str(tmp_path / "x")]) == 2
    assert "a given --lr is used as it is" in capsys.readouterr().err


def test_ctrl_c_outside_an_epoch_stops_in_one_line(tmp_path, monkeypatch, capsys):
    """(inside an epoch, train saves its state: test_interrupted_and_resumed_run_...)"""

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_training_data", ctrl_c)  # while generating the data
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "n2nfunc train: interrupted" and "Traceback" not in captured.out
    assert not (tmp_path / "run").exists()


def test_unknown_options_are_named_but_values_are_left_to_argparse(capsys):
    from n2nfunc.cli.parser import _refuse_unknown_options, build_parser

    parser = build_parser()
    for argv in (["train", "--out", "-a b"], ["train", "--epochs", "-3"]):
        _refuse_unknown_options(parser, argv)  # no exit
    for argv, said in [  # no prefixes of options: "--epoch 2" was read as --epochs 2
        (["train", "--epoch", "2"], "unrecognized option --epoch (did you mean --epochs? "),
        (["train", "--n-tr", "5"], "unrecognized option --n-tr (did you mean --n-train? "),
        (["train", "--no-", "x"], "(did you mean --no-augment or --no-pictures? "),
        (["denoise", "a.png", "b.png", "--noise=3"], "unrecognized option --noise"),
    ]:
        with pytest.raises(SystemExit):
            _refuse_unknown_options(parser, argv)
        assert said in capsys.readouterr().err


def test_unet_refuses_the_exercise_network_options(capsys):
    for option in (["--kernel", "3"], ["--upsampling", "nearest"]):
        assert main(["train", "--network", "unet", *option]) == 2
        err = capsys.readouterr().err
        assert f"{option[0]} does not apply to --network unet" in err, err


def test_momentum_needs_sgd(capsys):
    """(with Adam, the default, --momentum was silently ignored)"""
    assert main(["train", "--momentum", "0.5"]) == 2
    assert "--momentum is SGD's; it does not apply to --optimizer adam" in capsys.readouterr().err


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
                "96",
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


def test_denoise_tiles_agree_with_model_predict(tmp_path):
    """`denoise --checkpoint` (tiled functional path) gives Model.predict's image."""
    model = Model({"widths": (8, 8)})
    model.save(tmp_path / "m.pth")
    rgb = torch.randint(0, 256, (3, 150, 97), dtype=torch.uint8)
    write_image(tmp_path / "in.png", rgb)
    args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "out.png")]
    assert main([*args, "--checkpoint", str(tmp_path / "m.pth"), "--tile", "96"]) == 0
    whole = model.predict(rgb[None].float())[0].round().to(torch.uint8)
    assert (whole.int() - read_image(tmp_path / "out.png").rgb.int()).abs().max() <= 1


def test_denoise_checkpoint_accepts_a_unet_model(tmp_path):
    model = Model({"network": "unet", "depth": 2, "widths": (4, 6, 4, 4)})
    model.save(tmp_path / "u.pth")
    rgb = torch.randint(0, 256, (3, 40, 33), dtype=torch.uint8)
    write_image(tmp_path / "in.png", rgb)
    args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "out.png")]
    assert main([*args, "--checkpoint", str(tmp_path / "u.pth")]) == 0
    whole = model.predict(rgb[None].float())[0].round().to(torch.uint8)
    assert (whole.int() - read_image(tmp_path / "out.png").rgb.int()).abs().max() <= 1


def test_log_lines_when_stdout_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    """Captured stdout is not a terminal: no bar, no carriage returns, one line per epoch
    with loss, images/s, elapsed time and ETA."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    args = ["train", "--n-train", "64", "--n-val", "8", "--widths", "4", "4", "--batch-size", "16"]
    assert main([*args, "--epochs", "2", "--no-pictures", "--out", str(tmp_path / "r")]) == 0
    log = capsys.readouterr().out
    assert "\r" not in log
    lines = [x for x in log.splitlines() if x.startswith("epoch ")]
    assert len(lines) == 2, log
    for i, line in enumerate(lines, 1):
        assert re.fullmatch(
            rf"epoch {i}/2: loss \d\.\d{{5}}, validation PSNR .* dB .*, \d+ images/s, "
            r"elapsed \d+:\d\d, ETA \d+:\d\d",
            line,
        ), line
    assert lines[-1].endswith("ETA 0:00")


def test_progress_lines_inside_long_epochs_and_bar_on_a_terminal(monkeypatch):
    lines = io.StringIO()
    p = Progress(total=40, epochs=2, out=lines, interval=0.0)
    for step in range(4):
        p.step(0, 5, step, 4, 0.25)
    p.epoch_end("epoch 1/2: loss 0.25000")
    text = lines.getvalue().splitlines()
    assert len(text) == 4 and "\r" not in lines.getvalue()  # 3 in-epoch lines (not the last step)
    assert re.fullmatch(
        r"epoch 1/2: 25% of the epoch, loss 0.25000, \d+ images/s, elapsed \d+:\d\d, ETA .*",
        text[0],
    )
    assert text[-1].startswith("epoch 1/2: loss 0.25000, elapsed ")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)  # the bar goes where the check looked: stdout
    bar = Progress(total=40, epochs=1)
    for step in range(8):
        bar.step(0, 5, step, 8, 0.5)
    bar.close()
    assert "\r" in term.getvalue() and "100%" in term.getvalue()
    assert clock(59.6) == "1:00" and clock(3725) == "1:02:05"


@pytest.mark.parametrize("stream", ["stdout", "a file object"])
def test_the_bar_shows_on_a_terminal_that_reports_no_size(stream):
    """A new pseudo-terminal reports 0 x 0 (as `script` did in newcomers' trials): the bar
    came out empty, and the plain lines were off since a bar was on; as the process's own
    stdout (where tqdm asks the terminal for its rows too) it was hidden altogether."""
    import os
    import pty
    import select
    import subprocess

    main_fd, other_fd = pty.openpty()
    assert os.get_terminal_size(other_fd) == (0, 0)
    out = "sys.stdout" if stream == "stdout" else "open(1, 'w', closefd=False)"
    code = (
        "import sys; from n2nfunc.progress import Progress\n"
        f"bar = Progress(total=40, epochs=1, out={out})\n"
        "for step in range(8): bar.step(0, 5, step, 8, 0.5)\n"
        "bar.close()\n"
    )
    subprocess.run([sys.executable, "-c", code], stdout=other_fd, check=True, timeout=60)
    os.close(other_fd)
    shown = ""
    while select.select([main_fd], [], [], 0.5)[0]:  # all that was written
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the other end is closed: all read
            break
        if not chunk:
            break
        shown += chunk.decode()
    os.close(main_fd)
    assert "100%|" in shown and "40.0/40.0" in shown, shown  # a bar, 80 columns wide


def test_denoise_and_eval_say_which_weights_and_noise(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    write_image(tmp_path / "in.png", torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    old = tmp_path / "old.pth"
    Model({"widths": (4, 4)}).save(old)  # no noise recorded, like checkpoints of 0.1.0
    noted = tmp_path / "noted.pth"
    checkpoint.save(noted, {**Model({"widths": (4, 4)}).payload(), "noise": "Gaussian, sigma 9"})
    out = str(tmp_path / "out.png")
    assert main(["denoise", str(tmp_path / "in.png"), out, "--checkpoint", str(old)]) == 0
    assert f"weights: {old} (noise: not recorded)" in capsys.readouterr().out
    assert (
        main(["denoise", str(tmp_path / "in.png"), out, "--checkpoint", str(noted), "--overwrite"])
        == 0
    )
    assert "(noise: Gaussian, sigma 9)" in capsys.readouterr().out
    assert main(["denoise", str(tmp_path / "in.png"), out, "--overwrite"]) == 0
    assert f"weights: {DEFAULT_WEIGHTS} (noise: {SHIPPED_NOISE})" in capsys.readouterr().out
    assert main(["eval", "--n-val", "8"]) == 0
    assert "the course data's kind" in capsys.readouterr().out


def test_denoise_to_a_format_without_transparency_drops_alpha_with_a_note(tmp_path, capsys):
    model = tmp_path / "m.pth"
    Model({"widths": (4, 4)}).save(model)
    rgb = torch.randint(0, 256, (3, 21, 18), dtype=torch.uint8)
    alpha = torch.randint(0, 256, (1, 21, 18), dtype=torch.uint8)
    write_image(tmp_path / "in.png", rgb, alpha)
    write_image(tmp_path / "grey.png", rgb, alpha, grey=True)
    for src, dst in (("in.png", "out.jpg"), ("grey.png", "out.bmp"), ("grey.png", "out.webp")):
        args = [str(tmp_path / src), str(tmp_path / dst), "--checkpoint", str(model)]
        assert main(["denoise", *args]) == 0
        picture = read_image(tmp_path / dst)
        assert picture.rgb.shape == rgb.shape
        keeps = dst.endswith(".webp")
        assert (picture.alpha is not None) == keeps
        assert ("alpha channel is dropped" in capsys.readouterr().out) != keeps


def test_precision_option_trains_in_bfloat16_or_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    from n2nfunc import hardware

    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--out", str(out), "--precision", "bfloat16"]
    if hardware.native_bfloat16("cpu"):
        assert main(args) == 0
        saved = checkpoint.load(out / "model.pth")
        assert saved["config"]["precision"] == "bfloat16"
        assert all(t.dtype == torch.float32 for t in saved["params"].values())  # float32 weights
        capsys.readouterr()
    monkeypatch.setattr(hardware, "native_bfloat16", lambda device="cpu": False)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main([*args[:-2], "--out", str(tmp_path / "other"), "--precision", "bfloat16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: --precision bfloat16: this CPU" in err[-1] and "no native bfloat16" in err[-1]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
    if (out / "checkpoint.pth").exists():  # a finished run's resume computes nothing
        assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0
        assert "has finished" in capsys.readouterr().out
    monkeypatch.setattr(hardware, "native_bfloat16", lambda device="cpu": None)  # unknown
    assert main([*args[:-2], "--out", str(tmp_path / "third"), "--precision", "bfloat16"]) == 0
    assert "note: --precision bfloat16: cannot tell whether this CPU" in capsys.readouterr().err
    assert main(["eval", "--precision", "float16"]) == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_denoise_with_a_shipped_model_by_name(tmp_path, monkeypatch, capsys):
    import importlib

    from n2nfunc.tiling import denoise_image

    rgb = torch.randint(0, 256, (3, 37, 50), dtype=torch.uint8)
    write_image(tmp_path / "in.png", rgb)
    out = tmp_path / "out.png"
    args = ["denoise", str(tmp_path / "in.png"), str(out)]
    # weights not shipped yet: one line, nothing written
    shipped = importlib.import_module("n2nfunc.pretrained")  # the module, not the function
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path / "weights")
    assert main([*args, "--model", "unet-gaussian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model: the weights of 'unet-gaussian' are not shipped" in err[0]
    assert not out.exists()
    # a (tiny, random) U-Net in the weights folder is used through the tiled functional path
    layer, params = _tiny_unet_weights(tmp_path / "weights")
    assert main([*args, "--model", "unet-gaussian", "--tile", "100"]) == 2
    assert "--tile: expected a multiple of 32 of at least 96, got '100' (e.g. 96)" in (
        capsys.readouterr().err
    )
    assert main([*args, "--model", "unet-gaussian", "--tile", "96"]) == 0
    assert "(noise: gaussian:0-50)" in capsys.readouterr().out
    expected = denoise_image(layer, params, rgb.float() / 255, tile=96)
    expected = expected.clamp(0, 1).mul(255).round().to(torch.uint8)
    assert (read_image(out).rgb.int() - expected.int()).abs().max() <= 1  # PNG round trip
    # --model and --checkpoint exclude each other; unknown names are listed
    assert main([*args, "--model", "unet-gaussian", "--checkpoint", str(DEFAULT_WEIGHTS)]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main([*args, "--model", "unet"]) == 2
    assert "invalid choice: 'unet'" in capsys.readouterr().err


def test_train_a_unet_on_photos_with_camera_noise(tmp_path, monkeypatch, capsys):
    """`train --network unet --noise gaussian:0-50 --photos DIR`: 64x64 crops with blind
    Gaussian noise, a U-Net checkpoint that `denoise --checkpoint` reads back."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    write_image(photos / "p.png", torch.randint(0, 256, (3, 400, 420), generator=g).to(torch.uint8))
    write_image(photos / "tiny.png", torch.zeros(3, 5, 7, dtype=torch.uint8))  # said, not used
    out = tmp_path / "run"
    args = ["train", "--network", "unet", "--widths", "4", "6", "4", "4", "--photos", str(photos)]
    args += ["--noise", "gaussian:0-50", "--val-photos", str(photos), "--n-train", "8"]
    args += ["--n-val", "4", "--epochs", "1", "--batch-size", "4", "--no-pictures", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training on 8 pairs (cut from the photos in" in printed and "UNet(depth=4" in printed
    assert printed.count(f"note: {photos}: left out 1 smaller than 64x64 (tiny.png)") == 2
    assert "not photographs" not in printed  # validated on --val-photos
    payload = checkpoint.load(out / "model.pth")
    assert payload["network"] == "unet" and payload["architecture"]["widths"] == (4, 6, 4, 4)
    assert payload["noise"].startswith("blind Gaussian noise, sigma 0-50 (of 255), photos in")
    assert load_network(out / "model.pth")[2]["noise"] == payload["noise"]  # as shipped ones
    rgb = torch.randint(0, 256, (3, 33, 41), dtype=torch.uint8)
    write_image(tmp_path / "in.png", rgb)
    den = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "o.png")]
    assert main([*den, "--checkpoint", str(out / "model.pth")]) == 0
    assert "(noise: blind Gaussian noise, sigma 0-50" in capsys.readouterr().out


def test_camera_noise_pairs_of_a_dark_photo_keep_their_scale(tmp_path, monkeypatch, capsys):
    """As floats on the 0-255 scale, the pairs of a dark photo (values 0-2) were read as 0-1
    images, 255 times too bright: validation 'noisy -3.94 dB' for sigma 2 of 255."""
    import re

    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "dark"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    write_image(photos / "d.png", torch.randint(0, 3, (3, 256, 256), generator=g).to(torch.uint8))
    args = ["train", "--photos", str(photos), "--val-photos", str(photos), "--noise", "gaussian:2"]
    args += ["--n-train", "16", "--n-val", "8", "--epochs", "1", "--widths", "4", "4"]
    assert main([*args, "--no-pictures", "--out", str(tmp_path / "run")]) == 0
    said = capsys.readouterr().out
    noisy = float(re.search(r"\(noisy ([-\d.]+) dB", said).group(1))
    assert 40 < noisy < 50  # sigma 2 of 255, clipped at black: about 44 dB
    # the same photos to validate on: said, not refused (a check of fit, not of denoising)
    assert "note: --val-photos holds the folder of --photos: its PSNR measures the training" in said


def test_validation_files_of_the_same_bytes_as_training_files_are_noted(tmp_path, capsys):
    import argparse

    (tmp_path / "p").mkdir()
    (tmp_path / "v").mkdir()
    write_image(tmp_path / "p" / "x.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    write_image(tmp_path / "v" / "y.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    args = argparse.Namespace(photos=str(tmp_path / "p"), val_photos=str(tmp_path / "v"))
    checks._say_apart(args)
    assert re.search(
        r"note: --val-photos holds 1 image file\(s\) of --photos \(.*x.png = .*y.png\)",
        capsys.readouterr().out,
    )
    write_image(tmp_path / "v" / "y.png", torch.ones(3, 8, 8, dtype=torch.uint8))
    checks._say_apart(args)
    assert capsys.readouterr().out == ""


def _tiny_unet_weights(folder):
    """A small random U-Net saved as ``folder``/unet-gaussian.pth; returns (layer, params)."""
    from n2nfunc.pretrained import save_unet
    from n2nfunc.unet import unet

    arch = {"depth": 2, "widths": (4, 6, 4, 4)}
    layer = unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, -1, -1))
    folder.mkdir()
    save_unet(folder / "unet-gaussian.pth", arch, params, {"noise": "gaussian:0-50"})
    return layer, params


def test_denoise_converts_16_bit_grey_and_handles_tiny_images(tmp_path, monkeypatch, capsys):
    """A 16-bit greyscale PNG is read as its 8-bit values (not clipped to white), and images
    down to 1x1 pixel go through both the exercise's network and a U-Net."""
    import importlib

    import numpy as np
    from PIL import Image

    monkeypatch.setattr(importlib.import_module("n2nfunc.pretrained"), "WEIGHTS", tmp_path / "w")
    _tiny_unet_weights(tmp_path / "w")
    deep = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)  # 0..59950
    Image.fromarray(deep).save(tmp_path / "deep.png")
    picture = read_image(tmp_path / "deep.png")
    assert (
        picture.grey
        and picture.deep
        and torch.equal(picture.rgb[0], torch.from_numpy((deep / 257).round().astype(np.uint8)))
    )
    for size in [(1, 1), (2, 3), (5, 1)]:
        rgb = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
        write_image(tmp_path / "tiny.png", rgb)
        for model in ["exercise", "unet-gaussian"]:
            out = tmp_path / f"tiny-{model}.png"
            args = [
                "denoise",
                str(tmp_path / "tiny.png"),
                str(out),
                "--model",
                model,
                "--overwrite",
            ]
            assert main(args) == 0, capsys.readouterr().err
            assert read_image(out).rgb.shape == (3, *size)
    assert "more than 8 bits" not in capsys.readouterr().out  # 8-bit files get no note
    assert main(["denoise", str(tmp_path / "deep.png"), str(tmp_path / "d.png")]) == 0
    assert "has more than 8 bits a channel (16-bit or floating-point" in capsys.readouterr().out
    assert read_image(tmp_path / "d.png").grey and not read_image(tmp_path / "d.png").deep
    from PIL import Image

    Image.fromarray(np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif").deep  # float values, read as 8 bits
    assert main(["denoise", str(tmp_path / "f.tif"), str(tmp_path / "f.png")]) == 0
    assert "f.tif has more than 8 bits a channel" in capsys.readouterr().out


def _png_16_bit(path, values, key=None) -> None:
    """Write an (H, W, C) array of 16-bit values as a PNG by hand (Pillow cannot): C = 1 grey,
    2 grey and alpha, 3 RGB; ``key``, a tRNS chunk's transparent colour (C values)."""
    import struct
    import zlib

    h, w, c = values.shape
    rows = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2}[c], 0, 0, 0)
    trns = b"" if key is None else chunk(b"tRNS", struct.pack(f">{len(key)}H", *key))
    png = chunk(b"IHDR", header) + trns + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png)


def test_16_bit_transparency_keys_compare_all_16_bits(tmp_path):
    """A 16-bit PNG's tRNS colour is a 16-bit value: a pixel is transparent where all its bits
    equal it (Pillow keeps only each value's high byte, so a pixel sharing the key's high bytes
    became transparent and the key's own pixels did not); 16-bit grey with a key or an alpha
    channel keeps its alpha and reads as grey."""
    import numpy as np

    rgb = np.full((6, 7, 3), 40000)
    rgb[:2, :3] = (100, 200, 300)  # the key
    rgb[4:, 4:] = (200, 100, 50)  # the key's high bytes (0, 0, 1), not the key
    rgb[2, 0] = (100, 200, 301)  # one bit off
    _png_16_bit(tmp_path / "rgb.png", rgb, key=(100, 200, 300))
    picture = read_image(tmp_path / "rgb.png")
    want = torch.full((1, 6, 7), 255, dtype=torch.uint8)
    want[0, :2, :3] = 0
    assert picture.deep and not picture.grey and torch.equal(picture.alpha, want)
    assert torch.equal(picture.rgb[:, 0, 0], torch.tensor([0, 1, 1], dtype=torch.uint8))

    grey = np.full((6, 7, 1), 30000)
    grey[:2, :3] = 1000
    grey[4:, 4:] = 1100  # high byte 4, as the key's
    _png_16_bit(tmp_path / "grey.png", grey, key=(1000,))
    picture = read_image(tmp_path / "grey.png")
    assert picture.grey and torch.equal(picture.alpha, want)

    grey_alpha = np.concatenate([grey, np.full((6, 7, 1), 65535)], axis=-1)
    grey_alpha[:2, :3, 1] = 0
    _png_16_bit(tmp_path / "la.png", grey_alpha)
    picture = read_image(tmp_path / "la.png")
    assert picture.grey and picture.deep and torch.equal(picture.alpha, want)
    assert int(picture.rgb[0, 3, 0]) == round(30000 / 257)  # (117; the high byte is 117 too)


def test_a_dark_16_bit_pgm_is_read_on_its_own_scale(tmp_path):
    """Pillow scales a PGM of more than 8 bits to 0-65535 ("I"): one whose values stay below
    256 was read as 8-bit, up to 257x too bright. Its maxval counts: 500 of 1000 is grey. A
    colour PPM of 16 bits was not flagged deep."""
    import numpy as np

    for maxval, value, want in [(65535, 200, 1), (65535, 40000, 156), (1000, 500, 128)]:
        v = np.full((3, 4), value, dtype=">u2")
        (tmp_path / "dark.pgm").write_bytes(f"P5 4 3 {maxval}\n".encode() + v.tobytes())
        picture = read_image(tmp_path / "dark.pgm")
        assert picture.deep and picture.grey
        assert picture.rgb.unique().tolist() == [want], (maxval, value)
    # a colour one Pillow scales to 8 bits itself: it is deep too (the note says so)
    rgb = np.full((3, 4, 3), 40000, dtype=">u2")
    (tmp_path / "deep.ppm").write_bytes(b"P6 4 3 65535\n" + rgb.tobytes())
    picture = read_image(tmp_path / "deep.ppm")
    assert picture.deep and picture.rgb.unique().tolist() == [156]
    (tmp_path / "plain.ppm").write_bytes(b"P6 4 3 255\n" + bytes(36))
    assert not read_image(tmp_path / "plain.ppm").deep


def test_a_resolution_too_large_for_the_format_is_left_out(tmp_path):
    """PNG and BMP store 32-bit pixels per metre: a TIFF's 1e9 dpi crashed their writers after
    the work was done."""
    from PIL import Image

    Image.new("RGB", (8, 6)).save(tmp_path / "huge.tif", dpi=(1e9, 1e9))
    for suffix in (".png", ".bmp", ".jpg"):
        out = tmp_path / f"out{suffix}"
        assert main(["denoise", str(tmp_path / "huge.tif"), str(out)]) == 0
        with Image.open(out) as written:
            assert written.size == (8, 6)
            assert max(written.info.get("dpi", (0, 0))) < 1e8
    Image.new("RGB", (8, 6)).save(tmp_path / "fine.tif", dpi=(600, 300))  # kept where it fits
    main(["denoise", str(tmp_path / "fine.tif"), str(tmp_path / "fine.png")])
    with Image.open(tmp_path / "fine.png") as written:
        assert [round(v) for v in written.info["dpi"]] == [600, 300]


def test_16_bit_rgb_and_float_images(tmp_path):
    """16-bit RGB is flagged deep (Pillow keeps each value's high byte; it had no note), and a
    float image is scaled from 0-1 or kept from 0-255 (a 0-1 one was read as black), else
    refused."""
    import numpy as np
    from PIL import Image

    values = np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000 + 77
    _png_16_bit(tmp_path / "rgb16.png", values)
    picture = read_image(tmp_path / "rgb16.png")
    assert picture.deep and not picture.grey
    # rounded as 16-bit grey is, round(v / 257); Pillow's high bytes (v >> 8) were up to a
    # level darker (23 for 6077, not 24)
    rounded = np.floor(values / 257 + 0.5).astype(np.uint8)
    assert torch.equal(picture.rgb, torch.from_numpy(rounded).permute(2, 0, 1))
    assert (rounded != values >> 8).any()
    from types import SimpleNamespace

    from n2nfunc.data.files import _raw_mode, _sixteen_bit_channels

    for args, wide in [("RGB;16B", True), (("RGBA;16L", 0, 1), True), (("BGR;16", 8, -1), False)]:
        tile = SimpleNamespace(args=args)  # BGR;16: 5-6-5 bits a pixel
        assert _sixteen_bit_channels(_raw_mode(tile)) == wide
    grey = np.random.default_rng(0).random((6, 7)).astype("float32")
    for scale in (1, 200):
        Image.fromarray(grey * scale, "F").save(tmp_path / "f.tif")
        picture = read_image(tmp_path / "f.tif")
        want = torch.from_numpy(grey * (255 if scale == 1 else scale))
        assert picture.grey and (picture.rgb.float() - want).abs().max() <= 0.5
    overshoot = np.linspace(-0.01, 1.02, 8, dtype=np.float32)[None]  # a sharpened 0-1 image
    Image.fromarray(overshoot, "F").save(tmp_path / "f.tif")
    want = (overshoot * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert torch.equal(read_image(tmp_path / "f.tif").rgb[0], torch.from_numpy(want))
    noisy = (grey * 3).astype("float32")  # 0-1 with unclipped noise up to 3 (mean 1.5): as
    Image.fromarray(noisy, "F").save(tmp_path / "f.tif")  # Model.predict reads it, 0-1, where
    assert read_image(tmp_path / "f.tif").rgb.float().mean() > 200  # it came out nearly black
    Image.fromarray(grey * 1000, "F").save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f.tif: a float image with values from .* expected 0-1"):
        read_image(tmp_path / "f.tif")


def test_denoise_keeps_a_fitting_colour_profile(tmp_path, capsys):
    """An embedded ICC profile (a Display P3 photo's, say) is written into the output, so
    viewers show the colours as before; one of another colour space (CMYK) is dropped."""
    from PIL import Image, ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (40, 30), (200, 30, 40)).save(tmp_path / "in.jpg", icc_profile=srgb)
    assert main(["denoise", str(tmp_path / "in.jpg"), str(tmp_path / "out.png")]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert im.info.get("icc_profile") == srgb
    # a greyscale profile stays with greyscale files; WebP stores them as RGB: dropped there
    gray = srgb[:16] + b"GRAY" + srgb[20:]
    Image.new("L", (40, 30), 90).save(tmp_path / "grey.png", icc_profile=gray)
    picture = read_image(tmp_path / "grey.png")
    assert picture.icc == gray
    for suffix, kept in ((".png", True), (".webp", False)):
        write_image(tmp_path / f"o{suffix}", picture.rgb, None, True, picture.icc)
        with Image.open(tmp_path / f"o{suffix}") as im:
            assert (im.info.get("icc_profile") == gray) == kept
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]
    Image.new("L", (40, 30), 90).save(tmp_path / "grey.png", icc_profile=cmyk)
    assert read_image(tmp_path / "grey.png").icc is None


@pytest.mark.parametrize(
    "image, suffix, note",
    [
        (
            "RGB",
            ".bmp",
            ".bmp files keep no colour profile; the one of .*in.png is dropped "
            r"\(.png, .jpg, .tif and .webp keep it\)",
        ),
        ("L", ".webp", r".webp files keep no greyscale colour profile; .*\(.png, .jpg and .tif"),
        ("RGB", ".webp", None),
        ("L", ".tif", None),
    ],
)
def test_denoise_says_when_the_output_drops_the_colour_profile(
    tmp_path, capsys, image, suffix, note
):
    """A BMP stores no colour profile, a WebP no greyscale one: the profile was dropped
    without a word (colours shift in colour-managed viewers)."""
    from PIL import Image, ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if image == "L":
        profile = profile[:16] + b"GRAY" + profile[20:]
    Image.new(image, (40, 30), 90).save(tmp_path / "in.png", icc_profile=profile)
    out = tmp_path / f"out{suffix}"
    assert main(["denoise", str(tmp_path / "in.png"), str(out)]) == 0
    log = capsys.readouterr().out
    if note is None:
        assert "colour profile" not in log
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == profile
    else:
        assert re.search("note: " + note, log), log


def test_denoise_names_the_pages_of_a_multi_page_tiff(tmp_path, capsys):
    """A multi-page TIFF was denoised as its first page without a word."""
    from PIL import Image

    pages = [Image.new("RGB", (20, 16), (40 * i, 90, 3)) for i in range(3)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert read_image(tmp_path / "pages.tif").pages == 3
    assert main(["denoise", str(tmp_path / "pages.tif"), str(tmp_path / "out.png")]) == 0
    assert "pages.tif has 3 pages; the first one is denoised" in capsys.readouterr().out
    pages[0].save(tmp_path / "one.tif")
    assert (
        main(["denoise", str(tmp_path / "one.tif"), str(tmp_path / "out.png"), "--overwrite"]) == 0
    )
    assert "note:" not in capsys.readouterr().out


def test_a_32_bit_integer_image_beyond_16_bits_is_refused(tmp_path):
    """A 32-bit integer ("I") image above 65535 was clipped to white and called 16-bit; one
    within 0-65535 reads as 16-bit, one within 0-255 as 8-bit."""
    np = pytest.importorskip("numpy")
    from PIL import Image

    ramp = np.arange(20 * 16, dtype=np.int32).reshape(16, 20)
    for values, deep in ((ramp % 256, False), (ramp * 200, True)):
        Image.fromarray(values.astype(np.int32), "I").save(tmp_path / "i.tif")
        picture = read_image(tmp_path / "i.tif")
        assert picture.deep == deep
        scale = 257 if deep else 1
        want = torch.from_numpy((values / scale + 0.5).astype(np.uint8))
        assert torch.equal(picture.rgb[0], want)
    for values, low, high in ((ramp * 1000, 0, 319000), (ramp - 5, -5, 314)):
        Image.fromarray(values.astype(np.int32), "I").save(tmp_path / "i.tif")
        with pytest.raises(
            ValueError,
            match=rf"i.tif: a 32-bit integer image with values from "
            rf"{low} to {high}; expected 0-255 or 0-65535",
        ):
            read_image(tmp_path / "i.tif")


def test_mixed_noise_of_a_recipe_is_said_once_in_words():
    from n2nfunc.cli.use import _recorded_noise
    from n2nfunc.pretrained import WEIGHTS

    specs = ["downsample:4", "downsample:8", "downsample:6", "downsample:8", "downsample:12"]
    said = _recorded_noise({"info": {"noise": specs}}, WEIGHTS / "x.pth")
    assert said == "aliasing from point-sampled downsampling by 4, 6, 8, 12"
    mixed = _recorded_noise({"info": {"noise": ["gaussian:0-50", "poisson:5-50"] * 2}}, WEIGHTS)
    assert mixed == "gaussian:0-50, poisson:5-50"


def test_resume_of_a_checkpoint_that_does_not_record_its_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--noise", "gaussian:10", "--out", str(out)]) == 0
    state = checkpoint.load(out / "checkpoint.pth")
    del state["data"]  # as written before checkpoints recorded their data options
    state["config"]["num_epochs"] = 2
    checkpoint.save(out / "old.pth", state)
    capsys.readouterr()
    resume = ["train", *TINY, "--resume", str(out / "old.pth"), "--out", str(out)]
    assert main(resume) == 2  # the command line's default data is not what it trained on
    assert "was trained on Gaussian noise, sigma 10" in capsys.readouterr().err
    assert main([*resume, "--noise", "gaussian:10"]) == 0
    assert "does not record its training data" in capsys.readouterr().out


def test_denoise_tile_too_small_for_the_unets_reach_is_one_line(tmp_path, capsys):
    write_image(tmp_path / "in.png", torch.randint(0, 256, (3, 200, 60), dtype=torch.uint8))
    out = str(tmp_path / "out.png")
    args = ["denoise", str(tmp_path / "in.png"), out, "--overwrite", "--model"]
    assert main([*args, "unet-gaussian", "--tile", "128"]) == 2  # 200 rows need tiles
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "--tile 128: this network's tiles overlap by 78 pixels on each side, so an image of "
        "60x200 needs tiles of 192 or more"
    )
    assert not (tmp_path / "out.png").exists()
    assert main([*args, "unet-gaussian", "--tile", "192"]) == 0  # allowed, but it costs
    assert (
        "note: --tile 192 keeps 32 of each tile's 192 pixels a side (this network's tiles "
        "overlap by 78): on this image about 6x the work of one pass; --tile 320 or more is "
        "at most 2x" in capsys.readouterr().out  # (tiled along one side: 200 x 60)
    )
    write_image(tmp_path / "in.png", torch.randint(0, 256, (3, 200, 200), dtype=torch.uint8))
    assert main([*args, "unet-gaussian", "--tile", "192"]) == 0
    assert "on this image about 36x the work of one pass" in capsys.readouterr().out


def test_denoise_refuses_a_size_the_output_format_cannot_store_before_the_run(
    tmp_path, monkeypatch, capsys
):
    """WebP stores at most 16383 pixels a side, JPEG 65500: Pillow found out only while
    encoding, after the whole denoise ("broken data stream" for JPEG)."""

    write_image(tmp_path / "wide.png", torch.zeros(3, 2, 16384, dtype=torch.uint8))
    monkeypatch.setattr(use, "_denoiser", lambda *a: pytest.fail("the network ran"))
    assert main(["denoise", str(tmp_path / "wide.png"), str(tmp_path / "out.webp")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(
            "out.webp: .webp images are at most 16383 pixels a side, this one is 16384x2; "
            "write it as .png or .tif"
        )
    )
    assert not (tmp_path / "out.webp").exists()
    monkeypatch.undo()
    assert main(["denoise", str(tmp_path / "wide.png"), str(tmp_path / "out.jpg")]) == 0


def test_denoise_tiles_of_a_deep_unet_are_named_in_its_own_multiple(tmp_path, capsys):
    """A depth-6 U-Net pools to 1/64: --tile 416 was refused in denoise_image's words
    (help says multiples of 32), and --tile 384 was told 704 although 448 takes the image whole."""
    Model({"network": "unet", "depth": 6, "widths": (4, 4, 4, 4)}).save(tmp_path / "deep.pth")
    write_image(tmp_path / "in.png", torch.randint(0, 256, (3, 300, 410), dtype=torch.uint8))
    args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "out.png")]
    args += ["--checkpoint", str(tmp_path / "deep.pth"), "--tile"]
    for tile, said in (
        ("416", "--tile 416: this network's tiles must be multiples of 64 (it pools"),
        ("384", "so an image of 410x300 needs tiles of 448 or more"),
    ):
        assert main([*args, tile]) == 2
        assert said in capsys.readouterr().err
    assert main([*args, "448"]) == 0


def test_denoise_a_small_tile_is_fine_for_an_image_that_fits_in_it(tmp_path):
    write_image(tmp_path / "in.png", torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8))
    args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--model"]
    assert main([*args, "unet-gaussian", "--tile", "128"]) == 0


def test_eval_takes_a_shipped_model_by_name_and_notes_what_a_unet_is_judged_on(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--model", "unet-gaussian", "--noise", "gaussian:25", "--n-val", "8"]) == 0
    out = capsys.readouterr().out
    assert "note: a U-Net learns from photographs" in out and "unet-gaussian.pth" in out
    assert main(["eval", "--model", "exercise", "--n-val", "8"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert main(["eval", "--model", "exercise", "--checkpoint", str(DEFAULT_WEIGHTS)]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.save((x, x), tmp_path / "val.pkl")  # the course's file: aliasing pairs
    assert main(["eval", "--model", "unet-gaussian", "--val", str(tmp_path / "val.pkl")]) == 0
    assert "note: --val holds the course's pairs (aliasing noise); these weights learned" in (
        capsys.readouterr().out
    )
    assert main(["eval", "--model", "unet-aliasing", "--val", str(tmp_path / "val.pkl")]) == 0
    assert "note: --val" not in capsys.readouterr().out


def test_eval_and_train_note_pairs_whose_noisy_images_equal_the_clean_ones(tmp_path, capsys):
    rgb = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    for sub in ("a", "b"):
        write_image(tmp_path / "pairs" / sub / "x.png", rgb)
    assert main(["eval", "--val-pairs", str(tmp_path / "pairs")]) == 0
    assert "note: the noisy validation images equal the clean ones" in capsys.readouterr().out
    out = str(tmp_path / "run")
    argv = ["train", "--epochs", "1", "--n-train", "64", "--quiet", "--out", out]
    assert main([*argv, "--val-pairs", str(tmp_path / "pairs")]) == 0
    said = capsys.readouterr().out
    assert f"validating on image pairs in {tmp_path / 'pairs'}" in said
    assert "note: the noisy validation images equal the clean ones" in said


def test_train_validating_on_its_own_pairs_folder_reads_it_once(tmp_path, capsys):
    """`--pairs P --val-pairs P`: the folder is read once (its notes said once) and the run
    is told that it validates on its training data; the validation is those pairs."""
    g = torch.Generator().manual_seed(0)
    for name in ("x", "y"):
        rgb = torch.randint(0, 256, (3, 40, 36), generator=g).to(torch.uint8)
        for sub in ("a", "b"):
            write_image(tmp_path / "pairs" / sub / f"{name}.png", rgb)
    write_image(tmp_path / "pairs" / "a" / "lone.png", torch.zeros(3, 40, 36, dtype=torch.uint8))
    pairs = str(tmp_path / "pairs")
    argv = ["train", "--epochs", "1", "--quiet", "--no-pictures", "--out", str(tmp_path / "run")]
    assert main([*argv, "--pairs", pairs, "--val-pairs", pairs]) == 0
    said = capsys.readouterr().out
    assert said.count(f"note: {pairs}: left out 1 without a partner of the same name") == 1
    assert "note: --val-pairs holds the folder of --pairs" in said
    assert f"validating on image pairs in {pairs}" in said


def test_val_photos_take_the_factor_of_noise_downsample(tmp_path, capsys):
    """`--val-photos` validates at --noise downsample:FACTOR when one is given (it took
    factor 8 whatever the factor, so a factor-2 run was validated at factor 8)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    write_image(photos / "p.png", torch.randint(0, 256, (3, 300, 320), generator=g).to(torch.uint8))
    args = ["eval", "--val-photos", str(photos), "--n-val", "4"]
    psnrs = {}
    for noise, factor in (("downsample", 8), ("downsample:2", 2)):
        assert main([*args, "--noise", noise]) == 0
        printed = capsys.readouterr().out
        assert f"(factor {factor})" in printed, printed
        psnrs[factor] = printed
    assert psnrs[8] != psnrs[2]


def test_small_photos_serve_the_noise_whose_crops_fit(tmp_path, capsys):
    """A 100-pixel photo validates `--noise downsample:3` (96-pixel crops) and camera noise
    (64-pixel crops); it was refused at parse time for the 256 pixels of factor 8."""
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    write_image(photos / "p.png", torch.randint(0, 256, (3, 100, 120), generator=g).to(torch.uint8))
    for noise, said in (("downsample:3", "(factor 3)"), ("gaussian:25", "crops of the photos")):
        assert main(["eval", "--val-photos", str(photos), "--n-val", "2", "--noise", noise]) == 0
        assert said in capsys.readouterr().out


def test_a_new_run_says_it_replaces_an_earlier_one(tmp_path, monkeypatch, capsys):
    """After Ctrl-C a plain re-run into the same folder replaced the unfinished run's
    checkpoint without a word; a resumed run says where it starts."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    run = ["train", *TINY, "--epochs", "2", "--out", str(out)]
    assert main(run) == 0
    assert "unfinished" not in capsys.readouterr().out  # nothing was there
    state = checkpoint.load(out / "checkpoint.pth")
    checkpoint.save(out / "checkpoint.pth", {**state, "epoch": 1})  # as if stopped in epoch 2
    resume = ["train", *TINY, "--resume", str(out / "checkpoint.pth")]
    assert main(resume) == 0
    assert "(resuming at epoch 2)" in capsys.readouterr().out
    checkpoint.save(out / "checkpoint.pth", {**state, "epoch": 1})
    assert main(run) == 0
    said = capsys.readouterr().out
    assert f"note: {out / 'checkpoint.pth'} held an unfinished run (epoch 1 of 2)" in said
    assert main(run) == 0  # a finished run: said too (Ctrl-C would leave a mixed folder)
    said = capsys.readouterr().out
    assert "unfinished" not in said
    assert f"note: {out} held a finished run, whose files this new run replaces" in said


def test_resume_refuses_a_damaged_optimizer_state_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    state = checkpoint.load(out / "checkpoint.pth")
    state["config"]["num_epochs"] = 2
    broken = {**state, "optimizer": {"step": 6}}
    checkpoint.save(tmp_path / "keys.pth", broken)
    leaf = torch.ones(1)
    short = {
        **state,
        "optimizer": {**state["optimizer"], "m": [leaf] * len(state["optimizer"]["m"])},
    }
    checkpoint.save(tmp_path / "shapes.pth", short)
    capsys.readouterr()
    for name, pattern in (
        ("keys", "expected an optimizer state with keys"),
        ("shapes", "has shape (1,)"),
    ):
        assert main(["train", *TINY, "--resume", str(tmp_path / f"{name}.pth")]) == 2
        err = capsys.readouterr().err
        assert (
            f"{name}.pth: the optimizer's state" in err
            and pattern in err
            and "Traceback" not in err
        )
    # parts of the wrong kind (a hand-edited file) had been TypeErrors or AttributeErrors,
    # or passed: a negative epoch trained more epochs than the run's, a huge n_train was
    # killed by the system (--n-train's memory check had been skipped under --resume)
    for part, value, pattern in (
        ("epoch", "1", "its 'epoch' must be a count of epochs, got '1'"),
        ("epoch", -1, "its 'epoch' must be a count of epochs, got -1"),
        ("rng", torch.zeros(10), "its 'rng' must be a random generator's state"),
        ("rng", torch.zeros(10, dtype=torch.uint8), "its 'rng' is not a state of this generator"),
        ("config", [1], "its 'config' must be a dict whose num_epochs is a positive int"),
        ("data", {**state["data"], "n_train": "5"}, "its 'data' must be a dict of the run's"),
        ("data", {**state["data"], "n_train": 10**12}, "the pairs need about"),
        ("history", "x", "its 'history' must be a list"),
        ("history", [1, "x", None], "its 'history' must be a list of per-epoch dicts of"),
        ("history", [{"epoch": 1, "loss": None}], "its 'history' must be a list of per-epoch"),
        ("config", {**state["config"], "seed": 2**70}, "its config: seed must be an int from"),
        ("config", {**state["config"], "lr": float("nan")}, "its config: lr must be a finite"),
        (  # had been cast: the weights truncated, the run trained on without a word
            "params",
            {k: v.int() for k, v in state["params"].items()},
            "'0.weight' is torch.int32, expected a floating-point tensor",
        ),
        (  # had trained into a NaN loss, blamed on the learning rate or the data
            "optimizer",
            {**state["optimizer"], "v": [t * float("nan") for t in state["optimizer"]["v"]]},
            "part.pth: the optimizer's state: parameter 'v.0' holds NaN",
        ),
        (  # had trained into a NaN loss at the first step, blamed on the data
            "optimizer",
            {**state["optimizer"], "v": [t - 1 for t in state["optimizer"]["v"]]},
            "part.pth: the optimizer's state 'v' '0' holds negative values",
        ),
        (  # had been a raw OverflowError from b1 ** step at the first step
            "optimizer",
            {**state["optimizer"], "step": 10**400},
            "step must be an int from 0 to 2**53 - 1, got a larger int",
        ),
        (  # had been a raw OverflowError from float()
            "config",
            {**state["config"], "warmup_steps": 10**400},
            "its config: warmup_steps must be an int >= 0, got an int of 401 digits",
        ),
    ):
        checkpoint.save(tmp_path / "part.pth", {**state, part: value})
        assert main(["train", "--resume", str(tmp_path / "part.pth"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert pattern in err and "Traceback" not in err, (part, value, err)


def test_resuming_a_finished_run_whose_results_were_not_written_writes_them(
    tmp_path, monkeypatch, capsys
):
    """A run stopped between its last checkpoint and its results (a full disk, Ctrl-C) had
    no way to its model.pth: --resume said there was nothing to train."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    weights, history = checkpoint.load(out / "model.pth"), (out / "history.json").read_text()
    (out / "model.pth").unlink()
    (out / "history.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0
    said = capsys.readouterr().out
    assert f"written now: its weights {out / 'model.pth'}, its history" in said
    again = checkpoint.load(out / "model.pth")
    assert again["noise"] == weights["noise"] and again["config"] == weights["config"]
    assert all(torch.equal(again["params"][k], v) for k, v in weights["params"].items())
    assert (out / "history.json").read_text() == history
    assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0  # now: nothing to do
    assert f"nothing to train; its weights: {out / 'model.pth'}" in capsys.readouterr().out
    # into --out, never over a file there: a copy of the checkpoint elsewhere, whose folder
    # holds another run's history, writes into --out (it had written beside the copy)
    elsewhere, other = tmp_path / "copies", tmp_path / "b"
    elsewhere.mkdir()
    (elsewhere / "ckpt.pth").write_bytes((out / "checkpoint.pth").read_bytes())
    (elsewhere / "history.json").write_text("[]")
    resume = ["train", "--resume", str(elsewhere / "ckpt.pth"), "--out", str(other)]
    assert main(resume) == 0
    assert (other / "model.pth").is_file() and (other / "history.json").read_text() == history
    assert (elsewhere / "history.json").read_text() == "[]"
    assert not (elsewhere / "model.pth").exists()
    (other / "history.json").unlink()  # Ctrl-C between the two files: the history alone
    assert main(resume) == 0
    assert f"written now: its history {other / 'history.json'}" in capsys.readouterr().out


def test_a_resume_into_another_folder_notes_the_unfinished_run_it_replaces(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):
        assert main(["train", *TINY, "--epochs", "2", "--out", str(folder)]) == 0
    state = checkpoint.load(other / "checkpoint.pth")
    checkpoint.save(other / "checkpoint.pth", {**state, "epoch": 1})  # unfinished there
    checkpoint.save(run / "checkpoint.pth", {**state, "epoch": 1})
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.pth"), "--out", str(other)]) == 0
    assert f"note: {other / 'checkpoint.pth'} held an unfinished run (epoch 1 of 2)" in (
        capsys.readouterr().out
    )


def test_eval_notes_when_the_weights_noise_is_another_kind(tmp_path, monkeypatch, capsys):
    """A Gaussian-noise network judged on the default aliasing pairs got a negative gain
    without a word. A U-Net gets one note, for photos with its noise: the built-in 32x32
    pairs with --noise gaussian:25 (the earlier advice) still gave it a negative gain."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    for noise, example in (("gaussian:25", "gaussian:25"), ("poisson:5-50", "poisson:30")):
        path = tmp_path / f"{noise.split(':')[0]}.pth"
        checkpoint.save(path, {**Model({"widths": (4, 4)}).payload(), "noise": noise})
        assert main(["eval", "--checkpoint", str(path), "--n-val", "4"]) == 0
        out = capsys.readouterr().out
        assert f"note: the weights' noise is {noise}; the validation pairs have the default" in out
        assert "default --noise downsample: give --noise" in out and f"{example})" in out
        given = ["eval", "--checkpoint", str(path), "--n-val", "4", "--noise", "downsample"]
        assert main(given) == 0  # given on purpose: no note
        assert "the weights' noise is" not in capsys.readouterr().out
    for name, example in (
        ("unet-gaussian", " --noise gaussian:25"),
        ("unet-poisson", " --noise poisson:30"),
    ):
        assert main(["eval", "--model", name, "--n-val", "4"]) == 0
        out = capsys.readouterr().out
        assert f"judge it on --val-photos DIR{example} (or --val-pairs DIR)" in out
        assert "the weights' noise is" not in out


def test_python_dash_m_runs_the_command_line():
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "n2nfunc", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("n2nfunc "), done
    done = subprocess.run(
        [sys.executable, "-m", "n2nfunc", "trian"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "did you mean train?" in done.stderr, done


def test_a_diverging_run_says_which_state_its_checkpoint_holds(tmp_path, monkeypatch, capsys):
    """The CLI passed on Model.train's "parameters restored" without saying that nothing is
    saved after it: the checkpoint holds the epoch's start."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30"]
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the loss became" in err and "Traceback" not in err
    assert f"{out / 'checkpoint.pth'} holds the state from the start of epoch 1 (resumed" in err
    assert "start a new run, with another --lr" in err


def test_numbers_in_e_notation_and_a_prefix_of_a_command_are_read(capsys):
    """argparse took "-1e-3" for an option ("expected one argument"), and "export" got no
    suggestion of export-submission."""
    assert main(["train", "--lr", "-1e-3"]) == 2
    assert "argument --lr: expected a finite number > 0, got '-1e-3'" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert "did you mean export-submission?" in capsys.readouterr().err


def test_two_runs_cannot_write_into_one_folder_at_once(tmp_path, monkeypatch, capsys):
    """Two `train` into the same --out both ran, each overwriting the other's checkpoint."""

    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    out.mkdir()
    runs._lock_folder(out)  # as a run in progress holds it
    try:
        with monkeypatch.context() as m:  # refused before the data (minutes for 50,000 pairs)
            m.setattr(train, "_training_data", lambda args: pytest.fail("data read"))
            assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: another n2nfunc train (process {os.getpid()}) is writing" in err
        assert not (out / "checkpoint.pth").exists()
    finally:
        runs._unlock_all()
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert not (out / runs.LOCK_NAME).exists()  # removed when the run ends


def test_denoise_refuses_a_u_net_that_is_not_rgb_to_rgb(tmp_path, capsys):
    """A U-Net of 1 output channel denoised the whole image, then failed in Pillow ("not
    enough image data"); one of 4 input channels failed without naming the file."""
    from PIL import Image

    from n2nfunc.pretrained import save_unet
    from n2nfunc.unet import unet

    Image.new("RGB", (20, 16), (90, 30, 200)).save(tmp_path / "in.png")
    for channels in ((3, 1), (4, 3)):
        arch = {"depth": 2, "widths": (4, 6, 4, 4), "in_channels": channels[0]}
        arch["out_channels"] = channels[1]
        _, params = unet(**arch).init(torch.Generator().manual_seed(0), (-1, channels[0], -1, -1))
        save_unet(tmp_path / "u.pth", arch, params)
        args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "o.png")]
        assert main([*args, "--checkpoint", str(tmp_path / "u.pth")]) == 2
        err = capsys.readouterr().err
        want = f"u.pth holds a U-Net of {channels[0]} input and {channels[1]} output channels"
        assert want in err and "Traceback" not in err and not (tmp_path / "o.png").exists()
        for command in (["eval", "--n-val", "4"], ["train", "--n-train", "32", "--quiet"]):
            option = "--checkpoint" if command[0] == "eval" else "--init"
            assert main([*command, option, str(tmp_path / "u.pth")]) == 2  # (was a shape)
            assert want in capsys.readouterr().err
    payload = checkpoint.load(tmp_path / "u.pth")  # channels not recorded: 3 and 3, as loaded
    arch = {"depth": 2, "widths": (4, 6, 4, 4)}
    _, params = unet(**arch).init(torch.Generator().manual_seed(0), (-1, 3, -1, -1))
    checkpoint.save(tmp_path / "u.pth", {**payload, "architecture": arch, "params": params})
    assert main([*args, "--checkpoint", str(tmp_path / "u.pth")]) == 0


def test_more_processes_than_cores_get_a_note(monkeypatch, capsys):
    """--nproc 16 on 2 cores ran at a twentieth of one process's speed without a word (more
    --threads than cores had a note)."""
    from types import SimpleNamespace

    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    for nproc, noted in ((16, True), (2, False)):
        common._setup(SimpleNamespace(nproc=nproc, threads=None, device="cpu"))
        err = capsys.readouterr().err
        assert ("note: 16 processes on this machine's 2 CPUs" in err) == noted, err


def test_photos_train_past_unreadable_files_and_resume_on_the_same_files_only(
    tmp_path, monkeypatch, capsys
):
    """A text file named .jpg, an empty and a truncated image among the photos had each
    stopped `train --photos`, one per run; a resumed run read a folder that had changed since
    without a word (other pairs than the run started with)."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in ("p.png", "q.png"):
        write_image(photos / name, torch.randint(0, 256, (3, 80, 90), generator=g).byte())
    write_image(photos / "whole.jpg", torch.randint(0, 256, (3, 80, 90), generator=g).byte())
    (photos / "trunc.jpg").write_bytes((photos / "whole.jpg").read_bytes()[:300])
    (photos / "whole.jpg").unlink()
    (photos / "text.jpg").write_text("not an image")
    (photos / "zero.png").write_bytes(b"")
    out = tmp_path / "run"
    args = ["train", "--network", "unet", "--widths", "4", "6", "4", "4", "--photos", str(photos)]
    args += ["--noise", "gaussian:25", "--n-train", "4", "--n-val", "4", "--epochs", "1"]
    args += ["--batch-size", "4", "--no-pictures", "--quiet", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"note: {photos}: left out 3 that cannot be read (text.jpg, trunc.jpg, zero.png)" in (
        printed
    )
    assert "note: the built-in 32x32 validation pairs are not photographs" in printed
    (photos / "q.png").unlink()
    state = checkpoint.load(out / "checkpoint.pth")  # a run with an epoch still to go
    state["config"]["num_epochs"] = 2
    checkpoint.save(tmp_path / "more.pth", state)
    resume = ["train", "--resume", str(tmp_path / "more.pth"), "--out", str(out), "--quiet"]
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert f"the images in --photos {photos} are not those it started with" in err
    for name in ("p.png", "text.jpg", "trunc.jpg", "zero.png"):
        (photos / name).unlink()
    (photos / "junk.png").write_text("")
    assert main(args[:-2] + ["--out", str(tmp_path / "run2")]) == 2
    assert "no image in" in capsys.readouterr().err


def test_init_starts_a_new_run_from_weights(tmp_path, monkeypatch, capsys):
    """A finished run could not be trained further, nor a shipped network fine-tuned: `train
    --init WEIGHTS` starts a new run from them, with the network they record."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    run = ["train", *TINY, "--noise", "gaussian:10", "--epochs", "1", "--out", str(first)]
    assert main(run) == 0
    assert main(["train", "--resume", str(first / "checkpoint.pth")]) == 0
    assert f"n2nfunc train --init {first / 'model.pth'} --out NEW_FOLDER" in (
        capsys.readouterr().out
    )
    trained = checkpoint.load(first / "model.pth")
    again = tmp_path / "again"
    fine = ["train", "--noise", "gaussian:10", "--n-train", "96", "--n-val", "32", "--quiet"]
    fine += ["--no-pictures", "--epochs", "1", "--lr", "1e-30"]
    assert main([*fine, "--init", str(first / "model.pth"), "--out", str(again)]) == 0
    assert f"starting from the weights in {first / 'model.pth'}" in capsys.readouterr().out
    same = checkpoint.load(again / "model.pth")  # lr 1e-30: the weights it started from
    assert same["config"]["widths"] == trained["config"]["widths"] == (8, 8)
    for k, v in trained["params"].items():
        assert torch.allclose(same["params"][k], v, rtol=0, atol=1e-20)
    digest = hashlib.sha256((first / "model.pth").read_bytes()).hexdigest()
    source = {"from": str((first / "model.pth").resolve()), "sha256": digest}
    assert same["init"] == checkpoint.load(again / "checkpoint.pth")["init"] == source
    assert "init" not in trained  # (a run of its own)
    for extra, message in (
        (["--widths", "8", "8"], "--widths does not apply with --init"),
        (["--resume", str(again / "checkpoint.pth")], "--init starts a new run from weights"),
        ([], "--init: no such weights file: nothing.pth"),
    ):
        weights = "nothing.pth" if not extra else str(first / "model.pth")
        assert main([*fine, "--init", weights, *extra, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    assert main([*fine, "--init", "unet-gaussian", "--out", str(tmp_path / "u")]) == 0
    tuned = checkpoint.load(tmp_path / "u" / "model.pth")
    assert tuned["network"] == "unet" and tuned["init"]["from"] == "unet-gaussian"
    capsys.readouterr()  # a U-Net trained on built-in pairs is judged on them without a note
    assert main(["eval", "--checkpoint", str(tmp_path / "u" / "model.pth"), "--n-val", "8"]) == 0
    assert "note: a U-Net learns from photographs" not in capsys.readouterr().out


def test_a_run_started_with_init_resumes_as_it_would_have_gone_on(tmp_path, monkeypatch, capsys):
    """--init had trained at a tenth of --lr (the fine-tuning scale of a loaded Model), and a
    resumed --init run at the whole of it: the two halves of one run differed."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    assert (
        main(["train", *TINY, "--noise", "gaussian:10", "--epochs", "1", "--out", str(first)]) == 0
    )
    run = ["train", *TINY[:4], "--batch-size", "16", "--no-pictures", "--quiet"]
    run += ["--noise", "gaussian:10", "--epochs", "2", "--init", str(first / "model.pth")]
    assert main([*run, "--out", str(tmp_path / "full")]) == 0
    real = Model.train_epoch

    def ctrl_c_in_epoch_2(self, x, y, epoch, total, callback=None, parallel=None):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, x, y, epoch, total, callback, parallel)

    monkeypatch.setattr(Model, "train_epoch", ctrl_c_in_epoch_2)
    assert main([*run, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(Model, "train_epoch", real)
    resume = ["train", "--resume", str(tmp_path / "cut" / "checkpoint.pth"), "--quiet"]
    assert main([*resume, "--no-pictures"]) == 0
    full = checkpoint.load(tmp_path / "full" / "model.pth")
    resumed = checkpoint.load(tmp_path / "cut" / "model.pth")
    assert all(torch.equal(full["params"][k], resumed["params"][k]) for k in full["params"])
    assert resumed["init"] == full["init"]  # (recorded by the first part, kept by the resume)
    (tmp_path / "cut" / "model.pth").unlink()  # its end cut short: --resume writes the weights
    assert main(resume) == 0
    assert checkpoint.load(tmp_path / "cut" / "model.pth")["init"] == full["init"]
    assert resumed["init"]["from"] == str((first / "model.pth").resolve())
    capsys.readouterr()


def test_init_without_lr_fine_tunes_at_a_tenth_and_says_so(tmp_path, monkeypatch, capsys):
    """At a new run's peak learning rate, a short --init run made a shipped U-Net 2 dB worse
    (Model fine-tunes at a tenth); and weights of camera noise trained on the default aliasing
    without a word. The rate is recorded, so that a resumed run goes on at it."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    assert (
        main(["train", *TINY, "--noise", "gaussian:10", "--epochs", "1", "--out", str(first)]) == 0
    )
    capsys.readouterr()
    run = ["train", *TINY[:4], *TINY[7:], "--epochs", "1", "--init", str(first / "model.pth")]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    tenth = DEFAULT_CONFIG["lr"] * DEFAULT_CONFIG["finetune_lr_scale"]
    assert f"note: --init without --lr fine-tunes at a peak learning rate of {tenth:g}, " in out
    assert (
        "note: the --init weights were trained on Gaussian noise, sigma 10 (of 255), built-in "
        "pairs; this run trains on the default --noise downsample: give --noise to keep their "
        "kind (e.g. --noise gaussian:25)" in out
    )
    assert checkpoint.load(tmp_path / "a" / "checkpoint.pth")["config"]["lr"] == pytest.approx(
        tenth
    )
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    torch.save((x, x), tmp_path / "pairs.pkl")  # pairs from a file: no noise is made for them
    files = ["--train", str(tmp_path / "pairs.pkl"), "--val", str(tmp_path / "pairs.pkl")]
    assert main([*run[:1], *run[5:], *files, "--out", str(tmp_path / "f")]) == 0
    assert "note: the --init weights were trained on" not in capsys.readouterr().out
    assert (
        main([*run, "--lr", "0.002", "--noise", "gaussian:10", "--out", str(tmp_path / "b")]) == 0
    )
    assert "note: --init" not in capsys.readouterr().out
    assert checkpoint.load(tmp_path / "b" / "checkpoint.pth")["config"]["lr"] == 0.002
    # the scale given, said as it is (the note had said "a tenth" whatever it was)
    half = ["--finetune-lr-scale", "0.5", "--noise", "gaussian:10", "--out", str(tmp_path / "c")]
    assert main([*run, *half]) == 0
    said = f"rate of {DEFAULT_CONFIG['lr'] * 0.5:g}, 0.5 times a new run's (give --lr to choose)"
    assert said in capsys.readouterr().out


def test_the_out_folder_is_locked_before_the_data_is_made(tmp_path, monkeypatch, capsys):
    """A second run into a folder that did not exist yet was let in while the first generated
    its data (minutes), and the two then wrote over each other's files."""

    out = tmp_path / "new" / "run"
    seen = []

    def data_fails(args):
        seen.append((out / runs.LOCK_NAME).is_file())
        with pytest.raises(ValueError, match="another n2nfunc train .* is writing"):
            runs._lock_folder(out)  # what a second run meets meanwhile
        raise ValueError("no data today")

    monkeypatch.setattr(train, "_training_data", data_fails)
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "no data today" in capsys.readouterr().err
    assert seen == [True]
    assert not out.exists()  # made for the lock, left empty: removed


def test_bad_init_and_resume_weights_stop_the_run_before_its_data_is_made(
    tmp_path, monkeypatch, capsys
):
    """--init and --resume files were checked (shapes, NaN, optimizer state) only after the
    training data was made: 40 s to 130 s of generating pairs before a one-line refusal."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    assert (
        main(["train", *TINY, "--noise", "gaussian:10", "--epochs", "2", "--out", str(first)]) == 0
    )
    state = checkpoint.load(first / "checkpoint.pth")
    state["epoch"] = 1
    state["params"]["0.weight"][0, 0, 0, 0] = float("nan")
    checkpoint.save(tmp_path / "nan_state.pth", state)
    weights = checkpoint.load(first / "model.pth")
    weights["params"]["0.weight"][0, 0, 0, 0] = float("nan")
    checkpoint.save(tmp_path / "nan.pth", weights)

    def no_data(*args, **kw):
        raise AssertionError("the data was made before the weights were checked")

    monkeypatch.setattr(train, "_training_data", no_data)
    run = ["train", *TINY[:4], *TINY[7:], "--noise", "gaussian:10", "--epochs", "2"]
    assert main([*run, "--init", str(tmp_path / "nan.pth"), "--out", str(tmp_path / "i")]) == 2
    assert "nan.pth: parameter '0.weight' holds NaN or infinite values" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nan_state.pth")]) == 2
    assert "nan_state.pth: parameter '0.weight' holds NaN or infinite" in capsys.readouterr().err


def test_text_from_a_weights_file_is_printed_escaped_and_short(tmp_path, capsys):
    """A crafted file's recorded noise reached the terminal as it was: escape sequences,
    forged lines, 100,000 characters."""
    payload = Model({"widths": (8, 8)}).payload()
    payload["noise"] = "\x1b[2J\x1b[31mEVIL\x1b[0m\nweights: fake line" + "x" * 100_000
    checkpoint.save(tmp_path / "ansi.pth", payload)
    write_image(tmp_path / "in.png", torch.rand(3, 12, 10))
    args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "out.png")]
    assert main([*args, "--checkpoint", str(tmp_path / "ansi.pth")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\nweights: fake" not in out and len(out) < 1000
    assert "\\x1b[2J\\x1b[31mEVIL\\x1b[0m\\nweights: fake line" in out


def test_every_command_refuses_an_exercise_checkpoint_whose_config_names_the_unet(tmp_path, capsys):
    """denoise ran the exercise network of such a file; eval blamed the widths of a U-Net."""
    payload = Model({"widths": (8, 8)}).payload()
    payload["config"]["network"] = "unet"
    checkpoint.save(tmp_path / "odd.pth", payload)
    write_image(tmp_path / "in.png", torch.rand(3, 12, 10))
    said = "odd.pth: its config names network 'unet', but it holds the exercise network's"
    for args in (
        ["denoise", str(tmp_path / "in.png"), str(tmp_path / "o.png"), "--checkpoint"],
        ["eval", "--n-val", "4", "--checkpoint"],
        ["export-submission", str(tmp_path / "sub"), "--checkpoint"],
    ):
        assert main([*args, str(tmp_path / "odd.pth")]) == 2
        assert said in capsys.readouterr().err


def test_a_resume_state_whose_data_paths_hold_control_characters_is_refused(
    tmp_path, monkeypatch, capsys
):
    """A crafted state's --photos path reached the terminal through the option's error."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "first"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(first)]) == 0
    state = checkpoint.load(first / "checkpoint.pth")
    state["epoch"], state["data"]["photos"] = 1, "/nonexist\x1b[31mEVIL"
    checkpoint.save(tmp_path / "ansi.pth", state)
    assert main(["train", "--resume", str(tmp_path / "ansi.pth")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "its 'data' must be a dict of the run's data options" in err


def test_a_missing_optional_dependency_is_one_line(tmp_path, monkeypatch, capsys):
    """Without Pillow (the viz extra) --pairs and denoise ended in a traceback."""
    import sys

    rgb = torch.zeros(3, 40, 40, dtype=torch.uint8)
    for sub in ("a", "b"):
        write_image(tmp_path / "pairs" / sub / "x.png", rgb)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if not installed
    args = ["train", "--pairs", str(tmp_path / "pairs"), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert main(["denoise", str(tmp_path / "pairs" / "a" / "x.png"), str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"n2nfunc {c}: error: this needs Pillow (image files), which is not installed: "
        "pip install 'n2nfunc[viz]'"
        for c in ("train", "denoise")
    ]
    assert not (tmp_path / "run").exists() and not (tmp_path / "o.png").exists()


def test_a_folders_digest_keeps_the_rule_of_earlier_runs(tmp_path):
    """Hidden files are no longer read, but a run started before records them in its
    folder's digest: --resume would have refused the unchanged folder."""
    import hashlib

    write_image(tmp_path / "a.png", torch.zeros(3, 8, 8, dtype=torch.uint8))
    (tmp_path / "._a.png").write_bytes(b"\0\5\x16\7")
    lines = [f"/{p.name}\t{p.stat().st_size}" for p in sorted(tmp_path.iterdir())]
    recorded = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    assert runs._folder_digest(tmp_path, "photos") == recorded


@pytest.mark.parametrize(
    "command",
    [
        "denoise {png} locked/x.png",
        "denoise locked/x.png y.png",
        "train --out locked/run --n-train 64 --epochs 1",
        "export-submission locked/sub",
        "eval --checkpoint locked/m.pth",
    ],
)
def test_a_path_behind_a_folder_without_permission_is_one_line(
    command, tmp_path, monkeypatch, capsys
):
    """Path.exists / is_dir raise PermissionError under a folder without search permission (as
    root cannot be made to see, here it is simulated): a traceback and exit 1 in every command."""
    pytest.importorskip("PIL")
    from PIL import Image

    png = tmp_path / "in.png"
    Image.new("RGB", (12, 8)).save(png)
    monkeypatch.chdir(tmp_path)
    for name in ("exists", "is_dir", "is_file", "stat"):
        real = getattr(Path, name)

        def denied(self, *a, _real=real, **k):
            if "locked" in str(self):
                raise PermissionError(13, "Permission denied", str(self))
            return _real(self, *a, **k)

        monkeypatch.setattr(Path, name, denied)
    assert main(command.format(png=png).split()) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"n2nfunc \S+: error: cannot reach locked/\S+ \(permission denied\)\n", err)


def test_a_finished_runs_resume_into_a_folder_of_another_run_does_not_point_at_its_weights(
    tmp_path, monkeypatch, capsys
):
    """--resume A/checkpoint.pth --out B of a finished run said "its weights: B/model.pth",
    another run's; the suggested commands are quoted for a shell (a path with a space)."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "run a", tmp_path / "b"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(a)]) == 0
    said = capsys.readouterr().out
    assert f"--checkpoint '{a / 'model.pth'}'" in said
    assert main(["train", *TINY, "--epochs", "1", "--seed", "3", "--out", str(b)]) == 0
    before = (b / "model.pth").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(a / "checkpoint.pth"), "--out", str(b)]) == 0
    said = capsys.readouterr().out
    others = "model.pth, checkpoint.pth, history.json"
    assert f"{b} holds other files ({others}), so its weights are in {a / 'checkpoint.pth'}" in said
    assert f"--init '{a / 'checkpoint.pth'}' --out NEW_FOLDER" in said
    assert (b / "model.pth").read_bytes() == before
    (b / "model.pth").unlink()  # another run's folder without its weights: nothing written
    assert main(["train", "--resume", str(a / "checkpoint.pth"), "--out", str(b)]) == 0
    assert f"{b} holds other files (checkpoint.pth, history.json)" in capsys.readouterr().out
    assert not (b / "model.pth").exists()
    (b / "checkpoint.pth").unlink()  # the user's history.json alone: not written over either
    (b / "history.json").write_text("my notes")
    assert main(["train", "--resume", str(a / "checkpoint.pth"), "--out", str(b)]) == 0
    assert f"{b} holds other files (history.json)" in capsys.readouterr().out
    assert (b / "history.json").read_text() == "my notes" and not (b / "model.pth").exists()
    assert main(["train", "--resume", str(a / "checkpoint.pth")]) == 0  # its own folder
    assert f"its weights: {a / 'model.pth'} (to train on" in capsys.readouterr().out


def test_a_finished_run_whose_folder_still_holds_an_earlier_runs_results_writes_its_own(
    tmp_path, monkeypatch, capsys
):
    """A run into a finished run's folder, stopped while its own weights were written: its
    Ctrl-C message called the earlier run's model.pth its weights, and its --resume refused to
    write them (another run's file)."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out, save = tmp_path / "run", checkpoint.save
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    earlier = (out / "model.pth").read_bytes()

    def cut_at_the_weights(path, tree):
        if Path(path).name == "model.pth":
            raise KeyboardInterrupt
        save(path, tree)

    monkeypatch.setattr(checkpoint, "save", cut_at_the_weights)
    assert main(["train", *TINY, "--epochs", "1", "--seed", "4", "--out", str(out)]) == 130
    monkeypatch.setattr(checkpoint, "save", save)
    said = capsys.readouterr().out
    assert "writes its weights and history" in said
    assert f"{out / 'model.pth'} its weights" not in said
    assert (out / "model.pth").read_bytes() == earlier
    (out / "samples.png").write_bytes(b"the earlier run's picture")
    assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0
    said = capsys.readouterr().out
    assert f"written now: its weights {out / 'model.pth'}, its history" in said
    assert f"removed {out / 'samples.png'}: an earlier run's picture" in said
    state = checkpoint.load(out / "checkpoint.pth")
    assert checkpoint.holds_params(out / "model.pth", state)
    assert json.loads((out / "history.json").read_text()) == state["history"]


def test_a_cut_history_a_history_less_checkpoint_and_a_linked_checkpoint(
    tmp_path, monkeypatch, capsys
):
    """Ctrl-C while history.json was written said the run's results were all there (the
    earlier run's history was); a checkpoint without a history wrote [] over the run's; a
    --resume of a link to a checkpoint wrote beside the link, over a history.json there."""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    earlier = (out / "history.json").read_text()
    real = Path.write_text

    def cut_at_the_history(self, *a, **k):
        if self.name == "history.json":
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", cut_at_the_history)
    assert main(["train", *TINY, "--epochs", "1", "--seed", "4", "--out", str(out)]) == 130
    monkeypatch.setattr(Path, "write_text", real)
    assert "writes its weights and history" in capsys.readouterr().out
    assert (out / "history.json").read_text() == earlier
    assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0
    assert f"written now: its history {out / 'history.json'}" in capsys.readouterr().out
    ours = (out / "history.json").read_text()
    assert ours != earlier

    state = checkpoint.load(out / "checkpoint.pth")
    checkpoint.save(out / "checkpoint.pth", {k: v for k, v in state.items() if k != "history"})
    assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0
    assert (out / "history.json").read_text() == ours  # kept: the checkpoint records none
    capsys.readouterr()

    checkpoint.save(out / "checkpoint.pth", state)
    monkeypatch.chdir(tmp_path)
    Path("latest.pth").symlink_to(out / "checkpoint.pth")
    Path("history.json").write_text("my notes")
    assert main(["train", "--resume", "latest.pth"]) == 0  # the run's own folder
    assert f"its weights: {out / 'model.pth'}" in capsys.readouterr().out
    assert Path("history.json").read_text() == "my notes" and not Path("model.pth").exists()
    Path("gone").symlink_to(tmp_path / "nowhere")
    assert main(["train", *TINY, "--out", "gone"]) == 2
    assert "--out gone is a link to" in capsys.readouterr().err


def test_a_u_nets_weights_written_by_a_finished_runs_resume_keep_their_noise(
    tmp_path, monkeypatch, capsys
):
    """(the weights rewritten by --resume had lost the noise from the U-Net's info, which
    load_network returns)"""
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    run = ["train", "--network", "unet", "--n-train", "16", "--n-val", "8", "--batch-size", "8"]
    run += ["--noise", "gaussian:10", "--epochs", "1", "--no-pictures", "--quiet"]
    assert main([*run, "--out", str(out)]) == 0
    noise = load_network(out / "model.pth")[2]["noise"]
    for stray in (["--kernel", "4"], ["--upsampling", "transpose"]):  # (had compared them)
        assert main(["train", "--resume", str(out / "checkpoint.pth"), *stray]) == 2
        assert f"{stray[0]} does not apply to --network unet" in capsys.readouterr().err
    (out / "model.pth").unlink()
    assert main(["train", "--resume", str(out / "checkpoint.pth")]) == 0
    assert load_network(out / "model.pth")[2]["noise"] == noise
    capsys.readouterr()


def test_denoise_replaces_an_existing_output_only_with_overwrite(tmp_path, capsys):
    """`n2nfunc denoise *.jpg` with two photos in the folder is `denoise a.jpg b.jpg`: the
    second photo must not be written over without a word."""
    write_image(tmp_path / "a.png", torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    write_image(tmp_path / "b.png", torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    before = (tmp_path / "b.png").read_bytes()
    args = ["denoise", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main(args) == 2
    assert "b.png exists; give --overwrite to replace it" in capsys.readouterr().err
    assert (tmp_path / "b.png").read_bytes() == before
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")  # a dangling link counts too
    assert main(["denoise", str(tmp_path / "a.png"), str(tmp_path / "link.png")]) == 2
    assert main([*args, "--overwrite"]) == 0
    assert (tmp_path / "b.png").read_bytes() != before


def test_denoise_keeps_exif_and_resolution_and_applies_the_orientation(tmp_path, capsys):
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to show
    rgb = torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)
    im = Image.frombytes("RGB", (24, 16), rgb.permute(1, 2, 0).contiguous().numpy().tobytes())
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes(), dpi=(300, 300), quality=95)
    for out in ("out.jpg", "out.png", "out.webp", "out.bmp"):
        assert main(["denoise", str(tmp_path / "phone.jpg"), str(tmp_path / out)]) == 0
        with Image.open(tmp_path / out) as written:
            assert written.size == (16, 24)  # upright
            kept = written.getexif()
            if out != "out.bmp":  # (BMP holds no EXIF)
                assert kept.get(0x010F) == "Canon" and kept.get(0x0112, 1) == 1, out
            if out in ("out.jpg", "out.png"):
                assert [round(v) for v in written.info["dpi"]] == [300, 300], out
    assert read_image(tmp_path / "out.png").exif is not None


def test_denoise_names_colour_information_it_cannot_keep_and_hides_exif_warnings(
    tmp_path, capsys, recwarn
):
    import struct

    from PIL import Image, ImageCms, PngImagePlugin

    rgb = Image.new("RGB", (20, 12), (200, 40, 90))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]  # a CMYK profile's header (the JPEG's colour space)
    rgb.convert("CMYK").save(tmp_path / "print.jpg", icc_profile=cmyk)
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", struct.pack(">I", 100000))  # gamma 1.0: linear values
    rgb.save(tmp_path / "linear.png", pnginfo=gamma)
    standard = PngImagePlugin.PngInfo()
    standard.add(b"gAMA", struct.pack(">I", 45455))  # sRGB's: nothing to say
    rgb.save(tmp_path / "plain.png", pnginfo=standard)
    rgb.save(
        tmp_path / "bad_exif.jpg", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x002\x00" + b"\x01" * 20
    )
    expected = {
        "print.jpg": "has its CMYK colour profile (the colours are converted without it)",
        "linear.png": "has its gamma of 1.0 (a PNG gAMA chunk; written as sRGB's)",
    }
    for name in ("print.jpg", "linear.png", "plain.png", "bad_exif.jpg"):
        out = tmp_path / f"out_{name}.png"
        assert main(["denoise", str(tmp_path / name), str(out)]) == 0
        notes = [line for line in capsys.readouterr().out.splitlines() if "does not keep" in line]
        if name in expected:
            assert notes == [f"note: {tmp_path / name} {expected[name]}, which {out} does not keep"]
        else:
            assert notes == []
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


def test_denoise_names_the_size_of_an_image_beyond_pillows_guard(tmp_path, capsys):
    from PIL import Image

    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")
    assert main(["denoise", str(tmp_path / "bomb.png"), str(tmp_path / "o.png")]) == 2
    assert re.search(
        r"bomb.png has more pixels than Pillow opens safely \(14000x14000, 196,000,000 pixels\): "
        r"at most 178,956,\d+ \(its guard",
        capsys.readouterr().err,
    )


def test_denoise_leaves_out_exif_the_output_cannot_hold_before_the_work(tmp_path, capsys, recwarn):
    """EXIF over JPEG's 64 KB, or a block the TIFF writer cannot parse, had failed the write
    after the whole denoise; TIFF's own tags are named as not kept."""
    from PIL import Image

    big = Image.Exif()
    big[0x010E] = "x" * 70000  # ImageDescription: EXIF past 64 KB, which PNG holds
    Image.new("RGB", (20, 12), (90, 30, 200)).save(tmp_path / "big.png", exif=big.tobytes())
    bad = b"Exif\x00\x00garbage-not-a-tiff-header" + b"\x00" * 8
    Image.new("RGB", (20, 12), (90, 30, 200)).save(tmp_path / "bad.jpg", exif=bad)
    for src, dst, why in (("big.png", "o.jpg", "EXIF data is too long"), ("bad.jpg", "o.tif", "")):
        out = tmp_path / dst
        assert main(["denoise", str(tmp_path / src), str(out)]) == 0, capsys.readouterr().err
        said = capsys.readouterr().out
        assert f"note: the EXIF data of {tmp_path / src} cannot be written to {out} ({why}" in said
        assert read_image(out).rgb.shape == (3, 12, 20)
    assert main(["denoise", str(tmp_path / "big.png"), str(tmp_path / "o.png")]) == 0
    assert "cannot be written" not in capsys.readouterr().out  # PNG holds it
    tagged = Image.Exif()
    tagged[0x010F] = "Canon"
    Image.new("RGB", (20, 12)).save(tmp_path / "t.tif", exif=tagged.tobytes())
    assert main(["denoise", str(tmp_path / "t.tif"), str(tmp_path / "t.png")]) == 0
    assert "has its TIFF tags (camera, date, ...), which " in capsys.readouterr().out
    assert not [w for w in recwarn if "EXIF" in str(w.message)]
    Image.new("RGB", (20, 12)).save(tmp_path / "plain.tif")  # a TIFF's own layout tags: no note
    assert main(["denoise", str(tmp_path / "plain.tif"), str(tmp_path / "p.png")]) == 0
    assert "TIFF tags" not in capsys.readouterr().out


def test_the_check_of_validation_files_against_training_files_reads_each_once(
    tmp_path, monkeypatch
):
    """Each validation file had been compared by hashing every training file of its size
    again: train x val reads (50,000 pairs against 1,000, uncompressed: most of an hour)."""
    for folder, n in (("train", 6), ("val", 4)):
        for i in range(n):
            write_image(
                tmp_path / folder / "a" / f"{i}.bmp",
                torch.full((3, 8, 8), i + 10 * (folder == "val"), dtype=torch.uint8),
            )
            write_image(
                tmp_path / folder / "b" / f"{i}.bmp",
                torch.full((3, 8, 8), 100 + i, dtype=torch.uint8),
            )
    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real(self))
    shared = same_image_files(tmp_path / "train", tmp_path / "val", ("a", "b"))
    assert len(reads) == len(set(reads)) == 20  # every file of one size: each read once
    assert sorted(Path(x).name for x, _ in shared) == ["0.bmp", "1.bmp", "2.bmp", "3.bmp"]  # b/


def test_denoise_to_tiff_leaves_out_exif_layout_tags_and_jpeg_keeps_a_16_bit_density(tmp_path):
    """Some cameras write the picture's size in their EXIF; TIFF's writer took it over its
    own (a 4000 x 3000 TIFF of 48 x 64 pixels, unreadable). JPEG stores dpi in 16 bits."""
    from PIL import Image

    tags = Image.Exif()
    tags[0x010F] = "Samsung"
    tags[0x0100], tags[0x0101] = 4000, 3000  # ImageWidth, ImageLength
    Image.new("RGB", (48, 64), (20, 90, 140)).save(tmp_path / "phone.jpg", exif=tags.tobytes())
    assert main(["denoise", str(tmp_path / "phone.jpg"), str(tmp_path / "out.tif")]) == 0
    with Image.open(tmp_path / "out.tif") as written:
        written.load()
        assert written.size == (48, 64) and written.getexif().get(0x010F) == "Samsung"
    Image.new("RGB", (16, 16)).save(tmp_path / "fine.tif", dpi=(100000, 100000))
    assert main(["denoise", str(tmp_path / "fine.tif"), str(tmp_path / "fine.jpg")]) == 0
    with Image.open(tmp_path / "fine.jpg") as written:
        assert written.info.get("dpi") in (None, (1, 1), (72, 72))  # not a wrapped 34464


def test_a_state_from_before_the_first_epoch_is_named_and_not_exported(tmp_path, capsys):
    """A run stopped in its first epoch leaves a checkpoint.pth of the weights it started from;
    eval and denoise took it without a word and export-submission shipped it."""
    model = Model({"widths": (4, 4)})
    state = {**model.payload(), "optimizer": model.optimizer.state, "epoch": 0}
    state.update(rng=model.generator.get_state(), history=[], noise="downsample")
    checkpoint.save(tmp_path / "checkpoint.pth", state)
    write_image(tmp_path / "in.png", torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    args = ["denoise", str(tmp_path / "in.png"), str(tmp_path / "o.png")]
    assert main([*args, "--checkpoint", str(tmp_path / "checkpoint.pth")]) == 0
    assert "is the state of a run stopped in its first epoch" in capsys.readouterr().out
    code = main(
        [
            "export-submission",
            str(tmp_path / "sub"),
            "--checkpoint",
            str(tmp_path / "checkpoint.pth"),
        ]
    )
    assert code == 2 and "stopped in its first epoch" in capsys.readouterr().err
    assert not (tmp_path / "sub" / "Miniproject_2").exists()
    state["epoch"] = 1
    checkpoint.save(tmp_path / "checkpoint.pth", state)
    assert (
        main(
            [
                "export-submission",
                str(tmp_path / "sub"),
                "--checkpoint",
                str(tmp_path / "checkpoint.pth"),
            ]
        )
        == 0
    )
    assert "first epoch" not in capsys.readouterr().out


def test_resuming_a_finished_photo_run_does_not_check_its_folder_again(tmp_path, capsys):
    """Nothing is read when a finished run is resumed: a photo added since is no reason to
    refuse (a deleted folder was not one either)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    write_image(photos / "p.png", torch.randint(0, 256, (3, 400, 400), generator=g).to(torch.uint8))
    run = tmp_path / "run"
    args = ["train", "--photos", str(photos), "--n-train", "16", "--n-val", "8", "--epochs", "1"]
    assert main([*args, "--widths", "4", "4", "--no-pictures", "--out", str(run)]) == 0
    write_image(photos / "q.png", torch.zeros(3, 400, 400, dtype=torch.uint8))
    capsys.readouterr()
    assert main(["train", "--resume", str(run / "checkpoint.pth")]) == 0
    assert "nothing to train" in capsys.readouterr().out


def test_names_stdout_cannot_encode_are_printed_escaped(tmp_path, monkeypatch):
    """A photo named in characters standard output's encoding lacks (output redirected to a
    file on Windows is cp1252) was denoised and written, then reported as a usage error
    ('charmap' codec can't encode ...), exit status 2."""
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "写真.png")
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="ascii")  # errors="strict", as a file's
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["denoise", str(tmp_path / "写真.png"), str(tmp_path / "out.png")]) == 0
    stdout.flush()
    assert (tmp_path / "out.png").is_file()
    assert "\\u5199\\u771f.png (40x30) ->" in raw.getvalue().decode("ascii")
