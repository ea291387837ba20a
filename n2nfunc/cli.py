"""The n2nfunc command line: train, eval, denoise, export-submission.

Every option is checked before any work starts (see argtypes.py for the per-value checks
and the ``_check_*`` functions below for the ones between options); a bad value gives the
usage line and one ``error:`` line, exit status 2, and nothing is written.
"""

import argparse
import difflib
import errno
import hashlib
import json
import os
import re
import shlex
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import __version__, allocator, checkpoint, hardware, launch, optim, tree
from . import argtypes as at
from .base import is_number
from .data import (
    builtin_pairs,
    check_fits,
    keeps_profile,
    load_folder_pairs,
    load_pair_file,
    load_photos,
    mixed_factor_pairs,
    photo_pairs,
    read_image,
    write_image,
)
from .data.files import exif_refused, list_images, same_image_files
from .data.noise import parse_noise, photo_noise_pairs
from .data.photos import PATCH
from .data.synthetic import to_int16, to_uint8
from .export import before_first_epoch
from .metrics import evaluate
from .model import (
    DEFAULT_CONFIG,
    DEFAULT_WEIGHTS,
    NETWORKS,
    UNET_DEFAULTS,
    Model,
    check_finite,
    checkpoint_network,
    full_config,
)
from .pretrained import NAMES as PRETRAINED_NAMES
from .progress import Progress
from .unet import MAX_WIDTH

TILE_ALIGN = 32  # --tile's multiple (deeper U-Nets than the shipped ask for more: named then)
MIN_TILE = 96  # an overlap of 32 (the exercise network reaches 27) on both sides plus one 32 step
# --threads' ceiling: torch crashes (a segmentation fault) asked for 100,000 threads, and the
# OpenMP runtime fails to start 20,000 on a 2-core machine
MAX_THREADS = 1024
PHOTO_CROP = 64  # crops of `train --photos` with camera noise (Gaussian, Poisson)
PHOTO_FACTORS = (4, 6, 8, 12)  # downsampling factors of `train --photos` (mixed_factor_pairs)
VAL_PHOTO_FACTOR = 8  # the one of `--val-photos`
ALPHA_SUFFIXES = (".png", ".tif", ".tiff", ".webp")  # image files that keep transparency
SHIPPED_NOISE = (
    "aliasing from point-sampled downsampling by 4 to 12 (the course data's kind), "
    "learnt from photos and built-in pairs"
)


# ---------------------------------------------------------------------------- helpers
def _setup(args) -> torch.device:
    count, processes = os.cpu_count(), _local_processes(args)
    if _rank() == "0" and processes > (count or 1):
        print(
            f"note: {processes} processes on this machine's {count or 1} CPUs; they wait for "
            "each other (as many processes as cores at most is faster)",
            file=sys.stderr,
        )
    if args.threads:
        cores = count or args.threads
        if _rank() == "0" and args.threads * processes > cores:
            each = f" in each of {processes} processes" if processes > 1 else ""
            print(
                f"note: --threads {args.threads}{each} is more than this machine's {cores} "
                "CPUs; extra threads wait for each other (the default is one per core)",
                file=sys.stderr,
            )
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    allocator.keep_freed_memory()
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def _local_processes(args, count: str = "LOCAL_WORLD_SIZE") -> int:
    """How many processes of this run share this machine's CPUs: --nproc, or in a worker
    (whose --nproc the launcher removed) torchrun's LOCAL_WORLD_SIZE (``count="WORLD_SIZE"``:
    how many there are in all)."""
    text = os.environ.get(count, "1") if launch.is_worker() else "1"
    return max(1, getattr(args, "nproc", 1), int(text) if text.isdigit() else 1)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _rank() -> str:
    """This process's rank in a data-parallel run ("0" outside one)."""
    return os.environ.get("RANK", "0") if launch.is_worker() else "0"


def _loading(option: str, load, *a, **kw):
    """Run a loader; a ValueError / FileNotFoundError is re-raised naming the option."""
    try:
        return load(*a, **kw)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{option}: {e}") from None


def noise_words(spec: str, source: str = "built-in pairs") -> str:
    """A short description of a noise spec, for people."""
    noise = parse_noise(spec)
    blind = "blind " if noise.low != noise.high else ""
    level = str(noise).partition(":")[2]
    if noise.kind == "gaussian":
        return f"{blind}Gaussian noise, sigma {level} (of 255), {source}"
    if noise.kind == "poisson":
        return f"{blind}Poisson noise, peak {level}, {source}"
    return f"aliasing from point-sampled {level}x downsampling (the course data's kind), {source}"


def _camera_noise(args) -> bool:
    """Whether ``--noise`` is Gaussian or Poisson (else the exercise's downsampling)."""
    return parse_noise(args.noise).kind != "downsample"


def _n_train(args) -> int:
    """``--n-train``, by default 50,000 32x32 patches or as many pixels of 64x64 crops."""
    if args.n_train is not None:
        return args.n_train
    return _n_train_default(args)


def _photo_noise_pairs(photos, n: int, args, split: str):
    """Camera-noise pairs of 64x64 photo crops as the built-in pairs are: the noisy input
    uint8 (clipped and rounded, as a saved photo), the target int16 on the 0-255 scale
    (unclipped) or, to validate, the clean crop uint8. Integers say their scale: as floats on
    the 0-255 scale, the pairs of a dark photo (mean at most 2) were read as 0-1 images."""
    a, b = photo_noise_pairs(photos, n, args.noise, PHOTO_CROP, args.seed, split=split)
    return to_uint8(a), to_uint8(b) if split == "val" else to_int16(b)


def _say(message: str) -> None:
    print(message, flush=True)


def _say_if_identical(noisy, clean) -> None:
    """A note when the validation set's noisy images equal its clean ones (its PSNR is then
    the 200 dB cap, and the gain meaningless)."""
    if torch.equal(noisy, clean):
        print(
            "note: the noisy validation images equal the clean ones: nothing to denoise "
            "(check the data)"
        )


def _builtin(args, n: int, split: str):
    return builtin_pairs(n, split, args.noise, args.seed, announce=_say)


def _photo_factor(args) -> int | None:
    """The factor of ``--noise downsample:FACTOR``; None for plain ``downsample`` (photo pairs
    then take their own: mixed factors to train, VAL_PHOTO_FACTOR to validate)."""
    return int(parse_noise(args.noise).low) if args.noise != "downsample" else None


def _crop_sides(args, option: str) -> tuple:
    """The sides of the crops that ``--noise`` cuts from the photos of ``option`` ("photos"
    or "val_photos"): PHOTO_CROP for camera noise, else PATCH x each downsampling factor
    (plain ``downsample``: PHOTO_FACTORS to train, VAL_PHOTO_FACTOR to validate)."""
    if _camera_noise(args):
        return (PHOTO_CROP,)
    factor = _photo_factor(args)
    own = PHOTO_FACTORS if option == "photos" else (VAL_PHOTO_FACTOR,)
    return tuple(PATCH * f for f in ((factor,) if factor else own))


def _validation_data(args):
    """(noisy, clean, description) of the validation options shared by train and eval."""
    if getattr(args, "val", None):
        xv, yv = _loading("--val", load_pair_file, args.val)
        return xv, yv, f"course file {args.val}"
    if args.val_pairs:
        xv, yv = _loading("--val-pairs", load_folder_pairs, args.val_pairs, announce=_say)
        return xv, yv, f"image pairs in {args.val_pairs}"
    if args.val_photos:
        crop = min(_crop_sides(args, "val_photos"))
        photos = _loading("--val-photos", load_photos, args.val_photos, crop, _say)
        if _camera_noise(args):
            xv, yv = _loading("--val-photos", _photo_noise_pairs, photos, args.n_val, args, "val")
            return xv, yv, f"{args.n_val} crops of the photos in {args.val_photos}, {args.noise}"
        factor = crop // PATCH
        xv, yv = _loading(
            "--val-photos",
            photo_pairs,
            photos,
            args.n_val,
            "val",
            args.seed,
            factor=factor,
            scales=(1,),
        )
        return xv, yv, f"{args.n_val} patches of the photos in {args.val_photos} (factor {factor})"
    xv, yv = _builtin(args, args.n_val, "val")
    return xv, yv, f"{args.n_val} built-in validation pairs, noise {args.noise}"


