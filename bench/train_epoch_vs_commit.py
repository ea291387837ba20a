"""Single-process training speed: this tree's ``Model.train_epoch`` against the one of an
older commit, interleaved in one process (the rest of the package is this tree's).

    python bench/train_epoch_vs_commit.py 08ec488 --rounds 7 [--threads 1 --cpu-time]

Each round trains one epoch of the same pairs with each version (same seed, same work),
alternating which goes first; prints the medians and their ratio.
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import n2nfunc  # noqa: E402
from n2nfunc.model import Model  # noqa: E402


def old_model_class(commit: str):
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:n2nfunc/model.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "model_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("n2nfunc.model_old", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = n2nfunc.__name__
    spec.loader.exec_module(module)
    return module.Model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("commit")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pairs", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time (steadier than wall time on a busy machine)",
    )
    args = p.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.pairs, 3, 32, 32, generator=g)
    y = torch.rand(args.pairs, 3, 32, 32, generator=g)
    versions = {"this tree": Model, args.commit: old_model_class(args.commit)}

    clock = time.process_time if args.cpu_time else time.perf_counter

    def epoch(cls) -> float:
        model = cls({"augment": True})
        t0 = clock()
        model.train_epoch(x, y, 0, 12)
        return clock() - t0

    for cls in versions.values():
        epoch(cls)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in versions}
    names = list(versions)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(epoch(versions[name]))
    med = {name: statistics.median(v) for name, v in times.items()}
    for name in names:
        print(f"{name}: median {med[name]:.3f} s ({clock.__name__}) per epoch")
    print(f"{args.pairs} pairs, {args.threads} threads, {args.rounds} rounds")
    print(f"ratio this tree / {args.commit}: {med[names[0]] / med[names[1]]:.3f} (<= 1: no slower)")


if __name__ == "__main__":
    main()
