"""Speed of this working tree against an earlier commit, in one process.

    python bench/compare_commits.py                 # against HEAD~1
    python bench/compare_commits.py --base 08ec488  # against any revision
    python bench/compare_commits.py --base 08ec488 --precision both --unet --predict

The package of ``--base`` is extracted with ``git archive`` into a temporary folder and
imported under a private name, so both versions run side by side on the same weights and
batches. Each network takes one training step the way ``Model.train`` takes it (class
wrappers, MSE, Adam, no input gradient for the first layer; bfloat16 through
``mixed_precision``); contenders alternate, and each figure is the median of ``--rounds``
rounds; a float32 row times a whole ``Model.train_epoch`` (data order, augmentation,
schedule). ``--unet`` adds the U-Net's functional training step (depth 4, widths
32/64/48/24, 8 crops of 64 x 64), ``--predict`` ``Model.predict`` with the shipped weights on
one 512 x 512 image and on 1000 images of 32 x 32. A ratio above 1 means this tree is faster;
``rounds`` is the middle half of the ratios of single rounds (base and this tree timed side by
side): a median ratio of 1.02 whose rounds read 0.97-1.06 is within the machine's noise.
"""

import argparse
import importlib.util
import inspect
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
from common import (  # noqa: E402
    REFERENCE_CONFIG,
    allocator_line,
    interleaved_rounds,
    ratio_spread,
    variant_config,
)

import n2nfunc as new  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def batch_list(text: str) -> tuple[int, ...]:
    """``"1,32"`` -> (1, 32): positive ints, comma-separated."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,32,100, got {text!r}")
    return sizes


def import_revision(rev: str, folder: Path):
    """The ``n2nfunc`` package as it was at ``rev``, imported as ``n2nfunc_at_base``."""
    done = subprocess.run(
        ["git", "archive", "--format=tar", rev, "n2nfunc"], cwd=ROOT, capture_output=True
    )
    if done.returncode:
        sys.exit(f"--base {rev}: {done.stderr.decode().strip() or 'git archive failed'}")
    archive = done.stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    name = "n2nfunc_at_base"
    spec = importlib.util.spec_from_file_location(
        name,
        folder / "n2nfunc" / "__init__.py",
        submodule_search_locations=[str(folder / "n2nfunc")],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def step_fn(package, config: dict, batch: int, precision: str = "float32"):
    """One ``Model.train``-style step of ``package``'s network, built from seed 0."""
    model_module = sys.modules[package.__name__ + ".model"]
    net = model_module.build_network(config, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.rand(batch, 3, 32, 32, generator=g)
    loss, opt = package.MSE(), package.Adam(net.param(), lr=1e-4)
    runner = net
    if precision != "float32":
        runner = package.Module(package.mixed_precision(net.layer, precision), net.params)
        runner.grads = net.grads
    # as Model.train: what the forward kept freed as the backward pass goes (where a commit
    # has the option: before it, backward always did so)
    takes = "retain_graph" in inspect.signature(runner.backward).parameters
    release = {"retain_graph": False} if takes else {}

    def step():
        loss.forward(runner.forward(x), y)
        net.zero_grad()
        runner.backward(loss.backward(), input_grad=False, **release)
        opt.step()

    return step


def unet_step_fn(package, precision: str, batch: int = 8, crop: int = 64):
    """One functional training step of ``package``'s U-Net (bench/unet_train_step.py's
    "functional" row: the step through ``make_train_step``, not the class wrappers that
    ``Model.train`` runs)."""
    layer = sys.modules[package.__name__ + ".unet"].unet(depth=4, widths=(32, 64, 48, 24))
    _, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, crop, crop))
    g = torch.Generator().manual_seed(1)
    x, y = (
        torch.rand(batch, 3, crop, crop, generator=g),
        torch.rand(batch, 3, crop, crop, generator=g),
    )
    opt = package.adam(1e-3)
    box = {"params": params, "state": opt.init(params)}
    step = package.make_train_step(package.mixed_precision(layer, precision), package.mse, opt)

    def run():
        box["params"], box["state"], _ = step(box["params"], box["state"], x, y)

    return run