def _training_data(args):
    """(train_a, train_b, description, noise description) from the command-line options."""
    if args.train:
        xt, yt = _loading("--train", load_pair_file, args.train)
        return xt, yt, f"course file {args.train}", f"the noise of the course file {args.train}"
    if args.pairs:
        xt, yt = _loading("--pairs", load_folder_pairs, args.pairs, announce=_say)
        return (
            xt,
            yt,
            f"image pairs in {args.pairs}",
            f"the noise of the image pairs in {args.pairs}",
        )
    n = _n_train(args)
    if args.photos:
        photos = _loading(
            "--photos", load_photos, args.photos, min(_crop_sides(args, "photos")), _say
        )
        desc = f"cut from the photos in {args.photos}"
        if _camera_noise(args):
            xt, yt = _loading("--photos", _photo_noise_pairs, photos, n, args, "train")
            return xt, yt, desc, noise_words(args.noise, f"photos in {args.photos}")
        factor = _photo_factor(args)
        if factor:  # one factor asked for
            xt, yt = _loading("--photos", photo_pairs, photos, n, "train", args.seed, factor=factor)
            return xt, yt, desc, noise_words(args.noise, f"photos in {args.photos}")
        xt, yt = _loading(
            "--photos", mixed_factor_pairs, photos, n, "train", args.seed, PHOTO_FACTORS
        )
        return (
            xt,
            yt,
            desc,
            "aliasing from point-sampled downsampling by "
            f"{', '.join(map(str, PHOTO_FACTORS))} of the photos in {args.photos}",
        )
    xt, yt = _builtin(args, n, "train")
    return xt, yt, f"built-in, noise {args.noise}", noise_words(args.noise)


def _config(args) -> dict:
    cfg = {k: getattr(args, k) for k in ("batch_size", "optimizer", "momentum", "kernel")}
    cfg.update(upsampling=args.upsampling, seed=args.seed, network=args.network)
    if args.widths is not None:
        cfg["widths"] = tuple(args.widths)
    if args.lr is not None:
        cfg["lr"] = args.lr
    cfg["num_epochs"] = args.epochs
    cfg["precision"] = args.precision
    if args.no_augment:
        cfg["augment"] = False
    return cfg


# The options that choose a run's data: saved in its checkpoint.pth, so that --resume reads the
# same pairs (and the same validation set) again. Paths are kept resolved.
DATA_OPTIONS = (
    "train", "val", "pairs", "photos", "n_train", "val_pairs", "val_photos", "n_val", "noise",
)  # fmt: skip
PATH_OPTIONS = {"train", "val", "pairs", "photos", "val_pairs", "val_photos"}
# The options the run's own config decides on --resume: option dest -> config key.
RUN_OPTIONS = {
    "network": "network", "epochs": "num_epochs", "batch_size": "batch_size",
    "optimizer": "optimizer", "lr": "lr", "momentum": "momentum", "widths": "widths",
    "kernel": "kernel", "no_augment": "augment", "upsampling": "upsampling",
    "precision": "precision", "seed": "seed",
}  # fmt: skip


def _given(args) -> set:
    """The dests of the options this command line sets itself (not left to their defaults)."""
    unset = object()
    tokens = args.argv[args.argv.index(args.command) + 1 :]
    seen = argparse.Namespace(**{a.dest: unset for a in args.parser._actions})
    args.parser.parse_args(tokens, namespace=seen)  # already checked once: cannot fail
    return {dest for dest, value in vars(seen).items() if value is not unset}


def _data_options(args) -> dict:
    """The data options of a run, as saved in its checkpoint (paths resolved, the number of
    training pairs as used), and for each image folder a digest of the files it holds."""
    data = {}
    for k in DATA_OPTIONS:
        v = getattr(args, k)
        data[k] = str(Path(v).resolve()) if k in PATH_OPTIONS and v is not None else v
    if not (args.train or args.pairs):
        data["n_train"] = _n_train(args)
    for k in FOLDER_OPTIONS:
        folder = getattr(args, k)
        if folder is not None and Path(folder).is_dir():  # (not on a machine without it)
            data[k + "_files"] = _folder_digest(Path(folder), k)
    return data


# The data options that name folders of images; --resume checks that they hold the same files.
FOLDER_OPTIONS = ("pairs", "photos", "val_pairs", "val_photos")


