"""The commands that use a trained network: ``eval``, ``denoise`` and ``export-submission``,
and the notes they give about the noise a network was trained on."""

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import argtypes as at
from .. import checkpoint, tree
from ..data import (
    check_fits,
    keeps_profile,
    read_image,
    write_image,
)
from ..data.files import ALPHA_SUFFIXES, exif_refused
from ..data.noise import parse_noise
from ..export import before_first_epoch
from ..metrics import evaluate
from ..model import (
    DEFAULT_WEIGHTS,
    Model,
    checkpoint_network,
)
from .common import (
    _camera_noise,
    _given,
    _loading,
    _rank,
    _say,
    _say_if_bfloat16_is_slow,
    _setup,
    no_autograd,
    shown,
)
from .pairs import _say_if_identical, _validation_data
from .runs import _run_config

TILE_ALIGN = 32  # --tile's multiple (deeper U-Nets than the shipped ask for more: named then)
MIN_TILE = 96  # an overlap of 32 (the exercise network reaches 27) on both sides plus one 32 step


SHIPPED_NOISE = (
    "aliasing from point-sampled downsampling by 4 to 12 (the course data's kind), "
    "learnt from photos and built-in pairs"
)


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
        parsed = [parse_noise(spec) for spec in dict.fromkeys(map(str, specs))]
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


def _load_model(path, device, precision: str = "float32") -> tuple[Model, str]:
    """The Model in a weights file and its training noise."""
    path = Path(path)
    payload = _network_payload("--checkpoint", path)
    config = _loading("--checkpoint", _run_config, payload.get("config"), str(path))
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
            f"{model.config['lr']:g}, {model.config['finetune_lr_scale']:g} times a new run's "
            "(give --lr to choose)"
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
    from ..pretrained import shipped_weights

    device = _setup(args)
    path = args.checkpoint or DEFAULT_WEIGHTS
    if args.model is not None:
        path = _loading("--model", shipped_weights, args.model)
    model, noise = _load_model(path, device, args.precision)
    _say_if_bfloat16_is_slow(device, args.precision)
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
    with no_autograd():
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
    from ..precision import mixed_precision
    from ..pretrained import network_from_payload, shipped_weights
    from ..tiling import denoise_image, least_tile, round_up, tile_settings

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
        with _tile_bar() as on_tile, no_autograd():
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
    device = _setup(args)
    run, which = _denoiser(args, device)
    print(f"weights: {which}")
    _say_if_bfloat16_is_slow(device, args.precision)
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
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def cmd_export(args) -> int:
    from ..export import export_submission

    try:
        folder = _loading("--checkpoint", export_submission, args.out_dir, args.checkpoint)
    except FileExistsError as e:  # files of the user's where the export goes: a usage error
        raise ValueError(f"{e.filename}: {e.strerror}") from None
    print(f"submission written to {folder}")
    return 0


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
