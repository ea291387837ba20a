"""The ``n2nfunc`` command line: train, eval, denoise, export-submission."""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import checkpoint, launch
from .data import (
    builtin_pairs,
    load_folder_pairs,
    load_pair_file,
    load_photos,
    mixed_factor_pairs,
    photo_pairs,
    read_image,
    write_image,
)
from .metrics import evaluate
from .model import DEFAULT_CONFIG, DEFAULT_WEIGHTS, Model


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def _setup(args) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    return _device(args.device)


def _training_data(args):
    """(train_a, train_b, val_noisy, val_clean, description) from the command-line options."""
    if args.train or args.val:
        if not (args.train and args.val):
            raise ValueError("--train and --val go together")
        xt, yt = load_pair_file(args.train)
        xv, yv = load_pair_file(args.val)
        return xt, yt, xv, yv, f"course files {args.train} / {args.val}"
    if args.pairs:
        xt, yt = load_folder_pairs(args.pairs)
        desc = f"image pairs in {args.pairs}"
    elif args.photos:
        xt, yt = mixed_factor_pairs(load_photos(args.photos), args.n_train, "train", args.seed)
        desc = f"{args.n_train} pairs cut from the photos in {args.photos}"
    else:
        print(f"generating {args.n_train} built-in training pairs (cached after the first run)...")
        xt, yt = builtin_pairs(args.n_train, "train", args.noise, args.seed)
        desc = f"{args.n_train} built-in dead-leaves pairs, noise {args.noise}"
    if args.val_pairs:
        xv, yv = load_folder_pairs(args.val_pairs)
    elif args.val_photos:
        xv, yv = photo_pairs(
            load_photos(args.val_photos), args.n_val, "val", args.seed, factor=8, scales=(1,)
        )
    else:
        xv, yv = builtin_pairs(args.n_val, "val", args.noise, args.seed)
    return xt, yt, xv, yv, desc