def _folder_digest(folder: Path, dest: str) -> str:
    """A digest of the image files a data folder holds (names and sizes; ``a/`` and ``b/`` of
    a pair folder): a run resumed on a folder that changed would not read the same pairs."""
    subs = ("a", "b") if dest in ("pairs", "val_pairs") else ("",)
    lines = [
        f"{sub}/{p.name}\t{p.stat().st_size}"
        for sub in subs
        if (folder / sub).is_dir()
        for p in list_images(folder / sub, every_name=True)  # (the digests of earlier runs)
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _same_data(dest: str, mine, saved) -> bool:
    """Whether a data option given with --resume names what the run read."""
    if mine == saved:
        return True
    if dest == "noise" and "downsample" not in (mine, saved):  # bare "downsample" is its own
        return parse_noise(mine) == parse_noise(saved)
    return False


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _resume_options(args, state: dict, say: bool = True, lead: bool = True) -> None:
    """Make ``args`` describe the run being resumed: its data options come from the checkpoint
    (a resumed run reads the same pairs), and an option given on this command line that
    disagrees with the run's data or settings is refused, not silently ignored."""
    given, path = _given(args), args.resume
    config, cmd = state["config"], _config(args)
    stray = sorted({"kernel", "upsampling"} & given) if config.get("network") == "unet" else []
    if stray:  # (its config holds the exercise's defaults for them, which mean nothing)
        raise ValueError(
            f"--resume continues the U-Net run of {path}: {_option(stray[0])} does not apply "
            "to --network unet (3x3 convolutions, nearest x2 upsampling)"
        )
    for dest, key in RUN_OPTIONS.items():
        mine, theirs = (
            launch.plain(cmd.get(key, DEFAULT_CONFIG.get(key))),
            launch.plain(config.get(key)),
        )
        if dest in given and key in config and mine != theirs:
            if dest == "no_augment":
                option = "--no-augment"
                own = "the run, which augments its pairs" if theirs else "the run"
            else:
                option, own = f"{_option(dest)} {_shown(mine)}", f"its {_shown(theirs)}"
            raise ValueError(
                f"--resume continues the run of {path} with its own settings: {option} differs "
                f"from {own} (to change it, start a new run without --resume)"
            )
    args.seed = config.get("seed", args.seed)  # the seed of its data too
    args.batch_size = config.get("batch_size", args.batch_size)
    args.precision = config.get("precision", args.precision)
    saved = state.get("data")
    _say_other_processes(args, saved, say)
    if saved is None:  # written before checkpoints recorded their data
        if say:
            print(f"note: {path} does not record its training data; using this command line's")
        return
    mine = _data_options(args)
    for dest in DATA_OPTIONS:
        value = saved.get(dest)
        if dest in given and not _same_data(dest, mine[dest], value):
            moved = dest in PATH_OPTIONS and value is not None and not Path(value).exists()
            if not moved:  # a folder that moved may be given at its new place
                raise ValueError(
                    f"--resume continues the run of {path}, which trained with "
                    f"{_shown_data(dest, value)}; drop {_option(dest)} "
                    f"{_shown(getattr(args, dest))} or start a new run without --resume"
                )
            continue
        setattr(args, dest, Path(value) if dest in PATH_OPTIONS and value is not None else value)
    for dest in FOLDER_OPTIONS:  # (rank 0 alone reads the data: another machine's copy is not)
        folder, digest = getattr(args, dest), saved.get(dest + "_files")
        if lead and digest is not None and folder is not None and Path(folder).is_dir():
            if _folder_digest(Path(folder), dest) != digest:
                raise ValueError(
                    f"--resume continues the run of {path}, but the images in {_option(dest)} "
                    f"{folder} are not those it started with (files added, removed or "
                    "changed), so it would not read the same pairs: put them back, or start a "
                    "new run without --resume"
                )


def _say_other_processes(args, saved, say: bool) -> None:
    """A note where a run resumes on another number of processes than it trained on: it goes
    on training the same network, but its sums round otherwise than an uninterrupted run's."""
    before = saved.get("processes") if isinstance(saved, dict) else None
    if not say or before is None or (launch.is_worker() and launch.launcher_pid() is not None):
        return  # (--nproc's workers: their launcher said it)
    now = _local_processes(args, "WORLD_SIZE")
    if now != before:
        print(
            f"note: {args.resume} trained on {before} process{'es' * (before > 1)}, this run on "
            f"{now}: it goes on, but not bit for bit as an uninterrupted run (give --nproc "
            f"{before} for that)"
        )


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return shown(" ".join(map(str, value)))
    return shown(str(value))


def _shown_data(dest: str, value) -> str:
    return f"no {_option(dest)}" if value is None else f"{_option(dest)} {_shown(value)}"


def _load_state(path) -> dict:
    """A training state written by `train` (checkpoint.pth), checked for its parts."""
    state = _loading("--resume", checkpoint.load, path)
    missing = [k for k in ("config", "params", "optimizer", "epoch", "rng") if k not in state]
    if missing:
        hint = (
            " (it holds weights only: resume from a run's checkpoint.pth)"
            if ("params" in state)
            else ""
        )
        raise ValueError(f"--resume: {path} is not a training state{hint}")
    _check_state_parts(state, path)
    return state


def _is_count(value, least: int = 0) -> bool:
    return type(value) is int and value >= least


def _check_state_parts(state: dict, path) -> None:
    """Refuse a training state whose parts are of the wrong kind (a hand-edited file, or one of
    another tool) in one line naming the part, before any of it is used."""
    config, data = state["config"], state.get("data", {})
    parts = {
        "epoch": (_is_count(state["epoch"]), "a count of epochs"),
        "config": (
            isinstance(config, dict) and _is_count(config.get("num_epochs", 1), 1),
            "a dict whose num_epochs is a positive int",
        ),
        "rng": (
            isinstance(state["rng"], torch.Tensor)
            and state["rng"].dtype == torch.uint8
            and state["rng"].dim() == 1,
            "a random generator's state (a 1-d uint8 tensor)",
        ),
        "history": (
            isinstance(state.get("history", []), list)
            and all(
                isinstance(h, dict) and all(is_number(v) for v in h.values())
                for h in state.get("history", [])
            ),
            "a list of per-epoch dicts of numbers",
        ),
        "noise": (isinstance(state.get("noise", ""), str), "a noise spec"),
        "data": (
            isinstance(data, dict)
            and all(
                data.get(k) is None
                or (
                    _is_count(data[k], 1)
                    if k in ("n_train", "n_val")
                    else isinstance(data[k], str) and data[k].isprintable()  # (a path, printed)
                )
                for k in DATA_OPTIONS
            )
            and all(isinstance(data.get(k + "_files", ""), str) for k in FOLDER_OPTIONS)
            and _is_count(data.get("processes", 1), 1),
            "a dict of the run's data options",
        ),
    }
    for part, (ok, want) in parts.items():
        if not ok:
            got = repr(state.get(part))
            got = got if len(got) <= 60 else got[:57] + "..."
            raise ValueError(f"--resume: {path}: its {part!r} must be {want}, got {got}")
    try:  # before the data is made from its seed
        full_config(_run_config(config))
    except ValueError as e:
        raise ValueError(f"--resume: {path}: its config: {e}") from None


def _run_config(config) -> dict:
    """A checkpoint's config, less entries this version's Model does not know."""
    return {k: v for k, v in (config or {}).items() if k in DEFAULT_CONFIG}


def _finished_run(args, state: dict, epochs: int) -> None:
    """``--resume`` of a run that has trained all its epochs: nothing to train; the weights
    and history it would have written at its end are written into ``--out`` where they are
    missing or, in the run's own folder, an earlier run's (a full disk or Ctrl-C cut that end
    short; that run's pictures are removed then), never into a folder that holds other files
    of a run's names (its pictures need the data: ``eval --checkpoint`` shows them)."""
    out = Path(args.out)
    weights, history = out / "model.pth", out / "history.json"
    done = f"{args.resume}: this run has finished its {_count(epochs, 'epoch')}"
    ours = checkpoint.holds_params(weights, state)  # (read once: model.pth may be large)
    history_ours = launch.history_written(out, state)
    if ours and history_ours:
        print(
            f"{done}; nothing to train; its weights: {weights} (to train on from them, start "
            f"a new run: n2nfunc train --init {_quoted(weights)} --out NEW_FOLDER ...)"
        )
        return
    own = (out / "checkpoint.pth").resolve() == Path(args.resume).resolve()
    others = [name for name in _run_files_in(out) if not (ours and name == "model.pth")]
    if not own and others:
        print(
            f"{done}; nothing to train; {out} holds other files ({', '.join(others)}), so its "
            f"weights are in {args.resume} (`n2nfunc eval --checkpoint "
            f"{_quoted(args.resume)}`; to train on from them: n2nfunc train --init "
            f"{_quoted(args.resume)} --out NEW_FOLDER ...)"
        )
        return
    out.mkdir(parents=True, exist_ok=True)
    _lock_folder(out)  # no run is writing there meanwhile
    written = []
    if not ours:  # missing, or an earlier run's that this one replaces in its own folder
        model = Model(_run_config(state["config"]))
        _loading("--resume", _resume, model, state, args.resume)
        noise = state.get("noise")
        checkpoint.save(weights, _weights_payload(model, _origin(args, state), noise))
        written.append(f"its weights {weights}")
    if not history_ours or not history.is_file():  # (a checkpoint without one: [] if none)
        history.write_text(json.dumps(state.get("history", []), indent=1))
        written.append(f"its history {history}")
    print(f"{done}; nothing to train; written now: {', '.join(written)}")
    _drop_stale_pictures(out, [])  # (an earlier run's: this run's come after its results)


def _weights_payload(model: Model, origin: dict, noise) -> dict:
    """What a run's model.pth holds: the Model's payload, where its weights came from, and
    its training noise (in a U-Net's info too, which load_network returns)."""
    payload = {**model.payload(), **origin}
    if noise is not None:
        payload["noise"] = noise
        if isinstance(payload.get("info"), dict):
            payload["info"] = {**payload["info"], "noise": noise}
    return payload


def _quoted(path) -> str:
    """A path as a shell command line takes it (quoted where it holds spaces, ...)."""
    return shlex.quote(str(path))


def _origin(args, state: dict | None) -> dict:
    """``{"init": {"from", "sha256"}}``: the weights a run started from (``--init``), which its
    checkpoints and weights record, a resumed run as its first part did; else ``{}``."""
    if state is not None:
        init = state.get("init")
        return {"init": init} if isinstance(init, dict) else {}
    if args.init is None:
        return {}
    digest = args.init_sha256  # (hashed by _check_init)
    named = args.init_given in PRETRAINED_NAMES and args.init_given != str(args.init)
    source = args.init_given if named else str(Path(args.init).resolve())
    return {"init": {"from": source, "sha256": digest}}


def _resume(model: Model, state: dict, path) -> None:
    model.load_payload(state, str(path))
    model.pretrained = False  # resuming continues the same run's schedule
    fresh = model.optimizer.state
    optim.check_state(state["optimizer"], fresh, f"{path}: the optimizer's state")
    check_finite(state["optimizer"], f"{path}: the optimizer's state")  # a diverged Adam moment
    for key in ("v", "v_max"):  # Adam's second moments: averages of squares
        for where, t in tree.flatten(state["optimizer"].get(key, {})):
            if bool((t < 0).any()):
                raise ValueError(
                    f"{path}: the optimizer's state '{key}' '{where}' holds negative values (a "
                    "mean of squared gradients cannot be negative: the file was altered)"
                )
    model.optimizer.state = state["optimizer"]
    try:
        model.generator.set_state(state["rng"])
    except RuntimeError as e:  # a state of another length or kind of generator
        raise ValueError(f"{path}: its 'rng' is not a state of this generator ({e})") from None


def _save_state(
    model: Model, path, epoch: int, history: list, noise: str, data: dict, origin: dict
) -> None:
    checkpoint.save(
        path,
        {
            **model.payload(),
            **origin,
            "noise": noise,
            "data": data,
            "optimizer": model.optimizer.state,
            "epoch": epoch,
            "rng": model.generator.get_state(),
            "history": history,
        },
    )


# ---------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    if args.resume:  # before --nproc's workers start: a refusal is a usage error (exit 2)
        rank = _rank()
        state = _load_state(args.resume)
        epochs = launch.planned_epochs(state)
        finished = state["epoch"] >= epochs  # (its folders are not read again: not checked)
        _resume_options(args, state, say=rank == "0", lead=rank == "0" and not finished)
        _check_memory(args, _refuse)  # the run's own --n-train, here
        if finished:  # before any data is read (and nothing computed)
            if rank == "0":
                _finished_run(args, state, epochs)
            return 0
        _check_precision(args, _refuse)  # the run's precision and batch size, here
        _check_nproc(args, _refuse)
        _check_foreign_files(Path(args.out), _refuse)
    if launch.is_worker():  # one of --nproc's processes, or of a torchrun on several machines
        if args.nproc > 1 and launch.launcher_pid() is None:  # not one of --nproc's own
            raise ValueError(
                f"--nproc {args.nproc}: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are set "
                f"(WORLD_SIZE={os.environ.get('WORLD_SIZE', '?')}), so this process is a worker "
                "of torchrun's: under torchrun give no --nproc (its --nproc-per-node says how "
                "many); left over in a shell, unset them for --nproc to start its own workers"
            )
        return launch.train_worker(args, _setup(args), run_training)
    if args.nproc > 1:
        return launch.spawn(args, args.argv)
    return run_training(args, _setup(args))


# Lock files a command holds, (open file, path, the folders the command made for it, innermost
# first): removed and unlocked when it returns (main), with those folders where left empty.
_LOCKS: list = []
LOCK_NAME = ".n2nfunc-train.lock"


def _lock_folder(out: Path, made: tuple = ()) -> None:
    """Refuse a second `train` writing into ``out`` at the same time (each would overwrite the
    other's checkpoint): an exclusive ``flock`` on a file there, which the system lifts when
    the process ends, however it ends; the file is removed when the command returns. Where
    there is no ``flock`` (Windows), nothing."""
    try:
        import fcntl
    except ImportError:
        return
    path = out / LOCK_NAME
    while True:
        f = open(path, "a+")  # noqa: SIM115 -- held open until the command returns
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            by = f" (process {holder})" if holder.isdigit() else ""
            raise ValueError(
                f"--out {out}: another n2nfunc train{by} is writing into this folder; wait for "
                "it to end or give another --out"
            ) from None
        except OSError:  # a file system without locks (some network mounts): no lock
            f.close()
            return
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break  # (else its holder removed it meanwhile: lock the new one)
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _LOCKS.append((f, path, made))


def _unlock_all() -> None:
    while _LOCKS:
        f, path, made = _LOCKS.pop()
        try:
            path.unlink()  # while still locked: a waiting run then locks a file of its own
            for folder in made:  # a run refused before it wrote anything leaves no folder
                folder.rmdir()
        except OSError:  # (not empty: rmdir refuses)
            pass
        f.close()


def _note_unfinished_run(state_path: Path) -> None:
    """Say so when a new run replaces an unfinished one's checkpoint (Ctrl-C has just said to
    resume it; a plain re-run would lose its epochs without a word)."""
    if not state_path.is_file():
        return
    try:
        old = checkpoint.load(state_path)
        done, total = old["epoch"], old["config"]["num_epochs"]
    except (ValueError, KeyError, TypeError, OSError):
        return
    if done < total:
        print(
            f"note: {state_path} held an unfinished run (epoch {done} of {total}), which this "
            f"new run replaces (`--resume {_quoted(state_path)}` continues a run)"
        )
    else:  # its weights, history and pictures stay until this run writes its own
        print(
            f"note: {state_path.parent} held a finished run, whose files this new run replaces "
            "as it writes its own (give another --out to keep them)"
        )


def _refuse(message: str):
    raise ValueError(message)


def run_training(args, device, dp=None) -> int:
    """The training run of `train`. With ``dp`` (:mod:`n2nfunc.distributed`) it is one rank of
    a data-parallel run: rank 0 alone reads the data (the others receive it), evaluates and
    writes files; every rank trains on its slice of each global batch."""
    lead = dp is None or dp.rank == 0
    state = _load_state(args.resume) if args.resume else None  # args already agree with it
    data = {**_data_options(args), "processes": 1 if dp is None else dp.size}
    xt: Any = None  # rank 0 reads the data; the other ranks receive it
    yt: Any = None
    xv: Any = None
    yv: Any = None
    desc = noise = val_desc = ""
    if state is not None:  # the weights and state checked before the data is made
        model = Model(_run_config(state["config"]))
        _loading("--resume", _resume, model, state, args.resume)
        start, history = state["epoch"], list(state.get("history", []))
    else:
        model = Model(_config(args))
        if args.init is not None:  # its network and weights, a new optimizer
            _loading("--init", model.load_payload, args.init_payload, str(args.init))
            model.pretrained = False  # --lr as given, or as the config records it (resumes)
            if args.lr is None:  # fine-tuning: a tenth of the default peak, as Model's
                model.config["lr"] *= model.config["finetune_lr_scale"]  # (at 1e-3 a short
            _say_init_notes(args, model)  # run made a shipped U-Net 2 dB worse)
        _say_apart(args)
        start, history = 0, []
    if lead:  # a run writing there is refused before the data, which may take minutes to make
        folder = Path(args.out).absolute()  # (folders made for it removed if left empty)
        made = tuple(p for p in (folder, *folder.parents) if not p.exists())
        folder.mkdir(parents=True, exist_ok=True)
        _lock_folder(folder, made)
        xt, yt, desc, noise = _training_data(args)
        xv, yv, val_desc = _validation_data(args)
    if dp is not None:
        if lead:
            dp.done("data")
        dp.wait("data")  # rank 0 may take minutes to generate the data
        xt, yt = dp.broadcast([xt, yt] if lead else [])
    origin = _origin(args, state)
    if state is not None:
        if lead and "data" not in state and state.get("noise", noise) != noise:
            raise ValueError(  # an old checkpoint, which does not record its data options
                f"--resume: {args.resume} was trained on {shown(state['noise'])}; this command "
                f"line reads {noise}: give the run's own data options"
            )
        noise = state.get("noise", noise)
    epochs = model.config["num_epochs"]
    x, y = _loading("training data", model.prepare_pairs, xt.to(device), yt.to(device))
    out = Path(args.out)
    state_path, weights_path = out / "checkpoint.pth", out / "model.pth"
    bs = min(model.config["batch_size"], x.shape[0])
    if dp is not None and bs % dp.size:  # a batch is at most the whole training set
        if not lead:  # (under --nproc the launcher says rank 0's error, once)
            if launch.launcher_pid() is None:
                print(
                    "error: rank 0 refused to train (the batch size; it says why)", file=sys.stderr
                )
            return 2
        raise ValueError(
            f"the training data holds {x.shape[0]} pairs, fewer than --batch-size "
            f"{model.config['batch_size']}: each batch is all {bs} pairs, which must divide by "
            f"the {dp.size} processes"
        )
    per_epoch = (x.shape[0] // bs) * bs
    if not lead:
        for epoch in range(start, epochs):
            model.train_epoch(x, y, epoch, epochs, parallel=dp)
            dp.wait(f"epoch-{epoch + 1}")  # rank 0 evaluates and saves meanwhile
        return 0
    xv, yv = xv.to(device), yv.to(device)
    processes = (
        "" if dp is None or dp.size == 1 else f" ({bs // dp.size} in each of {dp.size} processes)"
    )
    if state is None or Path(args.resume).resolve() != state_path.resolve():
        _note_unfinished_run(state_path)
    resuming = f" (resuming at epoch {start + 1})" if state is not None else ""
    print(
        f"training on {_count(x.shape[0], 'pair')} ({desc}), {_count(epochs, 'epoch')}{resuming}, "
        f"batch {bs}{processes}, "
        f"{_count(torch.get_num_threads(), 'thread')}, device {device}, "
        f"{model.config['precision']}"
    )
    print(f"validating on {val_desc}")
    if state is None and args.init is not None:
        print(f"starting from the weights in {args.init}")
    own_val = args.val or args.val_pairs or args.val_photos
    if args.photos and not own_val and (_camera_noise(args) or model.config["network"] == "unet"):
        print(
            "note: the built-in 32x32 validation pairs are not photographs: a network that "
            "denoises photos well may score a negative gain on them; --val-photos DIR "
            "(photos kept out of training) measures what it learns"
        )
    _say_if_identical(xv, yv)
    print(f"network: {model.net!r}".replace("\n", "\n  "))
    on_mkl = torch.device(device).type == "cpu" and model.config["precision"] == "float32"
    slow_gemm = hardware.mkl_problem() if on_mkl else None  # bfloat16 matmuls: oneDNN's
    if slow_gemm:
        print(f"note: {slow_gemm}")
    progress = Progress(max(epochs - start, 0) * per_epoch, epochs, quiet=args.quiet)

    def on_step(epoch, step, steps, loss):
        progress.step(epoch, bs, step, steps, loss)

    epoch = start
    # the state at the start of every epoch is on disk: this one now, the next ones as each
    # epoch ends, so that Ctrl-C inside an epoch resumes from its start, bit for bit
    _save_state(model, state_path, start, history, noise, data, origin)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            loss = model.train_epoch(x, y, epoch, epochs, on_step, parallel=dp)
            seconds = time.perf_counter() - t0
            scores = evaluate(model, xv, yv)
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": loss,
                    "val_psnr": scores["denoised_psnr"],
                    "noisy_psnr": scores["noisy_psnr"],
                    "seconds": seconds,
                }
            )
            progress.epoch_end(
                f"epoch {epoch + 1}/{epochs}: loss {loss:.5f}, validation PSNR "
                f"{scores['denoised_psnr']:.2f} dB (noisy {scores['noisy_psnr']:.2f} dB, "
                f"gain {scores['gain']:+.2f} dB), {per_epoch / seconds:.0f} images/s"
            )
            _save_state(model, state_path, epoch + 1, history, noise, data, origin)
            if dp is not None:
                dp.done(f"epoch-{epoch + 1}")
    except FloatingPointError as e:  # the model is not saved after it
        progress.close()
        raise FloatingPointError(
            f"{e} {state_path} holds the state from the start of epoch {epoch + 1} (resumed with "
            "the same settings, it takes the same steps again: start a new run, with another "
            "--lr, say)."
        ) from None
    except KeyboardInterrupt as e:
        progress.close()
        if dp is not None:  # the workers stop together; the last epoch's checkpoint stays
            raise
        print(  # (not the state of now, which is partway through the epoch's batches)
            f"\ninterrupted in epoch {epoch + 1}; {state_path} holds the state from its start; "
            f"continue with `{launch.resume_command(state_path, args)}`"
        )
        return _stopped_code(e)
    progress.close()
    try:
        checkpoint.save(weights_path, _weights_payload(model, origin, noise))
        (out / "history.json").write_text(json.dumps(history, indent=1))
    except KeyboardInterrupt as e:
        if dp is not None:  # rank 0 of several says it (launch)
            raise
        print("\n" + launch.finished_text(state_path, args))
        return _stopped_code(e)
    print(f"weights: {weights_path}\nresume state: {state_path}\nhistory: {out / 'history.json'}")
    pictures = []
    if not args.no_pictures:
        from .viz import plot_curves, sample_grid

        curves = plot_curves(history, out / "curves.png")
        grid = sample_grid(xv[:8], model.predict(xv[:8]), yv[:8], out / "samples.png")
        pictures = [p for p in (curves, grid) if p]
        for p in pictures:
            print(f"picture: {p}")
    _drop_stale_pictures(out, pictures)
    print(
        "use these weights:\n"
        f"  n2nfunc denoise photo.png denoised.png --checkpoint {_quoted(weights_path)}\n"
        f"  n2nfunc eval --checkpoint {_quoted(weights_path)}"
    )
    return 0


