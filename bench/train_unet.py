"""Train a shipped U-Net: the documented, reproducible command for each model.

    python bench/train_unet.py --name unet-gaussian --minutes 30   # blind Gaussian 0-50
    python bench/train_unet.py --name unet-poisson  --minutes 30   # blind Poisson peak 5-50
    python bench/train_unet.py --name unet-aliasing --minutes 30   # the exercise's aliasing
    python bench/train_unet.py --name unet-gaussian --steps 4000   # exact replay of a run

Noise2Noise: every step draws fresh random crops (flips, quarter turns, scales 1 and 1/2)
of the training photos (bench/shipped_weights.py's Debian wallpapers, fetched into
``--photos``/train with apt-get; never committed) and two independent noise draws of
each; the input is clipped to [0, 1], the target is not. Adam (betas 0.9/0.99 as in the
paper), warm-up then cosine decay, MSE. ``--minutes`` times the first steps and sets the
number of steps to fit the budget; the run is then fixed by ``--steps`` (printed), so
passing that number replays it exactly. The weights go to runs/weights/NAME.pth (``--out``)
with their architecture and the training settings; shipping them is copying that file into
n2nfunc/weights/, where ``n2nfunc.pretrained(NAME)`` loads them.

``train(...)`` is also used by bench/photo_denoise.py --train-compare (Noise2Clean
targets, the torch.nn twin).
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import unet_train_step  # noqa: E402
from common import machine_lines, torch_device  # noqa: E402
from shipped_weights import DEFAULT_PHOTOS, photos_folder, weights_file  # noqa: E402

import n2nfunc as nf  # noqa: E402
from n2nfunc import allocator  # noqa: E402
from n2nfunc.argtypes import float_range, int_range, noise  # noqa: E402
from n2nfunc.data import builtin_pairs  # noqa: E402
from n2nfunc.data.noise import clean_for, noisy_pair, parse_noise, photo_levels, random_crops  # noqa: E402
from n2nfunc.pretrained import save_unet  # noqa: E402
from n2nfunc.unet import DEFAULT_ARCHITECTURE, from_conv_list, unet  # noqa: E402

BUILTIN = "builtin"  # a batch of the built-in 32x32 aliasing pairs (n2nfunc.data.builtin_pairs)
BUILTIN_PAIRS = 50000
NOISE = {
    "unet-gaussian": ["gaussian:0-50"],
    "unet-poisson": ["poisson:5-50"],
    # the exercise's aliasing on photo pairs at four factors, factor 8 (the course data's
    # noise level, and bench/shipped_weights.py's held-out one) every other batch
    "unet-aliasing": [
        "downsample:4",
        "downsample:8",
        "downsample:6",
        "downsample:8",
        "downsample:12",
        "downsample:8",
    ],
}
# where a model's recipe differs from the defaults: unet-aliasing denoises 32x32 patches, so it
# trains on 32x32 crops (as many pixels per batch) with one pooling less
RECIPE = {"unet-aliasing": {"arch": "3:32,64,48,24", "crop": 32, "batch": 32}}


def noise_spec(text: str) -> str:
    """A ``--noise`` value: ``builtin`` or a spec as the command line takes it."""
    return text if text == BUILTIN else noise(text)


def parse_arch(text: str) -> dict:
    """``DEPTH:ENC,DEC,A,B`` -> unet kwargs."""
    return {**DEFAULT_ARCHITECTURE, **unet_train_step.parse_arch(text)}


class Batches:
    """Fresh training batches: crops of the photos, a noise spec per batch (cycling over
    ``specs``), two noisy draws (or noisy input and clean target with ``clean_targets``)."""

    def __init__(self, photos, specs, crop: int, batch: int, seed: int, clean_targets=False):
        self.specs = [s if s == BUILTIN else parse_noise(s) for s in specs]
        self.builtin = builtin_pairs(BUILTIN_PAIRS, "train") if BUILTIN in specs else None
        self.images = photo_levels(photos, (1, 2))
        self.crop, self.batch, self.clean_targets = crop, batch, clean_targets
        self.g = torch.Generator().manual_seed(seed)
        self.i = 0

    def __next__(self):
        spec = self.specs[self.i % len(self.specs)]
        self.i += 1
        if spec == BUILTIN:  # as many pixels as a photo batch, in 32x32 pairs, flipped / turned
            assert self.builtin is not None and not self.clean_targets
            n = self.batch * (self.crop // 32) ** 2
            idx = torch.randint(len(self.builtin[0]), (n,), generator=self.g)
            k = int(torch.randint(8, (1,), generator=self.g))
            x, y = (t[idx].float().div(255).rot90(k // 2, (2, 3)) for t in self.builtin)
            return (x.flip(3), y.flip(3)) if k % 2 else (x, y)
        factor = int(spec.low) if spec.kind == "downsample" else 1
        clean = random_crops(self.images, self.batch, self.crop * factor, self.g)
        x, y = noisy_pair(clean, spec, self.g)
        return x, (clean_for(clean, spec) if self.clean_targets else y)


def n2nfunc_trainer(arch: dict, lr_schedule, seed: int, device: str, precision="float32"):
    """``(step(x, y) -> loss, params())`` for the n2nfunc U-Net with Adam (``precision``:
    the matmul operands' dtype, see ``n2nfunc.mixed_precision``)."""
    layer = unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(seed), (-1, 3, -1, -1))
    params = nf.tree.map(lambda t: t.to(device), params)
    opt = nf.adam(lr_schedule, betas=(0.9, 0.99))
    step_fn = nf.make_train_step(nf.mixed_precision(layer, precision), nf.mse, opt)
    box = {"params": params, "state": opt.init(params)}

    def step(x, y):
        box["params"], box["state"], value = step_fn(box["params"], box["state"], x, y)
        return float(value)

    return step, lambda: box["params"], layer