def _config(args) -> dict:
    cfg = {}
    for key in ("batch_size", "optimizer", "lr", "momentum", "kernel", "upsampling", "seed"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    if args.widths:
        cfg["widths"] = tuple(args.widths)
    if args.epochs is not None:
        cfg["num_epochs"] = args.epochs
    if args.no_augment:
        cfg["augment"] = False
    return cfg


def _resume_state(model: Model, path) -> dict:
    state = checkpoint.load(path)
    model.load_payload(state, str(path))
    model.pretrained = False  # resuming continues the same run's schedule
    model.optimizer.state = state["optimizer"]
    model.generator.set_state(state["rng"])
    model.epochs_done = state["epoch"]
    return state


def _save_state(model: Model, path, epoch: int, history: list) -> None:
    checkpoint.save(
        path,
        {
            **model.payload(),
            "optimizer": model.optimizer.state,
            "epoch": epoch,
            "rng": model.generator.get_state(),
            "history": history,
        },
    )


def cmd_train(args) -> int:
    from tqdm import tqdm

    if args.nproc != 1 or launch.is_worker():  # data parallel: see n2nfunc/launch.py
        return launch.train(args, args.argv)
    device = _setup(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xt, yt, xv, yv, desc = _training_data(args)
    if args.resume:
        saved = checkpoint.load(args.resume)
        model = Model(saved["config"])
        state = _resume_state(model, args.resume)
        start, history = state["epoch"], list(state["history"])
    else:
        model = Model(_config(args))
        start, history = 0, []
    epochs = model.config["num_epochs"]
    x, y = model.prepare_pairs(xt.to(device), yt.to(device))
    xv, yv = xv.to(device), yv.to(device)
    state_path, weights_path = out / "checkpoint.pth", out / "model.pth"
    bs = min(model.config["batch_size"], x.shape[0])
    per_epoch = (x.shape[0] // bs) * bs
    print(
        f"training on {desc}: {x.shape[0]} pairs, {epochs} epochs, batch {bs}, "
        f"{torch.get_num_threads()} threads, device {device}"
    )
    print(f"network: {model.net!r}".replace("\n", "\n  "))
    bar = tqdm(
        total=(epochs - start) * per_epoch,
        unit="img",
        unit_scale=True,
        dynamic_ncols=True,
        disable=args.quiet,
    )

    def on_step(epoch, step, steps, loss):
        bar.update(bs)
        if step % 20 == 0:
            bar.set_postfix_str(f"epoch {epoch + 1}/{epochs} loss {loss:.5f}", refresh=False)

    epoch = start
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            loss = model.train_epoch(x, y, epoch, epochs, on_step)
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
            bar.write(
                f"epoch {epoch + 1}/{epochs}: loss {loss:.5f}, validation PSNR "
                f"{scores['denoised_psnr']:.2f} dB (noisy {scores['noisy_psnr']:.2f} dB, "
                f"gain {scores['gain']:+.2f} dB), {per_epoch / seconds:.0f} images/s"
            )
            _save_state(model, state_path, epoch + 1, history)
    except KeyboardInterrupt:
        bar.close()
        _save_state(model, state_path, epoch, history)
        print(
            f"\ninterrupted in epoch {epoch + 1}; state saved to {state_path}; continue with "
            f"`n2nfunc train --resume {state_path}` (that epoch restarts)"
        )
        return 130
    bar.close()
    model.save(weights_path)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    print(f"weights: {weights_path}\nresume state: {state_path}\nhistory: {out / 'history.json'}")
    if not args.no_pictures:
        from .viz import plot_curves, sample_grid

        curves = plot_curves(history, out / "curves.png")
        grid = sample_grid(xv[:8], model.predict(xv[:8]), yv[:8], out / "samples.png")
        for p in (curves, grid):
            if p:
                print(f"picture: {p}")
    return 0


def _load_model(path, device) -> Model:
    payload = checkpoint.load(path or DEFAULT_WEIGHTS)
    model = Model({k: v for k, v in payload["config"].items() if k in DEFAULT_CONFIG})
    model.load_payload(payload, str(path or DEFAULT_WEIGHTS))
    model._move_to(device)
    return model


def cmd_eval(args) -> int:
    device = _setup(args)
    model = _load_model(args.checkpoint, device)
    if args.val:
        xv, yv = load_pair_file(args.val)
        desc = str(args.val)
    elif args.val_pairs:
        xv, yv = load_folder_pairs(args.val_pairs)
        desc = str(args.val_pairs)
    elif args.val_photos:
        xv, yv = photo_pairs(
            load_photos(args.val_photos), args.n_val, "val", args.seed, factor=8, scales=(1,)
        )
        desc = f"{args.n_val} patches of the photos in {args.val_photos} (downsampling factor 8)"
    else:
        xv, yv = builtin_pairs(args.n_val, "val", args.noise, args.seed)
        desc = f"{args.n_val} built-in validation pairs, noise {args.noise}"
    s = evaluate(model, xv.to(device), yv.to(device))
    print(
        f"checkpoint: {args.checkpoint or DEFAULT_WEIGHTS}\ndata: {desc}\n"
        f"noisy input PSNR: {s['noisy_psnr']:.2f} dB\n"
        f"denoised PSNR:    {s['denoised_psnr']:.2f} dB\n"
        f"gain:             {s['gain']:+.2f} dB"
    )
    return 0


def denoise_tiled(
    model: Model, rgb: torch.Tensor, tile: int = 256, margin: int = 16
) -> torch.Tensor:
    """Denoise a uint8 (3, H, W) image tile by tile (each with a ``margin`` of context), so
    memory stays bounded for any image size; returns uint8 (3, H, W)."""
    _, h, w = rgb.shape
    out = torch.empty(3, h, w, dtype=torch.uint8)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            ys, xs = max(0, y0 - margin), max(0, x0 - margin)
            ye, xe = min(h, y0 + tile + margin), min(w, x0 + tile + margin)
            pred = model.predict(rgb[None, :, ys:ye, xs:xe].float())[0]
            core = pred[
                :, y0 - ys : y0 - ys + min(tile, h - y0), x0 - xs : x0 - xs + min(tile, w - x0)
            ]
            out[:, y0 : y0 + core.shape[1], x0 : x0 + core.shape[2]] = (
                core.round().to(torch.uint8).cpu()
            )
    return out


def cmd_denoise(args) -> int:
    device = _setup(args)
    model = _load_model(args.checkpoint, device)
    picture = read_image(args.input)
    t0 = time.perf_counter()
    out = denoise_tiled(model, picture.rgb.to(device), args.tile)
    write_image(args.output, out, picture.alpha, picture.grey)
    print(
        f"denoised {args.input} ({picture.rgb.shape[2]}x{picture.rgb.shape[1]}) -> {args.output} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_export(args) -> int:
    from .export import export_submission

    folder = export_submission(args.out_dir, args.checkpoint)
    print(f"submission written to {folder}")
    return 0


def _common(p, device=True):
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    if device:
        p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")


def _val_options(p):
    p.add_argument("--n-val", type=int, default=1000, help="built-in / photo validation pairs")
    p.add_argument(
        "--noise",
        default="downsample",
        help="built-in noise: downsample, gaussian:SIGMA or poisson:PEAK",
    )
    p.add_argument("--val-pairs", type=Path, help="folder with a/ (noisy) and b/ (clean) images")
    p.add_argument("--val-photos", type=Path, help="folder of photos for validation patches")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="n2nfunc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the denoiser (built-in data by default)")
    t.add_argument("--train", type=Path, help="course training file (train_data.pkl)")
    t.add_argument("--val", type=Path, help="course validation file (val_data.pkl)")
    t.add_argument("--pairs", type=Path, help="folder with a/ and b/ noisy images of equal names")
    t.add_argument("--photos", type=Path, help="folder of photos to cut noisy pairs from")
    t.add_argument("--n-train", type=int, default=50000, help="built-in / photo training pairs")
    _val_options(t)
    t.add_argument("--epochs", type=int, help=f"default {DEFAULT_CONFIG['num_epochs']}")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--optimizer", choices=["adam", "sgd"])
    t.add_argument("--lr", type=float)
    t.add_argument("--momentum", type=float)
    t.add_argument("--widths", type=int, nargs=2, metavar=("W1", "W2"))
    t.add_argument("--kernel", type=int)
    t.add_argument("--upsampling", choices=["transpose", "nearest"])
    t.add_argument("--out", default="runs/latest", help="output folder (default runs/latest)")
    t.add_argument("--resume", type=Path, help="continue from a checkpoint.pth")
    t.add_argument("--no-pictures", action="store_true", help="skip the PNG plots")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-augment", action="store_true", help="no random flips / quarter turns")
    t.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel training in N local processes (torchrun); the batch is global",
    )
    _common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="PSNR of a checkpoint (default: the shipped weights)")
    e.add_argument("--checkpoint", type=Path)
    e.add_argument("--val", type=Path, help="course validation file (val_data.pkl)")
    _val_options(e)
    _common(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("denoise", help="denoise an image file of any size")
    d.add_argument("input", type=Path)
    d.add_argument("output", type=Path)
    d.add_argument("--checkpoint", type=Path)
    d.add_argument("--tile", type=int, default=256, help="tile size in pixels (memory bound)")
    _common(d)
    d.set_defaults(func=cmd_denoise)

    x = sub.add_parser("export-submission", help="write Miniproject_2/ for the course grader")
    x.add_argument("out_dir", type=Path)
    x.add_argument("--checkpoint", type=Path, help="weights to ship (default: the shipped ones)")
    x.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # passed on to --nproc workers
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