def _drop_stale_pictures(out: Path, written: list) -> None:
    """Remove the pictures an earlier run left in ``out`` that this one did not write
    (``--no-pictures``, or no matplotlib): the folder then shows one run, not this run's
    weights beside another's curves and samples."""
    for name in RUN_PICTURES:
        path = out / name
        if path not in written and path.is_file():
            path.unlink()
            print(f"removed {path}: an earlier run's picture")


# ---------------------------------------------------------------------------- eval, denoise
def _network_payload(option: str, path: Path) -> dict:
    """The checkpoint tree of a network weights file (a Model's or a U-Net's); a note where it
    is a run's state from before its first epoch finished (the weights it started from)."""
    payload = _loading(option, checkpoint.load, path)
    if before_first_epoch(payload):
        print(
            f"note: {option} {path} is the state of a run stopped in its first epoch: it holds "
            "the weights the run started from, untrained"
        )
    unet = isinstance(payload, dict) and payload.get("network") == "unet"
    model = isinstance(payload, dict) and isinstance(payload.get("config"), dict)
    if not (unet or (model and "params" in payload)):
        raise ValueError(
            f"{option}: {path} holds no network weights (not a checkpoint written by n2nfunc "
            "train or Model.save)"
        )
    _loading(option, checkpoint_network, payload, str(path))  # its form, architecture and
    return payload  # shapes (on the meta device), before any network is built from it


