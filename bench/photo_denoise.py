"""Photo denoising evaluation: the shipped n2nfunc U-Nets against classical denoisers on
held-out photographs, PSNR and SSIM (the README table).

    python bench/photo_denoise.py                         # evaluate the shipped weights
    python bench/photo_denoise.py --set test              # ... on the untouched test photos
    python bench/photo_denoise.py --picture runs/photo.png
    python bench/photo_denoise.py --train-compare --compare-minutes 10   # N2N vs N2C vs torch
    python bench/photo_denoise.py --gaussian-weights runs/g.pth --poisson-weights runs/p.pth

Held-out set: bench/shipped_weights.py's held-out photos (scikit-image's sample photos and
matplotlib's grace_hopper, never used for training, but looked at to choose the shipped
weights' settings: a validation set), the central ``--crop`` x ``--crop`` (default 256) of
each. ``--set test`` takes its untouched test photos instead (12 of Ubuntu Touch 16.04's
wallpapers, each shrunk by a whole factor to a short side of 512-1023 pixels, and
scikit-learn's two sample photos, 640 x 427), which nothing was chosen on. Noise: Gaussian
sigma 15, 25, 50 (0-255 scale) and Poisson peak 30 (``n2nfunc.data.noise``), one fixed draw
per image, the noisy input clipped to [0, 1] for
every method. PSNR as n2nfunc.metrics.psnr; SSIM of Wang et al. (11x11 Gaussian window,
sigma 1.5, K = 0.01 / 0.03, mean over channels; equal to scikit-image's
``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``).

Methods: the noisy input; n2nfunc U-Net (Noise2Noise, ``pretrained("unet-gaussian")`` or
``"unet-poisson"``, tiled with ``denoise_image``); BM3D (``pip install bm3d``; Gaussian:
the true sigma; Poisson: the Anscombe transform, BM3D with sigma 1, and the closed-form
approximation of the exact unbiased inverse of Makitalo and Foi); scikit-image's
non-local means (sigma from ``estimate_sigma``, h = 0.8 sigma, fast mode) and wavelet
(BayesShrink, soft, YCbCr) denoisers (``pip install scikit-image PyWavelets``). A method whose
package or weights are missing is skipped with a note.

``--aliasing`` adds the exercise's degradation: ``unet-aliasing`` against the shipped
``bestmodel.pth`` on bench/shipped_weights.py's held-out 32x32 patches (factor 8).

``--train-compare`` (sigma 25 only) trains, for one equal number of steps fixed by
``--compare-minutes`` on the first contender: the U-Net Noise2Noise, the same U-Net with
clean targets (Noise2Clean), and its torch.nn + autograd twin with the same recipe,
initial weights and batches; then evaluates all three.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from shipped_weights import DEFAULT_PHOTOS, check_apart, photos_folder  # noqa: E402

import n2nfunc as nf  # noqa: E402
from n2nfunc import hardware  # noqa: E402
from n2nfunc.argtypes import float_range, int_range  # noqa: E402
from n2nfunc.data import write_image  # noqa: E402
from n2nfunc.data.files import IMAGE_SUFFIXES  # noqa: E402
from n2nfunc.data.noise import add_noise, parse_noise  # noqa: E402
from n2nfunc.metrics import psnr  # noqa: E402
from n2nfunc.pretrained import load_network, weights_path  # noqa: E402

LEVELS = ["gaussian:15", "gaussian:25", "gaussian:50", "poisson:30"]


def camera_noise(text: str) -> str:
    """A --levels entry: Gaussian or Poisson noise (downsampling changes the image size)."""
    from n2nfunc.data.noise import parse_noise

    try:
        kind = parse_noise(text).kind
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if kind == "downsample":
        raise argparse.ArgumentTypeError(
            f"{text!r}: only gaussian or poisson levels (see --aliasing)"
        )
    return text.strip()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM over images and channels of (N, C, H, W) images in [0, 1]."""
    a, b = a.double(), b.double()
    x = torch.arange(11, dtype=torch.float64) - 5
    g = (-(x**2) / (2 * 1.5**2)).exp()
    g = g / g.sum()
    c = a.shape[1]
    win = (g[:, None] * g[None, :]).expand(c, 1, 11, 11)

    def blur(t):
        return F.conv2d(t, win, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    va = blur(a * a) - mu_a**2
    vb = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    return float(s.mean())


def photo_crops(root: Path, crop: int, part: str = "heldout") -> torch.Tensor:
    """The central ``crop`` x ``crop`` of each photo of ``root/part`` large enough, 0-1."""
    from train_unet import photo_folder

    photos = photo_folder(root, part)  # (fetched first, then checked)
    check_apart(root, part)
    out = []
    for p in photos:
        h, w = p.shape[1:]
        if min(h, w) < crop:
            continue
        y, x = (h - crop) // 2, (w - crop) // 2
        out.append(p[:, y : y + crop, x : x + crop].float() / 255)
    return torch.stack(out) if out else torch.empty(0, 3, crop, crop)


def n2nfunc_method(path: Path):
    layer, params, _ = load_network(path)

    def run(noisy, spec):
        return torch.stack([nf.denoise_image(layer, params, im) for im in noisy]).clamp(0, 1)

    return run


def _numpy_images(t):
    return [im.permute(1, 2, 0).double().numpy() for im in t]


def _from_numpy(arrays):
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() for a in arrays]).clamp(0, 1)


