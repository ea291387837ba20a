"""The checks between options, run before any work starts: each ``_check_*`` calls ``error``
(the command's usage error, exit status 2) with one line; the per-value checks are in
``argtypes``."""

import errno
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from .. import argtypes as at
from .. import checkpoint, hardware, launch
from ..data.files import same_image_files
from ..data.photos import PATCH
from ..pretrained import NAMES as PRETRAINED_NAMES
from .common import (
    RUN_FILES,
    _camera_noise,
    _given,
    _loading,
    _local_processes,
    _n_train_default,
    _option,
    _rank,
    _run_files_in,
)
from .pairs import PHOTO_CROP, _crop_sides, _photo_factor
from .use import _network_payload


def _check_precision(args, error) -> None:
    """bfloat16 only where the matmul units take it natively (emulated, it is slower)."""
    if getattr(args, "precision", "float32") == "bfloat16":
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        if device == "auto":
            device = "cpu"
        problem = hardware.bfloat16_problem(device)
        if problem:
            error(f"--precision bfloat16: {problem}")
        if (unknown := hardware.bfloat16_unknown(device)) and _rank() == "0":
            print(f"note: --precision bfloat16: {unknown}", file=sys.stderr)


def _check_foreign_files(out: Path, error) -> None:
    """Refuse an ``out`` that holds files of a run's names but no run of ``train`` (no
    checkpoint.pth of one): files of the user's own, which a run would replace or remove."""
    present = _run_files_in(out)
    if not present:
        return
    try:
        state = checkpoint.load(out / "checkpoint.pth")
        if isinstance(state, dict) and {"epoch", "config"} <= set(state):
            return
    except (ValueError, OSError):
        pass
    error(
        f"--out {out} holds {', '.join(present)} but no n2nfunc run (no checkpoint.pth that "
        "train wrote, or a damaged one): a run would write over or remove them; give another "
        "--out, or move them"
    )


def _check_train(args, error) -> None:
    if args.resume and "out" not in _given(args):  # continue in the run's own folder (where
        args.out = str(Path(args.resume).resolve().parent)  # the file is, not a link to it)
    if Path(args.out).is_symlink() and not Path(args.out).exists():
        error(f"--out {args.out} is a link to {os.readlink(args.out)}, which does not exist")
    _check_writable(Path(args.out), "--out", error)
    for name in RUN_FILES:  # found only when written, after the training, before
        if (Path(args.out) / name).is_dir():
            error(f"--out: {Path(args.out) / name} is a folder, where the run writes its {name}")
    if not args.resume:  # (a finished run's resume writes only what is missing: train.cmd_train)
        _check_foreign_files(Path(args.out), error)
    _check_memory(args, error)
    if args.resume and args.init is not None:
        error("--init starts a new run from weights; --resume continues a run: give one")
    if args.resume:  # the run's own options: train.cmd_train compares those given with them
        return
    if args.init is not None:
        _check_init(args, error)
    if args.train and not args.val:
        error("--train needs --val too (the course's validation file, val_data.pkl)")
    if args.val and not args.train:
        error("--val goes with --train (for other training data use --val-pairs or --val-photos)")
    _check_data_options(args, error)
    _check_photo_sides(args, error)
    want = 4 if args.network == "unet" else 2
    if args.widths is not None and len(args.widths) != want:
        error(
            f"--widths: the {args.network} network takes {want} widths, got {len(args.widths)} "
            f"({' '.join(map(str, args.widths))})"
        )
    if args.optimizer != "sgd" and "momentum" in _given(args):
        error(f"--momentum is SGD's; it does not apply to --optimizer {args.optimizer}")
    fine_tuned = args.init is not None and args.lr is None
    if "finetune_lr_scale" in _given(args) and not (fine_tuned or args.resume):
        error(  # (a resumed run keeps the rate it started with)
            "--finetune-lr-scale scales the default learning rate of a run started from --init "
            "weights, without --lr (a given --lr is used as it is)"
        )
    if args.network == "unet":
        stray = sorted({"kernel", "upsampling"} & _given(args))
        if stray:
            error(
                f"{_option(stray[0])} does not apply to --network unet (3x3 convolutions, "
                "nearest x2 upsampling)"
            )
    if args.upsampling == "nearest" and args.kernel % 2 == 0:
        error(f"--upsampling nearest needs an odd --kernel (3 or 5), got --kernel {args.kernel}")
    _check_nproc(args, error)