def _mixed_noise_words(specs: list) -> str:
    """Words for the noises a run mixed (a U-Net recipe's list of specs), each said once."""
    try:
        parsed = [parse_noise(str(spec)) for spec in specs]
    except ValueError:
        return ", ".join(dict.fromkeys(map(str, specs)))
    factors = sorted({int(p.low) for p in parsed if p.kind == "downsample"})
    parts = [str(s) for s, p in zip(specs, parsed) if p.kind != "downsample"]
    if factors:
        by = ", ".join(map(str, factors))
        parts.insert(0, f"aliasing from point-sampled downsampling by {by}")
    return ", ".join(dict.fromkeys(parts))


def _recorded_noise(payload: dict, path: Path) -> str:
    """The training noise a weights file records, in words (as :func:`shown`)."""
    info = payload.get("info")
    noise = payload.get("noise", info.get("noise") if isinstance(info, dict) else None)
    if isinstance(noise, list):
        noise = _mixed_noise_words(noise)
    if isinstance(noise, str):
        return shown(noise)
    return SHIPPED_NOISE if path.resolve() == DEFAULT_WEIGHTS else "not recorded"


def shown(text: str, limit: int = 160) -> str:
    """A file's text as printed: control characters escaped (a crafted file's terminal
    escapes or forged lines are shown, not obeyed) and at most ``limit`` characters."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def _load_model(path, device, precision: str = "float32") -> tuple[Model, str]:
    """The Model in a weights file (default: the shipped one) and its training noise."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    payload = _network_payload("--checkpoint", path)
    config = _run_config(payload.get("config"))
    config["precision"] = precision  # how to compute now, not how the weights were trained
    model = _loading("--checkpoint", Model, config)
    _loading("--checkpoint", model.load_payload, payload, str(path))
    model._move_to(device)
    return model, _recorded_noise(payload, path)


def _say_init_notes(args, model: Model) -> None:
    """What ``--init`` changes that a user may not expect: the learning rate it fine-tunes
    at, and a training noise of another kind than the weights'."""
    if _rank() != "0":
        return
    if args.lr is None:
        print(
            f"note: --init without --lr fine-tunes at a peak learning rate of "
            f"{model.config['lr']:g}, a tenth of a new run's (give --lr to choose)"
        )
    recorded = _recorded_noise(args.init_payload, Path(args.init))
    example = _noise_example(recorded)
    if "not recorded" in recorded or "noise" in _given(args) or args.train or args.pairs:
        return  # (pairs from files: no noise is made for them)
    try:  # the weights' own spec, where they record one
        example = str(parse_noise(recorded)) if example else example
    except ValueError:
        pass
    if bool(example) != _camera_noise(args):
        print(
            f"note: the --init weights were trained on {recorded}; this run trains on the "
            f"default --noise {args.noise}: give --noise to keep their kind"
            + (f" (e.g. --noise {example})" if example else "")
        )


def _say_other_noise(args, recorded: str) -> None:
    """A note when the weights were trained on camera noise and eval generates aliasing by
    default, or the other way round (a --noise given on purpose gets none)."""
    if args.val or args.val_pairs or "not recorded" in recorded or "noise" in _given(args):
        return
    example = _noise_example(recorded)
    if bool(example) != _camera_noise(args):
        print(
            f"note: the weights' noise is {recorded}; the validation pairs have the default "
            f"--noise {args.noise}: give --noise to judge them on their own kind"
            + (f" (e.g. --noise {example})" if example else "")
        )


def _noise_example(recorded: str) -> str:
    """A --noise of the camera kind the weights were trained on ('' for aliasing)."""
    kinds = [k for k in ("gaussian", "poisson") if k in recorded.lower()]
    return {"gaussian": "gaussian:25", "poisson": "poisson:30"}[kinds[0]] if kinds else ""


def cmd_eval(args) -> int:
    from .pretrained import shipped_weights

    device = _setup(args)
    path = args.checkpoint or DEFAULT_WEIGHTS
    if args.model is not None:
        path = _loading("--model", shipped_weights, args.model)
    model, noise = _load_model(path, device, args.precision)
    xv, yv, desc = _validation_data(args)
    _say_if_identical(xv, yv)
    on_builtin = "built-in" in noise  # (a U-Net trained on the built-in pairs themselves)
    if model.config["network"] == "unet" and not (
        args.val or args.val_pairs or args.val_photos or on_builtin
    ):
        example = _noise_example(noise) if "noise" not in _given(args) else ""
        noise_option = f" --noise {example}" if example else ""
        print(  # (a --noise for the built-in pairs would not help: 32x32 is too small)
            "note: a U-Net learns from photographs; the built-in 32x32 pairs are not what it "
            f"was trained on, so judge it on --val-photos DIR{noise_option} (or --val-pairs DIR)"
        )
    elif args.val and _noise_example(noise):  # the course's file: aliasing, 32x32
        print(
            f"note: --val holds the course's pairs (aliasing noise); these weights learned "
            f"{noise}: judge them on --val-photos DIR --noise {_noise_example(noise)}"
        )
    else:
        _say_other_noise(args, noise)
    s = evaluate(model, xv.to(device), yv.to(device))
    print(
        f"weights: {path} (noise: {noise})\ndata: {desc}\n"
        f"noisy input PSNR: {s['noisy_psnr']:.2f} dB\n"
        f"denoised PSNR:    {s['denoised_psnr']:.2f} dB\n"
        f"gain:             {s['gain']:+.2f} dB"
    )
    return 0


