"""The course grader's whole flow on an exported submission, timed against its 45-minute
CPU budget: import (n2nfunc blocked), load the weights, train one epoch on 50,000
built-in pairs, predict 1,000 validation images, score PSNR.

    python bench/grader_flow.py [--n-train 50000]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from n2nfunc import hardware  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.data import builtin_pairs  # noqa: E402
from n2nfunc.export import export_submission  # noqa: E402

GRADER = textwrap.dedent("""
    import importlib.abc, json, sys, time
    import torch
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("n2nfunc", "tqdm"):
                raise ImportError(name + " is blocked")
    sys.meta_path.insert(0, _Block())
    torch.set_grad_enabled(False)
    torch.set_num_threads({threads})
    t = {{}}
    t0 = time.perf_counter()
    from model import Model
    m = Model()
    m.load_pretrained_model()
    t["load"] = time.perf_counter() - t0
    xt, yt, xv, yv = torch.load({data!r})
    t0 = time.perf_counter()
    m.train(xt, yt, num_epochs=1)
    t["train 1 epoch"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = m.predict(xv)
    t["predict"] = time.perf_counter() - t0
    mse = ((out.double() / 255 - yv.double() / 255) ** 2).mean((1, 2, 3))
    noisy = ((xv.double() / 255 - yv.double() / 255) ** 2).mean((1, 2, 3))
    t["psnr"] = float((-10 * mse.log10()).mean())
    t["noisy psnr"] = float((-10 * noisy.log10()).mean())
    print(json.dumps(t))
""")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int_range(1), default=50000)
    ap.add_argument("--threads", type=int_range(1), default=2)
    args = ap.parse_args()
    print(hardware.describe())  # the machine, beside every timing
    xt, yt = builtin_pairs(args.n_train, "train")
    xv, yv = builtin_pairs(1000, "val")
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_submission(tmp)
        data = str(Path(tmp) / "data.pt")
        torch.save((xt, yt, xv, yv), data)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", GRADER.format(threads=args.threads, data=data)],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            sys.exit(f"the grader's process failed (exit {proc.returncode}):\n{proc.stderr}")
        total = time.perf_counter() - t0
    t = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"grader flow on the exported submission ({args.n_train} training pairs, "
        f"{args.threads} threads):"
    )
    for key in ("load", "train 1 epoch", "predict"):
        print(f"  {key:<16}{t[key]:>8.1f} s")
    print(
        f"  {'whole process':<16}{total:>8.1f} s = {total / 60:.1f} min of the 45-minute CPU "
        f"budget ({100 * total / 2700:.0f}%)"
    )
    print(f"  PSNR after fine-tuning: {t['psnr']:.2f} dB (noisy input {t['noisy psnr']:.2f} dB)")


if __name__ == "__main__":
    main()