def bm3d_method():
    try:
        import bm3d
    except ImportError:
        return None

    def anscombe_inverse(y):  # closed-form approximation of the exact unbiased inverse
        y = y.clip(1e-3, None)
        s = math.sqrt(1.5)
        return y**2 / 4 + s / 4 / y - 11 / 8 / y**2 + 5 * s / 8 / y**3 - 1 / 8

    def run(noisy, spec):
        out = []
        for im in _numpy_images(noisy):
            if spec.kind == "gaussian":
                out.append(bm3d.bm3d(im, sigma_psd=spec.low / 255))
            else:
                z = 2 * (im * spec.low + 3 / 8) ** 0.5
                out.append(anscombe_inverse(bm3d.bm3d(z, sigma_psd=1.0)) / spec.low)
        return _from_numpy(out)

    return run


def skimage_methods():
    try:
        import pywt  # noqa: F401 -- estimate_sigma and denoise_wavelet need it; scikit-image
        from skimage.restoration import denoise_nl_means, denoise_wavelet, estimate_sigma
    except ImportError:  # does not install it
        return {}

    def nl_means(noisy, spec):
        out = []
        for im in _numpy_images(noisy):
            sigma = float(estimate_sigma(im, channel_axis=-1, average_sigmas=True))
            out.append(
                denoise_nl_means(
                    im,
                    h=0.8 * sigma,
                    sigma=sigma,
                    fast_mode=True,
                    patch_size=5,
                    patch_distance=6,
                    channel_axis=-1,
                )
            )
        return _from_numpy(out)

    def wavelet(noisy, spec):
        return _from_numpy(
            [
                denoise_wavelet(
                    im,
                    channel_axis=-1,
                    convert2ycbcr=True,
                    method="BayesShrink",
                    mode="soft",
                    rescale_sigma=True,
                )
                for im in _numpy_images(noisy)
            ]
        )

    return {"skimage NL-means": nl_means, "skimage wavelet (BayesShrink)": wavelet}


def noisy_inputs(clean, levels) -> dict:
    """level -> the noisy crops: one generator (seed 12) draws every level of LEVELS in turn,
    then any other level asked for, so that a level's draw is the same whichever levels a
    run lists (``--levels gaussian:25`` scores the draw of the default table's column)."""
    g = torch.Generator().manual_seed(12)
    drawn = {lv: add_noise(clean, lv, g) for lv in LEVELS}
    drawn.update({lv: add_noise(clean, lv, g) for lv in levels if lv not in drawn})
    return {lv: drawn[lv] for lv in levels}