def _denoiser(args, device):
    """The network of ``--model`` or ``--checkpoint`` as a function of a uint8 (3, H, W) image
    (tiled by :func:`n2nfunc.denoise_image`, any size), and a line saying which weights."""
    from .precision import mixed_precision
    from .pretrained import network_from_payload, shipped_weights
    from .tiling import denoise_image, least_tile, round_up, tile_settings

    if args.model is not None:
        option, path = "--model", _loading("--model", shipped_weights, args.model)
    else:
        option, path = "--checkpoint", Path(args.checkpoint or DEFAULT_WEIGHTS)
    payload = _network_payload(option, path)  # (refuses a U-Net that is not RGB to RGB)
    layer, params, _ = _loading(option, network_from_payload, payload, str(path))
    if args.precision != "float32":
        layer = mixed_precision(layer, args.precision)
    params = tree.map(lambda t: t.to(device=device, dtype=torch.float32), params)
    _, overlap, align = tile_settings(layer)
    least = least_tile(overlap, align)
    noted: list = []  # a small --tile's note, said once

    def run(rgb: torch.Tensor) -> torch.Tensor:
        image = rgb.to(device).float().div_(255)  # whole-image copies made in place
        if args.tile is not None and args.tile % align:
            raise ValueError(
                f"--tile {args.tile}: this network's tiles must be multiples of {align} (it "
                f"pools the image down to 1/{align} of its size)"
            )
        whole = round_up(max(rgb.shape[1:]), align)  # the image in one tile
        if args.tile is not None and args.tile < min(least, whole):
            raise ValueError(
                f"--tile {args.tile}: this network's tiles overlap by {overlap} pixels on each "
                f"side, so an image of {rgb.shape[2]}x{rgb.shape[1]} needs tiles of "
                f"{min(least, whole)} or more"
            )
        tile = _loading("--tile", tile_settings, layer, args.tile, size=rgb.shape[1:])[0]
        step = (tile - 2 * overlap) // align * align  # what each tile adds to the image
        tiled_sides = sum(size > tile for size in rgb.shape[1:])  # (a thin image: one)
        if tiled_sides and 2 * step < tile and not noted:
            noted.append(tile)
            _say(
                f"note: --tile {tile} keeps {step} of each tile's {tile} pixels a side (this "
                f"network's tiles overlap by {overlap}): on this image about "
                f"{(tile / step) ** tiled_sides:.0f}x the work of one pass; --tile "
                f"{round_up(4 * overlap, align)} or more is at most {2**tiled_sides}x"
            )
        with _tile_bar() as on_tile:
            out = denoise_image(
                layer, params, image, tile=tile, overlap=overlap, align=align, on_tile=on_tile
            )
        del image
        return out.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu()

    return run, f"{path} (noise: {_recorded_noise(payload, path)})"