def torch_trainer(arch: dict, lr_schedule, seed: int, device: str, precision="float32"):
    """The same recipe with the torch.nn + autograd twin (same initial weights; bfloat16
    runs the forward under ``torch.autocast``)."""
    from unet_twin import TorchUNet

    _, first, layer = n2nfunc_trainer(arch, lr_schedule, seed, "cpu")
    twin = TorchUNet(**arch).load_n2nfunc(first()).to(device)
    opt = torch.optim.Adam(twin.parameters(), lr=lr_schedule(0), betas=(0.9, 0.99))
    count = {"t": 0}

    def step(x, y):
        for group in opt.param_groups:
            group["lr"] = lr_schedule(count["t"])
        count["t"] += 1
        with torch.enable_grad():
            opt.zero_grad()
            with torch.autocast(x.device.type, torch.bfloat16, enabled=precision != "float32"):
                out = twin(x)
            loss = torch.nn.functional.mse_loss(out.float(), y)
            loss.backward()
            opt.step()
        return float(loss)

    def params():
        convs = [(c.weight.detach(), c.bias.detach()) for c in twin.execution_order()]
        return from_conv_list(first(), convs)

    return step, params, layer


def train(
    photos,
    specs,
    arch: dict,
    steps: int | None = None,
    minutes: float | None = None,
    crop: int = 64,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    clean_targets: bool = False,
    backend: str = "n2nfunc",
    log_every: int = 50,
    precision: str = "float32",
):
    """Train a U-Net; returns ``(layer, params, info)``. Exactly one of ``steps`` and
    ``minutes`` (the step count is then set by timing steps of a throwaway run, so the run
    itself, learning-rate schedule included, is the one ``steps`` replays)."""
    if (steps is None) == (minutes is None):
        raise ValueError("give exactly one of steps and minutes")
    make = n2nfunc_trainer if backend == "n2nfunc" else torch_trainer
    if minutes is not None:  # time a few steps of a throwaway run, then fix the step count
        probe = Batches(photos, specs, crop, batch, seed, clean_targets)
        probe_step = make(arch, lambda t: lr, seed, device, precision)[0]
        for _ in range(3):  # warm-up (a GPU's first steps also grow its allocator's pools)
            probe_step(*(b.to(device) for b in next(probe)))
        # whole cycles of the noise specs (some cost more to draw), and at least a second: on
        # an H200 two steps after one warm-up read 0.04 s for a 0.027 s step
        timed, t0, cycle = 0, time.perf_counter(), len(specs)
        while True:
            probe_step(*(b.to(device) for b in next(probe)))
            timed += 1
            short = time.perf_counter() - t0 < 1 and timed < 200
            if timed >= max(2, cycle) and timed % cycle == 0 and not short:
                break
        per_step = (time.perf_counter() - t0) / timed
        steps = max(10, int(minutes * 60 / per_step))
        print(f"{per_step:.2f} s/step -> --steps {steps} for {minutes:g} minutes")
    batches = Batches(photos, specs, crop, batch, seed, clean_targets)
    total: int = steps

    def lr_at(t: int) -> float:
        warmup = min(100, total // 10)
        if t < warmup:
            return lr * (t + 1) / warmup
        frac = min(1.0, (t - warmup) / max(1, total - warmup))
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))

    step, params, layer = make(arch, lr_at, seed, device, precision)
    start = time.perf_counter()
    t, running, since, losses = 0, 0.0, 0, []
    while t < total:
        x, y = next(batches)
        value = step(x.to(device), y.to(device))
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {t}; lower --lr")
        running += value
        since += 1
        t += 1
        if t % log_every == 0 or t == total:
            losses.append(running / since)
            elapsed = time.perf_counter() - start
            print(
                f"step {t}/{total}  loss {losses[-1]:.5f}  {elapsed / 60:.1f} min",
                flush=True,
            )
            running, since = 0.0, 0
    info = {
        "noise": [s if s == BUILTIN else str(parse_noise(s)) for s in specs],
        "steps": t,
        "crop": crop,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "targets": "clean" if clean_targets else "noisy",
        "backend": backend,
        "precision": precision,
        "minutes": (time.perf_counter() - start) / 60,
        "threads": torch.get_num_threads(),
        "final_loss": losses[-1] if losses else None,
        "device": device,
    }
    return layer, nf.tree.map(lambda p: p.detach().cpu().contiguous(), params()), info


