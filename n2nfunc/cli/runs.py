"""A training run's folder and state: what its checkpoint records of the command line,
``--resume`` reading it back, and the lock that keeps two runs out of one folder."""

import hashlib
import os
from pathlib import Path

import torch

from .. import checkpoint, launch, optim, tree
from ..base import is_number
from ..data.files import list_images
from ..data.noise import parse_noise
from ..model import (
    DEFAULT_CONFIG,
    Model,
    check_finite,
    full_config,
)
from ..pretrained import NAMES as PRETRAINED_NAMES
from .common import RUN_PICTURES, _given, _loading, _local_processes, _option, _shown
from .pairs import _n_train


def _config(args) -> dict:
    cfg = {k: getattr(args, k) for k in ("batch_size", "optimizer", "momentum", "kernel")}
    for k in ("warmup_steps", "final_lr_fraction", "finetune_lr_scale"):
        cfg[k] = getattr(args, k)
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
    "precision": "precision", "seed": "seed", "warmup_steps": "warmup_steps",
    "final_lr_fraction": "final_lr_fraction", "finetune_lr_scale": "finetune_lr_scale",
}  # fmt: skip


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
            more = mine - theirs if dest == "epochs" and mine > theirs else 0
            further = (  # more epochs: a new run from its weights, with a schedule of its own
                f"; to train its weights {more} epochs more, in a new run with a learning-rate "
                f"schedule of its own: n2nfunc train --init {launch.quoted(path)} --epochs "
                f"{more} --out NEW_FOLDER ..."
                if more
                else ""
            )
            raise ValueError(
                f"--resume continues the run of {path} with its own settings: {option} differs "
                f"from {own} (to change it, start a new run without --resume{further})"
            )
    args.seed = config.get("seed", args.seed)  # the seed of its data too
    args.batch_size = config.get("batch_size", args.batch_size)
    args.precision = config.get("precision", args.precision)
    saved = state.get("data")
    _say_other_processes(args, saved, say)
    if saved is None:  # written before checkpoints recorded their data
        if say and not launch.launched_by_nproc():
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
    if not say or before is None or launch.launched_by_nproc():
        return  # (--nproc's workers: their launcher said it)
    now = _local_processes(args, "WORLD_SIZE")
    if now != before:
        print(
            f"note: {args.resume} trained on {before} process{'es' * (before > 1)}, this run on "
            f"{now}: it goes on, but not bit for bit as an uninterrupted run (give --nproc "
            f"{before} for that)"
        )


def _shown_data(dest: str, value) -> str:
    return f"no {_option(dest)}" if value is None else f"{_option(dest)} {_shown(value)}"


def _load_state(path) -> dict:
    """A training state written by `train` (checkpoint.pth), checked for its parts."""
    state = _loading("--resume", checkpoint.load, path)
    if not isinstance(state, dict):
        raise ValueError(
            f"--resume: {path} is not a training state (it holds a {type(state).__name__})"
        )
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


def _run_config(config, source: str = "the checkpoint") -> dict:
    """A checkpoint's config, less entries this version's Model does not know."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{source}: its config must be a dict, got {type(config).__name__}")
    return {k: v for k, v in config.items() if k in DEFAULT_CONFIG}


def _weights_payload(model: Model, origin: dict, noise) -> dict:
    """What a run's model.pth holds: the Model's payload, where its weights came from, and
    its training noise (in a U-Net's info too, which load_network returns)."""
    payload = {**model.payload(), **origin}
    if noise is not None:
        payload["noise"] = noise
        if isinstance(payload.get("info"), dict):
            payload["info"] = {**payload["info"], "noise": noise}
    return payload


def _origin(args, state: dict | None) -> dict:
    """``{"init": {"from", "sha256"}}``: the weights a run started from (``--init``), which its
    checkpoints and weights record, a resumed run as its first part did; else ``{}``."""
    if state is not None:
        init = state.get("init")
        return {"init": init} if isinstance(init, dict) else {}
    if args.init is None:
        return {}
    digest = args.init_sha256  # (hashed by checks._check_init)
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


# Lock files a command holds, (open file, path, the folders the command made for it, innermost
# first): removed and unlocked when it returns (cli.main), with those folders where left empty.
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
    if not all(isinstance(v, int) for v in (done, total)):  # not a state this version wrote
        return
    if done < total:
        print(
            f"note: {state_path} held an unfinished run (epoch {done} of {total}), which this "
            f"new run replaces (`--resume {launch.quoted(state_path)}` continues a run)"
        )
    else:  # its weights, history and pictures stay until this run writes its own
        print(
            f"note: {state_path.parent} held a finished run, whose files this new run replaces "
            "as it writes its own (give another --out to keep them)"
        )


def _drop_stale_pictures(out: Path, written: list) -> None:
    """Remove the pictures an earlier run left in ``out`` that this one did not write
    (``--no-pictures``, or no matplotlib): the folder then shows one run, not this run's
    weights beside another's curves and samples."""
    for name in RUN_PICTURES:
        path = out / name
        if path not in written and path.is_file():
            path.unlink()
            print(f"removed {path}: an earlier run's picture")