def table(clean, methods: dict, levels, notes: list, picture: Path | None):
    print(f"\n{len(clean)} crops of {clean.shape[2]}x{clean.shape[3]}; PSNR dB / SSIM")
    print(f"{'method':<34}" + "".join(f"{lv:>20}" for lv in levels))
    noisy = noisy_inputs(clean, levels)
    rows: dict = {"noisy input": {lv: noisy[lv] for lv in levels}}
    for name, run in methods.items():
        rows[name] = {}
        for lv in levels:
            fn = run.get(parse_noise(lv).kind)  # {noise kind: denoiser}
            if fn is None:
                continue
            t0 = time.perf_counter()
            rows[name][lv] = fn(noisy[lv], parse_noise(lv))
            rows[name][f"{lv} s"] = time.perf_counter() - t0
    for name, outs in rows.items():
        cells = [
            f"{psnr(outs[lv], clean):7.2f} / {ssim(outs[lv], clean):.3f}" if lv in outs else "-"
            for lv in levels
        ]
        print(f"{name:<34}" + "".join(f"{c:>20}" for c in cells))
    paired_differences(rows, clean, levels, "n2nfunc U-Net (Noise2Noise)", "BM3D")
    for n in notes:
        print("note:", n)
    if picture is not None and "gaussian:25" in levels:
        order = ["noisy input", "BM3D", "n2nfunc U-Net (Noise2Noise)"]
        tiles = [rows[k]["gaussian:25"][0] for k in order if "gaussian:25" in rows.get(k, {})]
        strip = torch.cat(tiles + [clean[0]], 2)
        write_image(picture, (strip * 255).round().clamp(0, 255).to(torch.uint8))
        print(f"picture ({' | '.join(order)} | clean, where present): {picture}")
    return rows


def paired_differences(rows: dict, clean, levels, a: str, b: str) -> None:
    """Per photo, PSNR of ``a`` minus that of ``b`` on the same noisy crop, and their mean with
    its standard error: with a handful of photos, whether a mean margin is more than the
    spread between photos."""
    for lv in levels:
        if lv not in rows.get(a, {}) or lv not in rows.get(b, {}):
            continue
        d = [
            psnr(rows[a][lv][i : i + 1], clean[i : i + 1])
            - psnr(rows[b][lv][i : i + 1], clean[i : i + 1])
            for i in range(len(clean))
        ]
        mean = sum(d) / len(d)
        sd = (sum((x - mean) ** 2 for x in d) / (len(d) - 1)) ** 0.5 if len(d) > 1 else math.nan
        se = sd / len(d) ** 0.5
        print(
            f"{lv}: {a} minus {b}, dB per photo: {' '.join(f'{x:+.2f}' for x in d)}; "
            f"mean {mean:+.2f} +- {se:.2f} (standard error, {len(d)} photos)"
        )


def aliasing_table(root: Path, n: int, notes: list) -> None:
    from shipped_weights import heldout_sets

    sets = heldout_sets(root, n)
    names = ["exercise", "unet-aliasing"]
    print(f"\naliasing (the exercise's noise), {n} pairs each; PSNR dB")
    print(f"{'network':<20}" + "".join(f"{k:>30}" for k in sets))
    for name in names:
        if not weights_path(name).is_file():
            notes.append(f"{name}: weights not shipped yet")
            continue
        layer, params = nf.pretrained(name)
        cells = []
        for noisy, clean in sets.values():
            x = noisy.float() / 255
            out = layer.apply(params, x).clamp(0, 1)
            cells.append(f"{psnr(out, clean.float() / 255):.2f} (noisy {psnr(x, clean / 255):.2f})")
        print(f"{name:<20}" + "".join(f"{c:>30}" for c in cells))