def photo_folder(root: Path, part: str):
    """The photos of ``root/part`` (fetched with bench/shipped_weights.py's sources if absent)."""
    from shipped_weights import fetch_photos, loaded_photos

    fetch_photos(root, (part,))
    return loaded_photos(root / part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--name", choices=sorted(NOISE), required=True)
    ap.add_argument(
        "--noise",
        action="append",
        type=noise_spec,
        help="noise spec(s), default per --name; 'builtin': a batch of the built-in 32x32 pairs",
    )
    ap.add_argument("--photos", type=photos_folder, default=DEFAULT_PHOTOS)
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float_range(0))
    budget.add_argument("--steps", type=int_range(1))
    ap.add_argument(
        "--arch",
        type=unet_train_step.arch_text,
        default=None,
        help="DEPTH:ENC,DEC,A,B (default: per --name)",
    )
    ap.add_argument(
        "--crop", type=int_range(1), default=None, help="default 64 (32 for unet-aliasing)"
    )
    ap.add_argument(
        "--batch", type=int_range(1), default=None, help="default 8 (32 for unet-aliasing)"
    )
    ap.add_argument("--lr", type=float_range(0), default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", type=torch_device, default="cpu")
    ap.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="matmul operands (bfloat16: mixed precision, float32 master weights)",
    )
    ap.add_argument(
        "--out",
        type=weights_file,
        default=None,
        help="default runs/weights/NAME.pth (copy it into n2nfunc/weights/ to ship it)",
    )
    args = ap.parse_args()
    allocator.keep_freed_memory()  # training loop: reuse freed buffers (n2nfunc/allocator.py)
    torch.set_grad_enabled(False)
    recipe = {"arch": None, "crop": 64, "batch": 8, **RECIPE.get(args.name, {})}
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    arch = parse_arch(args.arch) if args.arch else dict(DEFAULT_ARCHITECTURE)
    specs = args.noise or NOISE[args.name]
    photos = photo_folder(args.photos, "train")
    print(machine_lines(args.device, args.precision))
    print(f"{args.name}: {len(photos)} photos, noise {specs}, architecture {arch}")
    _, params, info = train(
        photos,
        specs,
        arch,
        steps=args.steps,
        minutes=args.minutes,
        crop=args.crop,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    out = args.out or ROOT / "runs" / "weights" / f"{args.name}.pth"  # never the shipped file
    replay = [f"python bench/train_unet.py --name {args.name} --steps {info['steps']}"]
    replay += [f"--noise {s}" for s in args.noise or []]
    replay += [f"--arch {args.arch}"] if args.arch else []
    replay += [f"--crop {args.crop} --batch {args.batch} --lr {args.lr} --seed {args.seed}"]
    replay += [f"--precision {args.precision}"] if args.precision != "float32" else []
    info["command"] = " ".join(replay)
    out.parent.mkdir(parents=True, exist_ok=True)  # (checked writable before training)
    save_unet(out, arch, params, info)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB) after {info['minutes']:.1f} min")
    print(f"replay: {info['command']}")


if __name__ == "__main__":
    main()
