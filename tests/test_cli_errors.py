"""Bad command lines: each exits with status 2, prints at most the usage and one `error:`
line naming the option and the value, no traceback, and writes nothing (every file of the
test folder, including a populated output folder, is hashed before and after)."""

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from n2nfunc import argtypes, checkpoint
from n2nfunc.cli import main
from n2nfunc.data import write_image
from n2nfunc.model import DEFAULT_WEIGHTS, Model


def _png(path: Path, h: int = 40, w: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, torch.randint(0, 256, (3, h, w), dtype=torch.uint8))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Files a hurried user points the command line at, and a populated output folder."""
    w = tmp_path_factory.mktemp("world")
    Model({"widths": (8, 8)}).save(w / "weights.pth")
    shutil.copy(DEFAULT_WEIGHTS.parent / "unet-gaussian.pth", w / "unet.pth")
    from PIL import Image

    Image.new("1", (14000, 14000)).save(w / "bomb.png")  # 24 KB, 196 M pixels
    checkpoint.save(w / "data.ckpt", {"first": torch.zeros(2, 3, 4, 4, dtype=torch.uint8)})
    (w / "text.txt").write_text("hello, I am not a tensor file\n")
    (w / "garbage.pth").write_bytes(b"garbage\n")
    (w / "empty.pkl").write_bytes(b"")
    os.mkfifo(w / "pipe.png")  # as a shell's <(cat photo.png) gives: no size, no seek
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    torch.save((x, x), w / "train_data.pkl")
    torch.save((x[:, :2], x[:, :2]), w / "two_channels.pkl")
    (w / "folder").mkdir()
    (w / "empty_dir").mkdir()
    _png(w / "photo.png")
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    frames[0].save(w / "anim.gif", save_all=True, append_images=frames[1:])
    _png(w / "small_photos" / "p.png", 50, 60)
    _png(w / "mid_photos" / "p.png", 100, 120)
    _png(w / "photos" / "p.png", 400, 300)
    _png(w / "pairs" / "a" / "x.png", 32, 32)
    _png(w / "pairs" / "b" / "x.png", 32, 32)
    _png(w / "mismatch" / "a" / "x.png")
    _png(w / "mismatch" / "b" / "y.png")
    _png(w / "only_a" / "a" / "x.png")
    _png(w / "broken" / "a" / "x.png", 32, 32)
    (w / "broken" / "b").mkdir()
    (w / "broken" / "b" / "x.png").write_text("not a picture")
    (w / "only_a" / "b").mkdir()
    (w / "sub_file").mkdir()
    (w / "sub_file" / "Miniproject_2").write_text("a file where a folder goes")
    (w / "template" / "Miniproject_2").mkdir(parents=True)  # the course's own template
    (w / "template" / "Miniproject_2" / "model.py").write_text("class Model: ...\n")
    out = w / "out"  # a previous run's output
    out.mkdir()
    Model({"widths": (8, 8)}).save(out / "model.pth")
    (out / "history.json").write_text("[]")
    _png(out / "denoised.png")
    return w


def _tree_hash(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")

# (argv with {w} for the test folder, the error line's pattern)
ROWS = [
    # ---- train: numbers
    ("train --batch-size 0", r"argument --batch-size: expected an integer >= 1, got '0'"),
    ("train --batch-size -3", r"argument --batch-size: expected an integer >= 1, got '-3'"),
    ("train --batch-size 8.5", r"argument --batch-size: expected an integer >= 1, got '8.5'"),
    ("train --epochs 0", r"argument --epochs: expected an integer from 1 to 1000000, got '0'"),
    ("train --epochs -1", r"argument --epochs: expected an integer from 1 to 1000000, got '-1'"),
    ("train --epochs many", r"argument --epochs: expected an integer from 1 to 1000000, got 'many"),
    ("train --lr 0", r"argument --lr: expected a finite number > 0, got '0'"),
    ("train --lr -0.01", r"argument --lr: expected a finite number > 0, got '-0.01'"),
    ("train --lr nan", r"argument --lr: expected a finite number > 0, got 'nan'"),
    ("train --lr inf", r"argument --lr: expected a finite number > 0, got 'inf'"),
    ("train --momentum 1", r"argument --momentum: expected a finite number >= 0 and < 1, got '1'"),
    (
        "train --momentum -0.5",
        r"argument --momentum: expected a finite number >= 0 and < 1, got '-0.5'",
    ),
    ("train --widths 0 8", r"argument --widths: expected an integer from 1 to 4096, got '0'"),
    ("train --widths 8", r"--widths: the exercise network takes 2 widths, got 1 \(8\)"),
    ("train --network unet --widths 8 8", r"--widths: the unet network takes 4 widths, got 2"),
    ("train --network resnet", r"argument --network: invalid choice: 'resnet'"),
    ("train --kernel 1", r"argument --kernel: expected an integer from 2 to 5, got '1'"),
    ("train --kernel 7", r"argument --kernel: expected an integer from 2 to 5, got '7'"),
    ("train --upsampling nearest", r"--upsampling nearest needs an odd --kernel .* --kernel 4"),
    ("train --upsampling bilinear", r"argument --upsampling: invalid choice: 'bilinear'"),
    ("train --optimizer rmsprop", r"argument --optimizer: invalid choice: 'rmsprop'"),
    ("train --n-train 0", r"argument --n-train: expected an integer >= 1, got '0'"),
    ("train --n-val -5", r"argument --n-val: expected an integer >= 1, got '-5'"),
    ("train --seed -1", r"argument --seed: expected an integer from 0 to 2147483647, got '-1'"),
    ("train --noise gaussian", r"argument --noise: noise 'gaussian': gaussian needs a level"),
    ("train --noise gaussian:-5", r"argument --noise: noise 'gaussian:-5': sigma must be in \[0,"),
    (
        "train --noise poisson:-5",
        r"noise 'poisson:-5': the Poisson peak must be from 0.1 to 1e\+06",
    ),
    ("train --noise gaussian:50-10", r"argument --noise: .*the range '50-10' is empty"),
    ("train --noise gaussian:300", r"argument --noise: .*sigma must be in \[0, 255\]"),
    (
        "train --noise poisson:0",
        r"argument --noise: .*the Poisson peak must be from 0.1 to 1e\+06",
    ),
    (
        "train --noise downsample:1",
        r"argument --noise: .*the factor must be an integer from 2 to 16",
    ),
    ("train --noise salt", r"argument --noise: noise 'salt': unknown kind 'salt'; expected gaus"),
    ("train --threads 0", r"argument --threads: expected an integer from 1 to 1024, got '0'"),
    ("train --threads 100000", r"argument --threads: expected an integer from 1 to 1024, got"),
    ("train --nproc 0", r"argument --nproc: expected an integer >= 1, got '0'"),
    ("train --nproc 3", r"--nproc 3: the global --batch-size 32 must divide by the number"),
    ("train --nproc two", r"argument --nproc: expected an integer >= 1, got 'two'"),
    ("trian --epochs 2", r"invalid choice: 'trian' \(did you mean train\? choose from 'train'"),
    ("train --precision float16", r"argument --precision: invalid choice: 'float16'"),
    pytest.param(
        "train --device cuda",
        r"argument --device: 'cuda' asked for, but no CUDA device is available",
        marks=NO_CUDA,
    ),
    ("train --device gpu", r"argument --device: expected cpu, cuda, cuda:N or auto, got 'gpu'"),
    # ---- train: data files and folders
    ("train --train {w}/missing.pkl --val {w}/train_data.pkl", r"--train: no such pair file: "),
    ("train --train {w}/folder --val {w}/train_data.pkl", r"--train: .*folder is a folder; expe"),
    ("train --train {w}/empty.pkl --val {w}/train_data.pkl", r"--train: .*empty.pkl is empty"),
    ("denoise {w}/pipe.png {w}/o.png", r"INPUT: .*pipe.png is not a regular file \(a pipe"),
    ("eval --checkpoint {w}/pipe.png", r"--checkpoint: .*pipe.png is not a regular file"),
    ("train --init {w}/pipe.png", r"--init: .*pipe.png is not a regular file \(a pipe or device\)"),
    (
        "train --train {w}/text.txt --val {w}/train_data.pkl",
        r"--train: pair file .*text.txt is not a readable torch file",
    ),
    (
        "train --train {w}/train_data.pkl --val {w}/text.txt",
        r"--val: pair file .*text.txt is not a readable torch file",
    ),
    (
        "train --train {w}/two_channels.pkl --val {w}/train_data.pkl",
        r"--train: pair file .*two_channels.pkl: first tensor has shape \(5, 2, 32, 32\)",
    ),
    ("train --train {w}/train_data.pkl", r"--train needs --val too"),
    ("train --val {w}/train_data.pkl", r"--val goes with --train"),
    ("train --train {w}/train_data.pkl --pairs {w}/pairs", r"--pairs: not allowed with .*--train"),
    ("train --pairs {w}/empty_dir", r"argument --pairs: .*empty_dir has no sub-folder a/"),
    ("train --pairs {w}/mismatch", r"argument --pairs: no image file name is in both .*x.png vs y"),
    ("train --pairs {w}/only_a", r"argument --pairs: no image files in .*only_a/b"),
    ("train --pairs {w}/broken", r"--pairs: cannot read image .*x.png: damaged, truncated, or"),
    ("train --pairs {w}/text.txt", r"argument --pairs: .*text.txt is a file; expected a folder"),
    ("train --photos {w}/empty_dir", r"argument --photos: no image files .* in the folder"),
    ("train --photos {w}/nowhere", r"argument --photos: no such folder: .*nowhere"),
    (
        "train --photos {w}/small_photos",
        r"--photos: no photo in .*small_photos is at least 384 pixels .*largest: 50\): plain --n",
    ),
    (
        "train --photos {w}/broken/b",
        r"--photos: no image in .*b can be read \(.*x.png is not a PNG, JPEG, .* AVIF file "
        r"n2nfunc can read\)$",
    ),
    (
        "train --photos {w}/mid_photos --noise downsample:4",
        r"--photos: no photo .* at least 128 pixels .*largest: 100\): --noise downsample:4 cuts",
    ),
    (
        "train --photos {w}/small_photos --noise gaussian:25",
        r"--photos: no photo .* at least 64 pixels .*: --noise gaussian:25 cuts 64 x 64 crops",
    ),
    ("train --val-pairs {w}/mismatch", r"argument --val-pairs: no image file name is in both"),
    ("train --val-photos {w}/photo.png", r"argument --val-photos: .*photo.png is a file"),
    ("train --val-pairs {w}/pairs --val-photos {w}/photos", r"give one validation set"),
    (
        "train --pairs {w}/pairs --n-train 50",
        r"--n-train counts .*--pairs trains on all its pairs$",
    ),
    ("eval --val-pairs {w}/pairs --n-val 9", r"--n-val counts .*--val-pairs validates on all its"),
    (
        "eval --val-pairs {w}/pairs --noise gaussian:25",
        r"--noise applies to generated pairs; --val-pairs gives all the pairs$",
    ),
    (
        "eval --val {w}/train_data.pkl --seed 5",
        r"--seed applies to generated pairs; --val gives all the pairs$",
    ),
    (
        "train --pairs {w}/pairs --val-pairs {w}/pairs --noise poisson:30",
        r"--noise applies to generated pairs; --pairs and --val-pairs give all the pairs$",
    ),
    (
        "eval --model {w}/model.pth",
        r"--model: '.*model.pth' is not a shipped .*goes with --checkpoint",
    ),
    (
        "eval --model unet-gausian",
        r"--model: invalid choice: 'unet-gausian' \(did you mean unet-gaus",
    ),
    (
        "eval --model unet",
        r"invalid choice: 'unet' \(did you mean unet-gaussian or unet-poisson or",
    ),
    (
        "denoise {w}/photo.png {w}/o.png --model nope",
        r"--model: invalid choice: 'nope' \(choose from 'exercise', 'unet-gaussian', ",
    ),
    # ---- train: output and resume
    ("train --out {w}/text.txt", r"argument --out: .*text.txt is a file; expected a folder"),
    ("train --out {w}/text.txt/run", r"argument --out: cannot create .*: .*text.txt is a file"),
    ("train --resume {w}/garbage.pth", r"--resume: checkpoint .*garbage.pth is truncated or not"),
    ("train --resume {w}/weights.pth", r"--resume: .*weights.pth is not a training state .*"),
    ("train --resume {w}/folder", r"argument --resume: .*folder is a folder; expected a checkpo"),
    ("train --resume {w}/nope.pth", r"argument --resume: no such checkpoint: .*nope.pth"),
    # ---- eval
    ("eval --checkpoint {w}/missing.pth", r"argument --checkpoint: no such checkpoint: "),
    ("train --final-lr-fraction abc", r"expected a finite number >= 0 and <= 1, got 'abc'"),
    ("train --final-lr-fraction 1.5", r"expected a finite number >= 0 and <= 1, got '1.5'"),
    ("train --warmup-steps 2.5", r"--warmup-steps: expected an integer >= 0, got '2.5'"),
    (
        "denoise {w}/photo.png {w}/o.png --checkpoint unet-poisson",
        r"no such checkpoint: unet-poisson \(a shipped network goes by name to --model unet-p",
    ),
    ("eval --checkpoint {w}/folder", r"argument --checkpoint: .*folder is a folder"),
    ("eval --checkpoint {w}/text.txt", r"--checkpoint: checkpoint .*text.txt is truncated or no"),
    ("eval --checkpoint {w}/garbage.pth", r"--checkpoint: checkpoint .*garbage.pth is truncated"),
    ("eval --checkpoint {w}/data.ckpt", r"--checkpoint: .*data.ckpt holds no network weights"),
    ("eval --val {w}/text.txt", r"--val: pair file .*text.txt is not a readable torch file"),
    ("eval --val {w}/train_data.pkl --val-pairs {w}/pairs", r"give one validation set"),
    ("eval --val-photos {w}/mid_photos", r"--val-photos: .* at least 256 pixels .*factor 8;"),
    ("eval --n-val 0", r"argument --n-val: expected an integer >= 1, got '0'"),
    ("eval --seed -7", r"argument --seed: expected an integer from 0 to 2147483647, got '-7'"),
    # ---- denoise
    ("denoise {w}/photo.png {w}/out/denoised.png --tile 0", r"--tile: .*of at least 96, got '0' "),
    ("denoise {w}/photo.png {w}/out/denoised.png --tile -4", r"argument --tile: .*got '-4'"),
    (
        "denoise {w}/photo.png {w}/o.png --tile 100",
        r"--tile: expected a multiple of 32 .*\(e.g. 96\)",
    ),
    ("denoise {w}/photo.png {w}/o.png --tile 64", r"--tile: .* at least 96, got '64' \(e.g. 96\)"),
    ("denoise {w}/photo.png {w}/o.png --tile big", r"--tile: .* at least 96, got 'big'$"),
    ("denoise {w}/folder {w}/out/denoised.png", r"argument INPUT: .*folder is a folder; expected"),
    ("denoise {w}/missing.png {w}/out/denoised.png", r"argument INPUT: no such image file: "),
    (
        "denoise {w}/text.txt {w}/out/denoised.png",
        r"argument INPUT: .*text.txt is not a PNG, JPEG, .*AVIF file",
    ),
    ("denoise {w}/photo.png {w}/out", r"argument OUTPUT: .*out is a folder; expected an image"),
    ("denoise {w}/photo.png {w}/out/", r"OUTPUT: .*out/ is a folder; .* such as \S*[^/]/out.png$"),
    ("denoise {w}/photo.png {w}/out/d.xyz", r"OUTPUT: .*does not write '.xyz' images; use .png"),
    ("denoise {w}/photo.png {w}/out/denoised", r"argument OUTPUT: .*denoised has no extension"),
    ("denoise {w}/photo.png {w}/out/d.gif", r"OUTPUT: .*does not write '.gif' images; use .png, "),
    ("denoise {w}/photo.png {w}/no_dir/d.png", r"argument OUTPUT: the folder .*no_dir does not e"),
    ("denoise {w}/photo.png {w}/photo.png/d.png", r"OUTPUT: .*photo.png is a file, not a folder"),
    ("denoise {w}/photo.png {w}/photo.png/a/d.png", r"OUTPUT: .*photo.png is a file, not a fold"),
    ("denoise {w}/photo.png {w}/photo.png", r"output .*photo.png is the input file"),
    (
        "denoise {w}/photo.png {w}/out/d.png --checkpoint {w}/garbage.pth",
        r"--checkpoint: checkpoint .*garbage.pth is truncated or not an n2nfunc checkpoint",
    ),
    ("denoise {w}/photo.png {w}/out/d.png --threads -2", r"argument --threads: .*got '-2'"),
    ("denoise {w}/photo.png", r"the following arguments are required: OUTPUT"),
    ("denoise {w}/bomb.png {w}/o.png", r"INPUT: .*bomb.png has more pixels than Pillow opens saf"),
    ("denoise {w}/anim.gif {w}/o.png", r"input: cannot read image .*anim.gif: an animation of 2 f"),
    # ---- export-submission
    ("export-submission {w}/text.txt", r"argument OUT_DIR: .*text.txt is a file; expected a fold"),
    ("export-submission {w}/sub_file", r"Miniproject_2 is a file; move it away"),
    ("export-submission {w}/template", r"Miniproject_2: .*holds model.py, not written by n2nfu"),
    (
        "export-submission {w}/out --checkpoint {w}/text.txt",
        r"--checkpoint: checkpoint .*text.txt is truncated or not an n2nfunc checkpoint",
    ),
    ("export-submission {w}/out --checkpoint {w}/no.pth", r"argument --checkpoint: no such chec"),
    (
        "export-submission {w}/out --checkpoint {w}/data.ckpt",
        r"--checkpoint: .*data.ckpt: not a checkpoint of the course's network",
    ),
    # ---- the command itself
    ("", r"the following arguments are required: COMMAND"),
    ("fit", r"argument COMMAND: invalid choice: 'fit'"),
    (
        "train --epochs 3 --batchsize 8",
        r"train: error: unrecognized option --batchsize \(did you mean --batch-size\? n2nfunc t",
    ),
    ("--foo train", r"n2nfunc: error: unrecognized option --foo before the command"),
    (
        "train --nproc 2 --n-train 15 --batch-size 16",
        r"--nproc 2: --n-train 15 is below --batch-size 16, so each batch is all 15 pairs",
    ),
    ("train --widht 8 8", r"unrecognized option --widht \(did you mean --widths\?"),
    ("train --model unet", r"unrecognized option --model \(did you mean --network\?"),
    # a shipped network's name: its weights are what --init starts from (--network refused it)
    ("train --model unet-gaussian", r"unrecognized option --model \(did you mean --init\?"),
    ("train --model=exercise", r"unrecognized option --model \(did you mean --network\?"),
    ("eval --network unet", r"unrecognized option --network \(did you mean --model\?"),
    ("train --gpu", r"unrecognized option --gpu \(n2nfunc train --help"),  # no far-off guess
    ("eval --n-val 2000000000", r"--n-val 2000000000: the pairs need about \d+ GiB .*is 1000\)"),
    ("train extra", r"n2nfunc train: error: train takes options only .*, got extra$"),
    (  # a shell glob's several files
        "denoise {w}/photo.png {w}/o.png {w}/x.png",
        r"denoise: error: denoise takes one INPUT and one OUTPUT; more was given: .*x.png",
    ),
    ("export-submission a b", r"export-submission takes one OUT_DIR; more was given: b$"),
    ("train --epochs 99999999999999999999", r"--epochs: expected an integer from 1 to 1000000"),
    ("train --n-train 2000000000", r"--n-train 2000000000: the pairs need about \d+ GiB of memory"),
    (  # the default 50,000 pairs in each of 100,000 processes (one was OOM-killed at 64)
        "train --nproc 100000 --batch-size 100000",
        r"--nproc 100000: its processes need about \d+ GiB of memory \(each about 0.29 GiB for "
        r"torch and the network and 1.1 GiB for its copy of the training pairs\)",
    ),
    (
        "export-submission {w}/out --checkpoint {w}/unet.pth",
        r"--checkpoint: .*unet.pth: U-Net weights; a submission ships the course's required",
    ),
    ("denoise --noise gaussian:25 {w}/photo.png {w}/o.png", r"denoise: .*unrecognized option --n"),
    ("denoise {w}/photo.png {w}/o.png --nosuch=3", r"denoise: .*unrecognized option --nosuch "),
]


@pytest.mark.parametrize("line,pattern", ROWS)
def test_bad_invocation_is_one_line_and_writes_nothing(
    world, line, pattern, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    before = _tree_hash(world)
    argv = [a.format(w=world) for a in line.split()]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) in (1, 2) and "error:" in lines[-1], err  # [usage line,] error line
    assert len(lines) == 1 or lines[0].startswith("usage: n2nfunc")
    assert re.search(pattern, lines[-1]), lines[-1]
    assert _tree_hash(world) == before
    assert list(tmp_path.iterdir()) == []  # nothing written in the working folder either


@pytest.mark.parametrize(
    "line,option",
    [
        ("train --out {w}/out", "--out"),
        ("export-submission {w}/out", "OUT_DIR"),
        ("denoise {w}/photo.png {w}/out/new.png", "OUTPUT"),
    ],
)
def test_unwritable_output_folder(world, line, option, monkeypatch, capsys):
    """A folder the user cannot write in (simulated, so the test also means something when
    run as root, who may write anywhere)."""
    real = os.access
    denied = world / "out"

    def access(path, mode, *a, **kw):
        if Path(path) == denied and mode & os.W_OK:
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(argtypes.os, "access", access)
    before = _tree_hash(world)
    assert main([a.format(w=world) for a in line.split()]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"argument {option}: cannot write in .*out \(permission denied\)", err), err
    assert _tree_hash(world) == before


def test_help_and_version_exit_zero(capsys):
    assert main(["--version"]) == 0
    assert re.fullmatch(r"n2nfunc \d+\.\d+\.\d+\n", capsys.readouterr().out)
    for command in ("train", "eval", "denoise", "export-submission"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"n2nfunc {command}" in text and "``" not in text


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize(
    "line,option",
    [
        ("train --out /proc/n2nfunc-run", "--out"),
        ("export-submission /proc/n2nfunc-sub", "OUT_DIR"),
        ("denoise {w}/photo.png /proc/n2nfunc.png", "output"),
    ],
)
def test_a_folder_that_refuses_files_is_named_before_any_work(world, line, option, capsys):
    """/proc takes no new files, even from root, whom the permission bits let write anywhere:
    a probe file finds out before any data is generated or weights loaded."""
    assert main([a.format(w=world) for a in line.split()]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: {option}: cannot create files in /proc \(it takes no new", err), err


@pytest.mark.parametrize("name", ["model.pth", "curves.png"])
def test_a_folder_where_a_run_file_goes_is_named_before_any_training(tmp_path, name, capsys):
    """It was found when the file was written, after all the epochs."""
    (tmp_path / "run" / name).mkdir(parents=True)
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"error: --out: {tmp_path / 'run' / name} is a folder, where the run writes" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [name]


def test_top_level_options_are_not_abbreviated(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("n2nfunc ")
    assert main(["--vers"]) == 2
    assert "unrecognized option --vers before the command" in capsys.readouterr().err


def test_a_decompression_bomb_among_the_photos_is_one_line(world, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # the small photo stands in for a huge one
    assert main(["train", "--photos", str(world / "small_photos")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"--photos: .*p.png has more pixels than Pillow opens safely", err), err


@pytest.mark.parametrize(
    "line,pattern",
    [
        (
            "train --nproc 2 --device cuda",
            r"--nproc 2 with --device cuda: each process needs a GPU",
        ),
        ("train --nproc 4 --device auto", r"--nproc 4 with --device auto: .*this machine has 1;"),
        ("train --nproc 2 --device cuda:0", r"--nproc 2 with --device cuda:0: each process needs"),
        ("train --nproc 2 --device cuda:1", r"--nproc 2 with --device cuda:1: each process takes"),
        (
            "torchrun 2 train --device cuda",
            r"2 processes on this machine \(LOCAL_WORLD_SIZE\) with --device cuda: each process "
            r"needs a GPU of its own \(NCCL\) and this machine has 1; give torchrun "
            r"--nproc-per-node 1 or fewer, or --device cpu",
        ),
    ],
)
def test_nproc_on_gpus_needs_a_gpu_per_process(line, pattern, tmp_path, monkeypatch, capsys):
    """NCCL gives each local process the GPU of its rank: more processes than GPUs, or one
    GPU named for all of them, is refused before any process starts (one GPU pretended; two
    for cuda:1; "torchrun 2": a worker of a torchrun with 2 processes on this machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if "cuda:1" in line else 1)
    if line.startswith("torchrun"):
        _, local, line = line.split(" ", 2)
        env = {"RANK": "0", "WORLD_SIZE": local, "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": local}
        for key, value in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(line.split()) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(pattern, err.splitlines()[-1]), err
    assert list(tmp_path.iterdir()) == []