def _check_init(args, error) -> None:
    """``--init``: a weights file or a shipped network's name, read once here so that a bad
    one stops the run before its data is made; the run trains the network it records."""
    stray = sorted({"network", "widths", "kernel", "upsampling"} & _given(args))
    if stray:
        error(
            f"{_option(stray[0])} does not apply with --init: the network is the one its "
            "weights record"
        )
    from ..pretrained import shipped_weights

    path = Path(args.init)
    try:
        if not path.exists() and args.init in PRETRAINED_NAMES:
            path = _loading("--init", shipped_weights, args.init)
        elif path.is_dir():
            raise ValueError(f"--init: {args.init} is a folder; expected a weights file")
        elif path.exists() and not path.is_file():  # (a FIFO, a device)
            raise ValueError(
                f"--init: {args.init} is not a regular file (a pipe or device); expected a "
                "weights file saved on disk"
            )
        elif not path.is_file():
            names = ", ".join(PRETRAINED_NAMES)
            raise ValueError(f"--init: no such weights file: {args.init} (or a name: {names})")
        payload = _network_payload("--init", path)
        args.init_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    except (ValueError, OSError) as e:
        error(str(e))
    args.init_given = args.init  # a shipped network's name, or the path as given
    args.init, args.init_payload = path, payload  # (train.run_training loads it: read once)
    args.network = "unet" if payload.get("network") == "unet" else "exercise"


def _check_memory(args, error) -> None:
    """Refuse an --n-train / --n-val whose generated pairs (two float32 images each, as
    training and evaluation hold them; a copy in each of --nproc's processes) could not fit in
    this machine's memory at all."""
    counts = []
    if not any(getattr(args, k, None) for k in ("train", "pairs")):
        if hasattr(args, "n_train"):  # (eval has none)
            side = PHOTO_CROP if args.photos and _camera_noise(args) else 32
            default = _n_train_default(args)
            n = default if args.n_train is None else args.n_train
            counts.append(("--n-train", n, side, default))
    if not (args.val or args.val_pairs) and args.n_val is not None:
        side = PHOTO_CROP if getattr(args, "val_photos", None) and _camera_noise(args) else 32
        counts.append(("--n-val", args.n_val, side, 1000))
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this system
        return
    nproc = max(1, getattr(args, "nproc", 1))
    pairs = {o: n * 2 * 3 * side * side * 4 for o, n, side, _ in counts}
    if sum(pairs.values()) > have:
        option, n, _, default = max(counts, key=lambda c: c[1] * c[2] ** 2)
        error(
            f"{option} {n}: the pairs need about {sum(pairs.values()) / 2**30:.0f} GiB of "
            f"memory, more than this machine's {have / 2**30:.0f} GiB (the default is {default})"
        )
    train = pairs.get("--n-train", 0)  # a copy in each process; rank 0 alone evaluates
    need = nproc * (train + PROCESS_BYTES) + pairs.get("--n-val", 0)
    if nproc > 1 and need > have:
        error(
            f"--nproc {nproc}: its processes need about {need / 2**30:.0f} GiB of memory (each "
            f"about {PROCESS_BYTES / 2**30:.2g} GiB for torch and the network"
            + (f" and {train / 2**30:.2g} GiB for its copy of the training pairs" if train else "")
            + f"), more than this machine's {have / 2**30:.0f} GiB"
        )


# What one training process holds besides its data: torch, MKL's buffers and the network
# (peak RSS of a small default-network run, 2-core AMD EPYC: 259 MB).
PROCESS_BYTES = 300 * 2**20


def _check_nproc(args, error) -> None:
    processes, who = args.nproc, f"--nproc {args.nproc}"
    if launch.is_worker() and args.nproc == 1:  # started by torchrun: its WORLD_SIZE counts
        text = os.environ.get("WORLD_SIZE", "1")
        if not text.isdecimal() or int(text) < 1:
            error(f"WORLD_SIZE={text!r}: expected the number of processes, an integer >= 1")
        processes = int(text)
        who = f"{processes} processes (WORLD_SIZE)"
    if processes > 1 and args.batch_size % processes:
        error(
            f"{who}: the global --batch-size {args.batch_size} must divide by the "
            "number of processes (each takes an equal slice of every batch)"
        )
    device, local = getattr(args, "device", "cpu"), _local_processes(args)
    if local > 1 and (device.startswith("cuda") or device == "auto"):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        here = who if args.nproc > 1 else f"{local} processes on this machine (LOCAL_WORLD_SIZE)"
        fewer = f"--nproc {gpus}" if args.nproc > 1 else f"torchrun --nproc-per-node {gpus}"
        if gpus and local > gpus:
            error(
                f"{here} with --device {device}: each process needs a GPU of its own (NCCL) "
                f"and this machine has {gpus}; give {fewer} or fewer, or --device cpu"
            )
        if ":" in device:
            error(
                f"{here} with --device {device}: each process takes the GPU of its local rank "
                f"(cuda:0 to cuda:{local - 1}); give --device cuda"
            )
    generated = not any(getattr(args, k, None) for k in ("train", "pairs"))
    n = getattr(args, "n_train", None)
    if processes > 1 and generated and n is not None and n < args.batch_size and n % processes:
        error(  # a batch is at most the whole training set
            f"{who}: --n-train {n} is below --batch-size {args.batch_size}, so "
            f"each batch is all {n} pairs, which must divide by the number of processes"
        )