@contextmanager
def _tile_bar():
    """``on_tile`` for denoise_image: a progress bar on a terminal once an image needs several
    tiles (a 12-megapixel photo takes a minute through a U-Net on 2 cores), else nothing."""
    from tqdm import tqdm

    bar = None

    def on_tile(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and total > 1 and sys.stderr.isatty():
            bar = tqdm(total=total, desc="denoising", unit="tile", leave=False)
        if bar is not None:
            bar.update(done - bar.n)

    try:
        yield on_tile
    finally:
        if bar is not None:
            bar.close()


def cmd_denoise(args) -> int:
    picture = _loading("input", read_image, args.input)  # a refused input says only that
    _loading("output", check_fits, args.output, picture.rgb.shape[2], picture.rgb.shape[1])
    run, which = _denoiser(args, _setup(args))
    print(f"weights: {which}")
    alpha = picture.alpha
    if alpha is not None and args.output.suffix.lower() not in ALPHA_SUFFIXES:
        print(
            f"note: {args.output.suffix} files have no transparency; the alpha channel is dropped"
        )
        alpha = None
    if picture.deep:
        print(
            f"note: {args.input} has more than 8 bits a channel (16-bit or floating-point "
            f"values); {args.output} is written with 8"
        )
    if picture.pages > 1:
        print(f"note: {args.input} has {picture.pages} pages; the first one is denoised")
    if picture.icc and not keeps_profile(args.output, picture.grey):
        kinds = ".png, .jpg and .tif" if picture.grey else ".png, .jpg, .tif and .webp"
        print(
            f"note: {args.output.suffix} files keep no {'greyscale ' if picture.grey else ''}"
            f"colour profile; the one of {args.input} is dropped ({kinds} keep it)"
        )
    for what in picture.lost:
        print(f"note: {args.input} has {what}, which {args.output} does not keep")
    exif = picture.exif
    why = exif and exif_refused(args.output, exif)
    if why:
        print(
            f"note: the EXIF data of {args.input} cannot be written to {args.output} ({why}); "
            "it is left out"
        )
        exif = None
    t0 = time.perf_counter()
    out = run(picture.rgb)
    # colours, EXIF (camera, date, ...) and resolution as they were
    write_image(args.output, out, alpha, picture.grey, picture.icc, exif, picture.dpi)
    print(
        f"denoised {args.input} ({picture.rgb.shape[2]}x{picture.rgb.shape[1]}) -> {args.output} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_export(args) -> int:
    from .export import export_submission

    folder = _loading("--checkpoint", export_submission, args.out_dir, args.checkpoint)
    print(f"submission written to {folder}")
    return 0


# ------------------------------------------------------------------ checks between options
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


RUN_PICTURES = ("curves.png", "samples.png")
RUN_FILES = ("model.pth", "checkpoint.pth", "history.json", *RUN_PICTURES)


def _run_files_in(out: Path) -> list:
    """The names of a run's files (:data:`RUN_FILES`) that ``out`` holds."""
    return [name for name in RUN_FILES if (out / name).is_file()]


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
    if not args.resume:  # (a finished run's resume writes only what is missing: cmd_train)
        _check_foreign_files(Path(args.out), error)
    _check_memory(args, error)
    if args.resume and args.init is not None:
        error("--init starts a new run from weights; --resume continues a run: give one")
    if args.resume:  # the run's own options: cmd_train compares those given with them
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
    from .pretrained import shipped_weights

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
    args.init, args.init_payload = path, payload  # (run_training loads it: read once)
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


def _n_train_default(args) -> int:
    return 50000 // 4 if args.photos and _camera_noise(args) else 50000


def _check_nproc(args, error) -> None:
    processes, who = args.nproc, f"--nproc {args.nproc}"
    if launch.is_worker() and args.nproc == 1:  # started by torchrun: its WORLD_SIZE counts
        text = os.environ.get("WORLD_SIZE", "1")
        if not text.isdigit() or int(text) < 1:
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
        try:
            at.photo_dir(side, why)(str(folder))
        except at.Error as e:
            error(f"{_option(option)}: {e}")


def _check_eval(args, error) -> None:
    _check_data_options(args, error)
    _check_photo_sides(args, error)
    _check_memory(args, error)


def _tile_size(text: str) -> int:
    """--tile: a multiple of TILE_ALIGN of at least MIN_TILE (both rules in one message)."""
    rules = f"expected a multiple of {TILE_ALIGN} of at least {MIN_TILE}, got {text!r}"
    try:
        value = int(text)
    except ValueError:
        raise at.Error(rules) from None
    if value < MIN_TILE or value % TILE_ALIGN:
        near = max(MIN_TILE, min(value, 4096) // TILE_ALIGN * TILE_ALIGN)
        raise at.Error(f"{rules} (e.g. {near})")
    return value


def _check_denoise(args, error) -> None:
    if args.output.exists() and args.output.resolve() == args.input.resolve():
        error(f"output {args.output} is the input file; choose another name")
    if (args.output.exists() or args.output.is_symlink()) and not args.overwrite:
        error(f"output {args.output} exists; give --overwrite to replace it")
    _check_writable(args.output.parent, "output", error)


def _check_export(args, error) -> None:
    from .export import submission_folder

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


# ---------------------------------------------------------------------------- the parser
class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless it is None or a flag's False, where the help
    says what happens instead) and keeps the epilog's examples as written."""

    def _get_help_string(self, action):
        if (
            action.default is None
            or action.default is False
            or isinstance(action, argparse._VersionAction)
        ):
            return action.help
        return super()._get_help_string(action)


def _sub(sub, name: str, usage: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A command whose usage is one short line (``--help`` lists every option)."""
    return sub.add_parser(
        name,
        usage=f"n2nfunc {name} {usage}",
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + examples,
        formatter_class=_Help,
    )


def _common(p) -> None:
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="arithmetic of the network's matmuls: float32, or bfloat16 operands with "
        "float32 weights, accumulation and loss (needs a CPU with AMX or AVX512-BF16, or a "
        "recent GPU)",
    )
    p.add_argument(
        "--threads",
        type=at.int_range(1, MAX_THREADS),
        metavar="N",
        help="CPU threads for torch (default: torch's choice, usually one per core)",
    )
    p.add_argument(
        "--device",
        type=at.device,
        default="cpu",
        help="cpu, cuda, cuda:N, or auto (cuda when there is one)",
    )


def _data_path(check):
    """The argparse type of a data option: ``check`` where the data is read, a bare path on
    the other ranks of a data-parallel run, which receive it from rank 0 (so that the other
    machines of a multi-machine run need no copy of it)."""
    return check if _rank() == "0" else Path


def _nearest(text: str, names) -> list:
    """The names that ``text`` begins, else the closest one to it (a typo), else none."""
    return [n for n in names if n.startswith(text)] or difflib.get_close_matches(
        text, list(names), 1
    )


def _shipped_name(text: str) -> str:
    """A shipped network's name; a file is pointed to --checkpoint, a typo to the name."""
    if text in PRETRAINED_NAMES:
        return text
    names = ", ".join(repr(name) for name in PRETRAINED_NAMES)  # as argparse lists choices
    if "/" in text or "." in text:
        raise at.Error(
            f"{text!r} is not a shipped network ({names}); a file goes with --checkpoint"
        )
    close = _nearest(text, PRETRAINED_NAMES)  # ('unet': the three U-Nets)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise at.Error(f"invalid choice: {text!r} ({hint}choose from {names})")


def _val_options(p, training: bool = True) -> None:
    p.add_argument(
        "--val-pairs",
        type=_data_path(at.pair_dir),
        metavar="DIR",
        help="validate on DIR/a (noisy), DIR/b (clean)",
    )
    p.add_argument(
        "--val-photos",
        type=_data_path(at.image_dir),
        metavar="DIR",
        help="validate on noisy/clean patches cut from the photos in DIR (aliasing at factor "
        f"{VAL_PHOTO_FACTOR} unless --noise gives one)",
    )
    p.add_argument(
        "--n-val",
        type=at.int_range(1),
        default=1000,
        metavar="N",
        help="built-in / photo validation pairs",
    )
    p.add_argument(
        "--noise",
        type=at.noise,
        default="downsample",
        help="noise of the built-in or photo pairs: downsample (course-like aliasing) or "
        "downsample:FACTOR, gaussian:SIGMA or gaussian:LO-HI (0-255 scale, a range draws one "
        "sigma per image), poisson:PEAK or poisson:LO-HI",
    )
    p.add_argument(
        "--seed",
        type=at.int_range(0, 2**31 - 1),
        default=DEFAULT_CONFIG["seed"],
        help="seed of the data, initial weights and batch order"
        if training
        else "seed of the generated validation pairs",
    )


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)


class _Parser(argparse.ArgumentParser):
    commands: dict = {}  # name -> the command's parser, set by build_parser

    def __init__(self, *args, **kwargs):
        # no prefixes of options: "--epoch 2" is refused with a suggestion, not read as
        # --epochs (nor would a prefix keep its meaning once a longer option is added)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # "-1e-3" is a value, not an option: argparse's own pattern knows only -1 and -1.5,
        # and "--lr -1e-3" said "expected one argument" instead of naming the bad value
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message):
        """argparse's error, with the nearest command for a mistyped one ('trian')."""
        prefix = "argument COMMAND: invalid choice: '"
        if message.startswith(prefix) and self.commands:
            typed = message[len(prefix) :].split("'", 1)[0]
            close = _nearest(typed, self.commands)  # ('export': export-submission)
            if close:
                message = message.replace(
                    " (choose from", f" (did you mean {close[0]}? choose from"
                )
        super().error(message)


def build_parser() -> _Parser:
    parser = _Parser(
        prog="n2nfunc",
        description="Train and use a Noise2Noise image denoiser written with n2nfunc, a small\n"
        "deep-learning library with hand-written gradients.",
        epilog="examples:\n"
        "  n2nfunc train                       # built-in data; 4-9 min on a 2-core CPU\n"
        "  n2nfunc denoise noisy.png clean.png\n"
        "  n2nfunc train --help                # the options of one command",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"n2nfunc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # name -> the command's parser

    t = _sub(
        sub,
        "train",
        "[options]   (n2nfunc train --help lists them)",
        "train the denoiser (on built-in data unless told otherwise)",
        "  n2nfunc train                                   # 50,000 built-in pairs, 12 epochs\n"
        "  n2nfunc train --epochs 2 --n-train 5000 --out runs/quick\n"
        "  n2nfunc train --train train_data.pkl --val val_data.pkl\n"
        "  n2nfunc train --photos ~/Pictures --val-photos ~/Pictures/held-out\n"
        "  n2nfunc train --resume runs/latest/checkpoint.pth --out runs/latest\n",
    )
    data = t.add_argument_group(
        "training data (default: built-in pairs)"
    ).add_mutually_exclusive_group()
    data.add_argument(
        "--train",
        type=_data_path(at.existing_file("pair file")),
        metavar="FILE",
        help="course training file (train_data.pkl); needs --val",
    )
    data.add_argument(
        "--pairs",
        type=_data_path(at.pair_dir),
        metavar="DIR",
        help="noisy/noisy images of equal names in DIR/a and DIR/b (cut into 32x32 patches)",
    )
    data.add_argument(
        "--photos",
        type=_data_path(at.image_dir),
        metavar="DIR",
        help="photos to cut noisy pairs from (at least one must be as large as a crop on its "
        f"short side: {PHOTO_CROP} px with Gaussian or Poisson noise, {32 * max(PHOTO_FACTORS)} "
        "with plain --noise downsample, 32 x FACTOR with downsample:FACTOR)",
    )
    t.add_argument(
        "--val",
        type=_data_path(at.existing_file("pair file")),
        metavar="FILE",
        help="course validation file (val_data.pkl)",
    )
    t.add_argument(
        "--n-train",
        type=at.int_range(1),
        default=None,
        metavar="N",
        help="built-in / photo training pairs (default 50000 32x32 patches; 12500 64x64 crops "
        "for --photos with Gaussian or Poisson noise)",
    )
    _val_options(t)
    net = t.add_argument_group("network and optimizer")
    net.add_argument(
        "--network",
        choices=NETWORKS,
        default="exercise",
        help="the exercise's required network, or the Noise2Noise U-Net (3x3 convolutions, "
        "max pooling, skip connections; --kernel and --upsampling do not apply)",
    )
    net.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights with a new optimizer: a model.pth, a run's "
        "checkpoint.pth, or a shipped network's name (exercise, unet-gaussian, unet-poisson, "
        "unet-aliasing); the run trains the network they record (to train a finished run "
        "further, or to fine-tune on your photos)",
    )
    net.add_argument(
        "--epochs",
        type=at.int_range(1),
        default=DEFAULT_CONFIG["num_epochs"],
        metavar="N",
        help="passes over the training pairs",
    )
    net.add_argument(
        "--batch-size",
        type=at.int_range(1),
        default=DEFAULT_CONFIG["batch_size"],
        metavar="B",
        help="pairs per training step",
    )
    net.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default=DEFAULT_CONFIG["optimizer"],
        help="Adam, or SGD with momentum",
    )
    net.add_argument(
        "--lr",
        type=at.float_range(0.0),
        default=None,
        help=f"peak learning rate (warm-up, then cosine decay; default {DEFAULT_CONFIG['lr']:g}, "
        f"{UNET_DEFAULTS['lr']:g} for the U-Net)",
    )
    net.add_argument(
        "--momentum",
        type=at.float_range(0.0, 1.0, low_open=False),
        default=DEFAULT_CONFIG["momentum"],
        help="SGD momentum (with --optimizer sgd)",
    )
    net.add_argument(
        "--widths",
        type=at.int_range(1, MAX_WIDTH),
        nargs="+",
        default=None,
        metavar="W",
        help="channels: 2 for the exercise's network (after its first and second convolution, "
        "default 48 48), 4 for the U-Net (encoder, decoder, last two, default 32 64 48 24)",
    )
    net.add_argument(
        "--kernel",
        type=at.int_range(2, 5),
        default=DEFAULT_CONFIG["kernel"],
        metavar="K",
        help="kernel size of every layer",
    )
    net.add_argument(
        "--no-augment", action="store_true", help="no random flips / quarter turns of the batches"
    )
    net.add_argument(
        "--upsampling",
        choices=["transpose", "nearest"],
        default=DEFAULT_CONFIG["upsampling"],
        help="transposed convolution, or nearest x2 + convolution (needs an odd kernel)",
    )
    run = t.add_argument_group("output")
    run.add_argument(
        "--out",
        type=at.output_dir,
        default="runs/latest",
        metavar="DIR",
        help="folder for model.pth, checkpoint.pth, history.json and pictures (created, with "
        "its parents, if missing; files of an earlier run there are replaced; one run at a time "
        "writes into it); with --resume, the checkpoint's folder unless given",
    )
    run.add_argument(
        "--resume",
        type=at.existing_file("checkpoint"),
        metavar="FILE",
        help="continue a run from its checkpoint.pth (its settings and data options are used; "
        "options given here that disagree with them are refused)",
    )
    run.add_argument("--no-pictures", action="store_true", help="skip curves.png and samples.png")
    run.add_argument(
        "--nproc",
        type=at.int_range(1),
        default=1,
        metavar="N",
        help="data-parallel training in N local processes (torch.distributed, gloo on CPUs, "
        "NCCL on GPUs); the batch size stays the global one",
    )
    run.add_argument(
        "--quiet", action="store_true", help="no progress bar or in-epoch lines (epoch lines stay)"
    )
    _common(t)
    t.set_defaults(func=cmd_train, check=_check_train, parser=t)

    e = _sub(
        sub,
        "eval",
        "[options]   (n2nfunc eval --help lists them)",
        "PSNR of a checkpoint on validation data (default: the shipped weights)",
        "  n2nfunc eval                                    # shipped weights, built-in data\n"
        "  n2nfunc eval --checkpoint runs/latest/model.pth\n"
        "  n2nfunc eval --val val_data.pkl\n",
    )
    e_weights = e.add_mutually_exclusive_group()
    e_weights.add_argument(
        "--model",
        type=_shipped_name,
        metavar="{" + ",".join(PRETRAINED_NAMES) + "}",
        help="a shipped network, as for denoise (default: exercise)",
    )
    e_weights.add_argument(
        "--checkpoint",
        type=at.existing_file("checkpoint"),
        metavar="FILE",
        help="weights to evaluate (default: the shipped n2nfunc/weights/bestmodel.pth)",
    )
    e.add_argument(
        "--val",
        type=at.existing_file("pair file"),
        metavar="FILE",
        help="course validation file (val_data.pkl)",
    )
    _val_options(e, training=False)
    _common(e)
    e.set_defaults(func=cmd_eval, check=_check_eval, parser=e)

    d = _sub(
        sub,
        "denoise",
        "INPUT OUTPUT [options]   (n2nfunc denoise --help lists them)",
        "denoise an image file of any size",
        "  n2nfunc denoise noisy.png denoised.png\n"
        "  n2nfunc denoise photo.jpg out.png --checkpoint runs/latest/model.pth\n"
        "  n2nfunc denoise photo.jpg out.png --model unet-gaussian\n",
    )
    d.add_argument(
        "input", type=at.input_image, metavar="INPUT", help="image to denoise (png, jpg, ...)"
    )
    d.add_argument(
        "output",
        type=at.output_image,
        metavar="OUTPUT",
        help="image to write (png, jpg, ...), in an existing folder; an existing file is "
        "replaced only with --overwrite",
    )
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it exists (without it, an existing file is refused: "
        "`n2nfunc denoise *.jpg` with two photos would write the first over the second)",
    )
    weights = d.add_mutually_exclusive_group()
    weights.add_argument(
        "--model",
        type=_shipped_name,
        metavar="{" + ",".join(PRETRAINED_NAMES) + "}",
        help="a shipped network: exercise (the default: the course's network, "
        "n2nfunc/weights/bestmodel.pth) or a U-Net for camera noise (unet-gaussian, "
        "unet-poisson) or the course's aliasing (unet-aliasing)",
    )
    weights.add_argument(
        "--checkpoint",
        type=at.existing_file("checkpoint"),
        metavar="FILE",
        help="weights of your own (a model.pth written by `n2nfunc train`, or a U-Net's)",
    )
    d.add_argument(
        "--tile",
        type=_tile_size,
        metavar="PX",
        help="tile size in pixels, a multiple of 32; smaller tiles use less memory but take "
        "longer, as each computes its overlap again (a U-Net at --tile 192 takes several "
        "times as long as at its default 480). Tiles overlap by the "
        "network's reach, and an image that needs several takes tiles of at "
        "least twice the overlap plus 32 (default: 256, or six overlaps where larger). "
        "exercise: overlap 27, tiles >= 96; unet-gaussian and unet-poisson: overlap 78, "
        "tiles >= 192, default 480; unet-aliasing: overlap 38, tiles >= 128",
    )
    _common(d)
    d.set_defaults(func=cmd_denoise, check=_check_denoise, parser=d)

    x = _sub(
        sub,
        "export-submission",
        "OUT_DIR [--checkpoint FILE]",
        "write OUT_DIR/Miniproject_2/ for the course grader",
        "  n2nfunc export-submission out/\n"
        "  n2nfunc export-submission out/ --checkpoint runs/latest/model.pth\n",
    )
    x.add_argument(
        "out_dir",
        type=at.output_dir,
        metavar="OUT_DIR",
        help="folder to write Miniproject_2/ into (created if missing; a folder named "
        "Miniproject_2 is written into itself; in an existing Miniproject_2/ the exported files "
        "are replaced and others, such as Report_2.pdf, kept)",
    )
    x.add_argument(
        "--checkpoint",
        type=at.existing_file("checkpoint"),
        metavar="FILE",
        help="weights to ship (default: the shipped n2nfunc/weights/bestmodel.pth)",
    )
    x.set_defaults(func=cmd_export, check=_check_export, parser=x)
    return parser