def unet_apply_fn(package, precision: str, size: int = 512):
    """The U-Net's forward pass (what ``n2nfunc denoise`` runs per tile) on one image."""
    layer = sys.modules[package.__name__ + ".unet"].unet(depth=4, widths=(32, 64, 48, 24))
    _, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, size, size))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    layer = package.mixed_precision(layer, precision)
    return lambda: layer.apply(params, x)


def predict_fn(package, precision: str, shape: tuple):
    """``Model.predict`` of ``package`` with its shipped weights on a random uint8 batch."""
    model = sys.modules[package.__name__ + ".model"].Model({"precision": precision})
    model.load_pretrained_model()
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(3))
    x = x.to(torch.uint8)
    return lambda: model.predict(x)


def epoch_fn(package, config: dict, pairs: int = 512):
    """One ``Model.train_epoch`` of ``package`` over ``pairs`` fixed pairs (batch 32, with
    augmentation), the way ``n2nfunc train`` runs an epoch."""
    module = sys.modules[package.__name__ + ".model"]
    model = module.Model({k: v for k, v in config.items() if k in module.DEFAULT_CONFIG})
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(pairs, 3, 32, 32, generator=g), torch.rand(pairs, 3, 32, 32, generator=g)
    x, y = model.prepare_pairs(x, y)
    return lambda: model.train_epoch(x, y, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="git revision to compare against")
    parser.add_argument(
        "--rounds", type=int_range(1), default=5, help="alternating rounds (median)"
    )
    parser.add_argument("--threads", type=int_range(1), default=2, help="torch threads")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="float32")
    parser.add_argument(
        "--batches",
        type=batch_list,
        default=(32, 100),
        help="batch sizes of the two networks' steps, comma-separated (default: 32,100; a "
        "batch of 1 shows the per-op costs)",
    )
    parser.add_argument("--unet", action="store_true", help="also the U-Net's training step")
    parser.add_argument(
        "--predict", action="store_true", help="also Model.predict (with --unet: the U-Net's apply)"
    )
    args = parser.parse_args()
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    networks = {
        "reference (nearest, 32/64, k3)": REFERENCE_CONFIG,
        "default (transpose, 48/48, k4)": variant_config("transpose", (48, 48), 4),
    }
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.base, Path(tmp))
        print(allocator_line())
        print(
            f"this tree vs {args.base}; {args.threads} threads; median of {args.rounds} "
            "alternating rounds"
        )
        print(f"{'what':<58}{'base ms':>10}{'this ms':>10}{'ratio':>8}{'rounds':>12}")

        def row(label, base_fn, this_fn, repeats=5):
            samples = interleaved_rounds(
                {"base": base_fn, "this": this_fn}, warmup=2, repeats=repeats, rounds=args.rounds
            )
            base, this = (statistics.median(samples[k]) for k in ("base", "this"))
            spread = ratio_spread(samples["base"], samples["this"])
            times = f"{1e3 * base:>10.2f}{1e3 * this:>10.2f}"
            print(f"{label:<58}{times}{base / this:>8.2f}{spread:>12}")

        for precision in precisions:
            for label, config in networks.items():
                for batch in args.batches:
                    row(
                        f"{label} step, batch {batch}, {precision}",
                        step_fn(old, config, batch, precision),
                        step_fn(new, config, batch, precision),
                    )
            if args.unet:
                row(
                    f"U-Net step, 8 x 64 x 64, {precision}",
                    unet_step_fn(old, precision),
                    unet_step_fn(new, precision),
                    repeats=3,
                )
            if args.unet and args.predict:
                row(
                    f"U-Net apply 1x3x512x512, {precision}",
                    unet_apply_fn(old, precision),
                    unet_apply_fn(new, precision),
                    repeats=2,
                )
            if args.predict:
                for shape in ((1, 3, 512, 512), (1000, 3, 32, 32)):
                    row(
                        f"Model.predict {'x'.join(map(str, shape))}, {precision}",
                        predict_fn(old, precision, shape),
                        predict_fn(new, precision, shape),
                        repeats=3,
                    )
        config = networks["default (transpose, 48/48, k4)"]
        row(
            "Model.train_epoch, 512 pairs, batch 32",
            epoch_fn(old, config),
            epoch_fn(new, config),
            repeats=1,
        )


if __name__ == "__main__":
    main()