def _check_data_options(args, error) -> None:
    """One validation set, and no option given that the data would ignore: a count for data
    that uses all its pairs, a --noise (or, for eval, a --seed) where no pair is generated."""
    if sum(bool(v) for v in (args.val, args.val_pairs, args.val_photos)) > 1:
        error("give one validation set: --val, --val-pairs or --val-photos")
    train = [o for o in ("train", "pairs") if getattr(args, o, None)]
    val = [o for o in ("val", "val_pairs") if getattr(args, o, None)]
    given = _given(args) if train or val else set()  # (re-parses the command line)
    if "n_train" in given and train:
        error(
            f"--n-train counts built-in or --photos pairs; {_option(train[0])} trains on all "
            "its pairs"
        )
    if "n_val" in given and val:
        error(
            f"--n-val counts built-in or --val-photos pairs; {_option(val[0])} validates on all "
            "its pairs"
        )
    files_only = val and (train or args.command == "eval")  # every pair read, none generated
    for dest in ("noise", "seed") if args.command == "eval" else ("noise",):
        if files_only and dest in given:
            sources = " and ".join(_option(o) for o in train + val)
            verb = "give" if len(train + val) > 1 else "gives"
            error(f"{_option(dest)} applies to generated pairs; {sources} {verb} all the pairs")


def _say_apart(args) -> None:
    """A note where the validation data is training data: the same file, the same folder, or
    image files of the same bytes in both (its crops then validate on what trained, and the
    validation PSNR says nothing of other images). On rank 0, which reads the data."""
    if _rank() != "0":
        return
    for train, val, subs in (
        ("train", "val", None),
        ("photos", "val_photos", ("",)),
        ("pairs", "val_pairs", ("a", "b")),
    ):
        a, b = getattr(args, train, None), getattr(args, val, None)
        if not (a and b):
            continue
        if Path(a).resolve() == Path(b).resolve():
            what = f"the {'file' if subs is None else 'folder'} of {_option(train)}"
        elif subs is not None and (shared := same_image_files(Path(a), Path(b), subs)):
            shown = ", ".join(f"{x} = {y}" for x, y in shared[:3]) + (" ..." * (len(shared) > 3))
            what = f"{len(shared)} image file(s) of {_option(train)} ({shown})"
        else:
            continue
        print(
            f"note: {_option(val)} holds {what}: its PSNR measures the training data, not other "
            "images (keep some apart to validate)"
        )


def _check_photo_sides(args, error) -> None:
    """``--photos`` / ``--val-photos`` hold a photo as large as the crops that ``--noise``
    cuts from them (only the headers are read; on rank 0, which reads the data)."""
    if _rank() != "0":
        return
    for option in ("photos", "val_photos"):
        folder = getattr(args, option, None)
        if not folder:
            continue
        sides = _crop_sides(args, option)
        side = max(sides)
        if _camera_noise(args):
            why = f"--noise {args.noise} cuts {side} x {side} crops"
        elif _photo_factor(args):
            why = f"--noise {args.noise} cuts {side} x {side} crops (32 x the factor)"
        else:
            listed = ", ".join(str(s // PATCH) for s in sides)
            why = (
                f"plain --noise downsample cuts crops of 32 x factor {listed}; "
                "--noise downsample:FACTOR cuts 32 x FACTOR"
            )
            if args.command == "eval" and "noise" not in _given(args):  # (not the weights')
                why += (
                    f"; eval takes --noise from the command line, not from the weights: for "
                    f"camera noise give it, e.g. --noise gaussian:25 ({PHOTO_CROP} x "
                    f"{PHOTO_CROP} crops)"
                )
        try:
            at.photo_dir(side, why)(str(folder))
        except at.Error as e:
            error(f"{_option(option)}: {e}")


def _check_eval(args, error) -> None:
    _check_data_options(args, error)
    _check_photo_sides(args, error)
    _check_memory(args, error)


def _check_denoise(args, error) -> None:
    if args.output.exists() and args.output.resolve() == args.input.resolve():
        error(f"output {args.output} is the input file; choose another name")
    if (args.output.exists() or args.output.is_symlink()) and not args.overwrite:
        error(f"output {args.output} exists; give --overwrite to replace it")
    _check_writable(args.output.parent, "output", error)


def _check_export(args, error) -> None:
    from ..export import submission_folder

    target = submission_folder(args.out_dir)
    if target.exists() and not target.is_dir():
        error(f"{target} is a file; move it away (the submission is a folder of that name)")
    _check_writable(args.out_dir, "OUT_DIR", error)


def _check_writable(folder: Path, what: str, error) -> None:
    """Stop before any work when nothing can be written in ``folder`` (or, where it does not
    exist yet, in the nearest folder above it, where it would be made): a probe file is
    created and removed, which also catches read-only file systems and /proc."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        error(f"{what}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:  # (/proc answers "No such file or directory" for a folder it has)
        why = "it takes no new files" if e.errno == errno.ENOENT else e.strerror or e
        error(f"{what}: cannot create files in {existing} ({why})")