def _refuse_unknown_options(parser: _Parser, argv: list) -> None:
    """Stop with the command's own usage at an option it does not have. argparse itself names
    an unknown option only after every positional was read, with the top-level usage, and an
    unknown option's value can first fail as a positional (``denoise --noise gaussian:25 in.png
    out.png`` said "no such image file: gaussian:25")."""
    commands = parser.commands
    at_command = next((i for i, t in enumerate(argv) if t in commands), None)
    first_word = next((i for i, t in enumerate(argv) if not t.startswith("-")), None)
    top = [s for action in parser._actions for s in action.option_strings]
    for token in argv[: first_word if at_command is None else at_command]:
        name = token.split("=", 1)[0]  # before the command only -h / --help / --version belong
        if token.startswith("-") and name not in top:
            parser.error(
                f"unrecognized option {token} before the command (n2nfunc --help lists "
                f"the commands: {', '.join(commands)})"
            )
    if at_command is None:  # (a mistyped command: argparse names it, _Parser.error the nearest)
        return
    command = commands[argv[at_command]]
    known = [s for action in command._actions for s in action.option_strings]
    for token in argv[at_command + 1 :]:
        if token == "--":
            return
        if not token.startswith("-") or token == "-" or " " in token or _is_number(token):
            continue  # a value, as argparse reads it
        name = token.split("=", 1)[0]
        if name in known:
            continue  # (no prefixes: "--epoch" is not read as --epochs)
        prefixed = [k for k in known if k.startswith("--") and k.startswith(name)]
        words = [k[2:] for k in known if k.startswith("--")]  # the "--" would count as alike
        close = difflib.get_close_matches(name.lstrip("-"), words, 1, cutoff=0.7)  # widht
        close = (
            [p[2:] for p in prefixed] if name.startswith("--") and 0 < len(prefixed) <= 3 else close
        )
        alias = SAME_THING.get(argv[at_command], {}).get(name, "")
        close = [alias[2:]] if alias in known else close
        hint = f"did you mean {' or '.join('--' + c for c in close)}? " if close else ""
        command.error(
            f"unrecognized option {name} ({hint}n2nfunc {argv[at_command]} --help lists the "
            "options)"
        )


# Options of one command that another command names otherwise: the hint for a user who
# gives the one to the other ("n2nfunc train --model unet").
SAME_THING = {
    "train": {"--model": "--network"},
    "eval": {"--network": "--model"},
    "denoise": {"--network": "--model"},
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 done, 2 bad usage or data)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            parser = build_parser()
            _refuse_unknown_options(parser, argv)
            args, extra = parser.parse_known_args(argv)
            if extra:  # a stray positional: the command's usage, not the top-level one
                getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
            args.argv = argv  # for --nproc's workers
            args.check(args, args.parser.error)
            _check_precision(args, args.parser.error)
        except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2)
            return e.code if isinstance(e.code, int) else 0
        except OSError as e:  # a path the checks cannot reach (a folder without permission)
            where = f"cannot reach {e.filename}" if e.filename else "cannot reach a path"
            reason = (e.strerror or str(e)).lower()
            print(f"n2nfunc {_command_of(argv)}: error: {where} ({reason})", file=sys.stderr)
            return 2
        try:
            return _run(args)
        finally:
            _unlock_all()
    except ModuleNotFoundError as e:  # an optional dependency (the viz extra) not installed
        if e.name not in OPTIONAL_MODULES:
            raise
        print(
            f"n2nfunc {_command_of(argv)}: error: this needs {OPTIONAL_MODULES[e.name]}, which "
            "is not installed: pip install 'n2nfunc[viz]'",
            file=sys.stderr,
        )
        return 2


def _command_of(argv: list) -> str:
    """The command word of a command line, for an error said before it is parsed."""
    return next((a for a in argv if not a.startswith("-")), "")


# The optional dependencies of the viz extra, by the module a missing one fails to import
OPTIONAL_MODULES = {"PIL": "Pillow (image files)", "matplotlib": "matplotlib (the plots)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch system) in a command run by :func:`entry`: it
    stops as on Ctrl-C -- the resume hint said, the lock file and the empty folders made for
    the run removed -- with exit status 143."""


def _terminated(signum, frame):
    raise Terminated


def _stopped_code(e: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130


def entry() -> int:
    """The console script and ``python -m n2nfunc``: :func:`main`, SIGTERM raising
    :class:`Terminated` in a process of its own (not in a data-parallel worker: there the
    signal must stop the process at once, even while torch waits in C++ for a rendezvous or
    a collective, which a Python handler would wait for; nor where a handler is set)."""
    if not launch.is_worker() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    return main()


def _run(args) -> int:
    """``args.func(args)``, its failures said in one line and turned into exit codes."""
    try:
        return args.func(args)
    except KeyboardInterrupt as e:  # (inside an epoch train says which state it kept, itself)
        print(f"\nn2nfunc {args.command}: interrupted", file=sys.stderr)
        return _stopped_code(e)
    except (ValueError, FileNotFoundError) as e:
        print(f"n2nfunc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a loss that is not finite: in a data-parallel run the
        if _rank() == "0":  # mean of all ranks', so every rank stops here and rank 0 says it
            print(f"n2nfunc {args.command}: error: {e}", file=sys.stderr)
        return launch.NON_FINITE_LOSS if launch.is_worker() else 1
    except OSError as e:  # writing failed (disk full, permissions changed meanwhile, ...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"n2nfunc {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(entry())