def train_compare(root: Path, clean, minutes: float, batch: int, crop: int) -> None:
    from train_unet import photo_folder, train

    from n2nfunc.unet import DEFAULT_ARCHITECTURE

    photos = photo_folder(root, "train")
    spec = ["gaussian:25"]
    runs = {}
    t0 = time.perf_counter()
    runs["U-Net Noise2Noise (n2nfunc)"] = train(
        photos, spec, DEFAULT_ARCHITECTURE, minutes=minutes, batch=batch, crop=crop
    )
    steps = runs["U-Net Noise2Noise (n2nfunc)"][2]["steps"]
    runs["U-Net Noise2Clean (n2nfunc)"] = train(
        photos, spec, DEFAULT_ARCHITECTURE, steps=steps, batch=batch, crop=crop, clean_targets=True
    )
    runs["U-Net Noise2Noise (torch.nn twin)"] = train(
        photos, spec, DEFAULT_ARCHITECTURE, steps=steps, batch=batch, crop=crop, backend="torch"
    )
    g = torch.Generator().manual_seed(12)
    noisy = add_noise(clean, "gaussian:25", g)
    print(
        f"\nsigma 25, {steps} steps of batch {batch} x {crop}^2 each, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'training':<36}{'PSNR':>8}{'SSIM':>8}{'minutes':>9}")
    for name, (layer, params, info) in runs.items():
        out = torch.stack([nf.denoise_image(layer, params, im) for im in noisy]).clamp(0, 1)
        print(f"{name:<36}{psnr(out, clean):8.2f}{ssim(out, clean):8.3f}{info['minutes']:9.1f}")
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=photos_folder, default=DEFAULT_PHOTOS)
    ap.add_argument(
        "--set",
        choices=["heldout", "test"],
        default="heldout",
        help="held-out photos (the validation set) or the untouched test photos",
    )
    ap.add_argument("--crop", type=int_range(16), default=256)
    ap.add_argument("--limit", type=int_range(1), default=None, help="use only the first N photos")
    ap.add_argument("--levels", nargs="+", default=LEVELS, type=camera_noise)
    ap.add_argument("--gaussian-weights", type=Path, default=None)
    ap.add_argument("--poisson-weights", type=Path, default=None)
    ap.add_argument("--picture", type=Path, default=None)
    ap.add_argument("--aliasing", action="store_true")
    ap.add_argument("--aliasing-pairs", type=int_range(1), default=2000)
    ap.add_argument("--train-compare", action="store_true")
    ap.add_argument("--compare-minutes", type=float_range(0), default=10.0)
    ap.add_argument("--compare-batch", type=int_range(1), default=8)
    ap.add_argument("--compare-crop", type=int_range(16), default=64)
    args = ap.parse_args()
    print(hardware.describe())  # the machine, beside every timing
    if args.aliasing and args.set == "test":
        ap.error("--aliasing measures on the held-out photos' patches: run it without --set test")
    if args.picture is not None and "gaussian:25" not in args.levels:
        ap.error("--picture shows the gaussian:25 column: add gaussian:25 to --levels")
    if args.picture is not None and args.picture.suffix.lower() not in IMAGE_SUFFIXES:
        ap.error(f"--picture {args.picture}: expected one of {', '.join(IMAGE_SUFFIXES)}")
    for option, path in (
        ("--gaussian-weights", args.gaussian_weights),
        ("--poisson-weights", args.poisson_weights),
    ):
        if path is not None and not path.is_file():
            ap.error(f"{option}: {path} is not a file")
    torch.set_grad_enabled(False)
    clean = photo_crops(args.photos, args.crop, args.set)[: args.limit]
    if not len(clean):
        ap.error(f"--crop {args.crop}: no photo in {args.photos / args.set} is that large")
    print(f"photos: {args.photos / args.set}")
    notes: list[str] = []
    methods: dict = {}
    unets = {}
    for kind, given in (("gaussian", args.gaussian_weights), ("poisson", args.poisson_weights)):
        path = given or weights_path(f"unet-{kind}")
        if path.is_file():
            try:
                unets[kind] = n2nfunc_method(path)
            except ValueError as e:
                ap.error(f"--{kind}-weights: {e}")
        else:
            notes.append(f"n2nfunc U-Net for {kind}: {path} not found (weights not shipped yet)")
    if unets:
        methods["n2nfunc U-Net (Noise2Noise)"] = unets
    bm3d = bm3d_method()
    if bm3d is None:
        notes.append("BM3D skipped: `pip install bm3d` to include it")
    else:
        methods["BM3D"] = {"gaussian": bm3d, "poisson": bm3d}
    sk = skimage_methods()
    if not sk:
        notes.append(
            "scikit-image denoisers skipped: `pip install scikit-image PyWavelets` to include them"
        )
    for name, fn in sk.items():
        methods[name] = {"gaussian": fn, "poisson": fn}
    table(clean, methods, args.levels, notes, args.picture)
    if args.aliasing:
        before = len(notes)
        aliasing_table(args.photos, args.aliasing_pairs, notes)
        for n in notes[before:]:
            print("note:", n)
    if args.train_compare:
        train_compare(
            args.photos, clean, args.compare_minutes, args.compare_batch, args.compare_crop
        )


if __name__ == "__main__":
    main()
