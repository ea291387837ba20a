"""Training-step speed of this working tree against an earlier commit, in one process.

    python bench/compare_commits.py                 # against HEAD~1
    python bench/compare_commits.py --base 08ec488  # against any revision

The package of ``--base`` is extracted with ``git archive`` into a temporary folder and
imported under a private name, so both versions run side by side on the same weights and
batches. Each network takes one training step the way ``Model.train`` takes it (class
wrappers, MSE, Adam, no input gradient for the first layer); contenders alternate, and each
figure is the median of ``--rounds`` rounds; a last row times a whole ``Model.train_epoch``
(data order, augmentation, schedule). A ratio above 1 means this tree is faster.
"""

import argparse
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, variant_config  # noqa: E402

import n2nfunc as new  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def import_revision(rev: str, folder: Path):
    """The ``n2nfunc`` package as it was at ``rev``, imported as ``n2nfunc_at_base``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "n2nfunc"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
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


def step_fn(package, config: dict, batch: int):
    """One ``Model.train``-style step of ``package``'s network, built from seed 0."""
    model_module = sys.modules[package.__name__ + ".model"]
    net = model_module.build_network(config, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.rand(batch, 3, 32, 32, generator=g)
    loss, opt = package.MSE(), package.Adam(net.param(), lr=1e-4)

    def step():
        loss.forward(net.forward(x), y)
        net.zero_grad()
        net.backward(loss.backward(), input_grad=False)
        opt.step()

    return step


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
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    networks = {
        "reference (nearest, 32/64, k3)": variant_config("nearest", (32, 64), 3),
        "default (transpose, 48/48, k4)": variant_config("transpose", (48, 48), 4),
    }
    with tempfile.TemporaryDirectory() as tmp:
        old = import_revision(args.base, Path(tmp))
        print(
            f"training step, this tree vs {args.base}; {args.threads} threads; median of "
            f"{args.rounds} alternating rounds"
        )
        print(f"{'network':<32}{'batch':>6}{'base ms':>10}{'this ms':>10}{'ratio':>8}")
        for label, config in networks.items():
            for batch in (32, 100):
                times = interleaved(
                    {"base": step_fn(old, config, batch), "this": step_fn(new, config, batch)},
                    warmup=3,
                    repeats=5,
                    rounds=args.rounds,
                )
                print(
                    f"{label:<32}{batch:>6}{1e3 * times['base']:>10.2f}"
                    f"{1e3 * times['this']:>10.2f}{times['base'] / times['this']:>8.2f}"
                )
        config = networks["default (transpose, 48/48, k4)"]
        times = interleaved(
            {"base": epoch_fn(old, config), "this": epoch_fn(new, config)},
            warmup=1,
            repeats=1,
            rounds=args.rounds,
        )
        print(
            f"{'Model.train_epoch, 512 pairs':<32}{32:>6}{1e3 * times['base']:>10.1f}"
            f"{1e3 * times['this']:>10.1f}{times['base'] / times['this']:>8.2f}"
        )


if __name__ == "__main__":
    main()
