"""PSNR table on the built-in data: the Model's default recipe, the same network, recipe,
seed and initial weights trained with torch.nn + autograd, the same recipe on clean
targets, and a simple torch.nn recipe (Adam 1e-3, batch 64) given the same wall time.

    python bench/psnr.py                     # 50,000 pairs, default epochs (long)
    python bench/psnr.py --n-train 20000 --epochs 6
    python bench/psnr.py --precisions        # only n2nfunc float32 vs bfloat16 (same seed)
    python bench/psnr.py --precisions --n-train 4000 --epochs 3   # a short check
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
from common import machine_lines, torch_net  # noqa: E402

from n2nfunc import allocator, optim  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.data import builtin_pairs, make_pairs  # noqa: E402
from n2nfunc.metrics import psnr  # noqa: E402
from n2nfunc.model import Model, _dihedral  # noqa: E402


def score(predict, xv, yv) -> float:
    return psnr(predict(xv.float() / 255).clamp(0, 1) * 255, yv.float(), 255.0)


def train_ours(config, x, y, epochs):
    m = Model(config)
    t0 = time.perf_counter()
    m.train(x, y, num_epochs=epochs)
    return m, time.perf_counter() - t0


def train_torch_same_recipe(config, x, y, epochs):
    """torch.nn + autograd + torch.optim.Adam replaying Model.train_epoch step for step: same
    initial weights, batch order, augmentation draws and learning-rate schedule."""
    twin = Model(config)  # same seed: same weights and generator
    net = torch_net(config, twin.net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=config["lr"])
    g = twin.generator
    x, y = x.float() / 255, y.float() / 255
    n, bs = x.shape[0], config["batch_size"]
    bs = min(bs, n)  # as Model.train_epoch: a batch is at most the whole set
    steps = n // bs
    total = max(1, epochs * steps)
    schedule = optim.cosine_decay(
        config["lr"],
        total + 1,
        config["final_lr_fraction"],
        min(config["warmup_steps"], total // 10),
    )
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = torch.empty(n).uniform_(generator=g).argsort()
        for b in range(steps):
            idx = order[b * bs : (b + 1) * bs]
            xb, yb = x[idx], y[idx]
            if config["augment"]:
                k = int(torch.empty(1).random_(8, generator=g))
                xb, yb = _dihedral(xb, k), _dihedral(yb, k)
            with torch.enable_grad():
                opt.zero_grad()
                F.mse_loss(net(xb), yb).backward()
            for group in opt.param_groups:
                group["lr"] = schedule(epoch * steps + b)
            opt.step()
    return net, time.perf_counter() - t0


def train_torch_simple(config, x, y, seconds):
    """Adam 1e-3, batch 64, constant rate, no augmentation, for ``seconds`` of wall time."""
    twin = Model(config)
    net = torch_net(config, twin.net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = x.float() / 255, y.float() / 255
    g = torch.Generator().manual_seed(0)
    t0, images = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        order = torch.randperm(x.shape[0], generator=g)
        for b in range(0, x.shape[0] - 63, 64):
            idx = order[b : b + 64]
            with torch.enable_grad():
                opt.zero_grad()
                F.mse_loss(net(x[idx]), y[idx]).backward()
            opt.step()
            images += 64
            if time.perf_counter() - t0 >= seconds:
                break
    return net, images / x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n-train", type=int_range(64), default=50000, help="(at least the simple recipe's batch)"
    )
    ap.add_argument("--n-val", type=int_range(1), default=1000)
    ap.add_argument("--epochs", type=int_range(1), default=None)
    ap.add_argument("--threads", type=int_range(1), default=2)
    ap.add_argument(
        "--precisions",
        action="store_true",
        help="only train the default recipe in float32 and in bfloat16 and compare",
    )
    args = ap.parse_args()
    allocator.keep_freed_memory()  # training loop: reuse freed buffers (n2nfunc/allocator.py)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    print(machine_lines(precision="bfloat16" if args.precisions else "float32"))
    config = dict(Model().config)
    epochs = config["num_epochs"] if args.epochs is None else args.epochs
    xt, yt = builtin_pairs(args.n_train, "train")
    xc, yc = make_pairs(args.n_train, "train", clean_targets=True)  # the same inputs, clean
    if not torch.equal(xc, xt):  # targets (a cache of another generator version would differ)
        raise SystemExit("the clean-target pairs' inputs differ from the training pairs'")
    xv, yv = builtin_pairs(args.n_val, "val")
    print(
        f"{args.n_train} training pairs, {args.n_val} validation pairs, {epochs} epochs, "
        f"config {config}\n"
    )
    rows = [("noisy input", psnr(xv.float(), yv.float(), 255.0), "", "")]
    if args.precisions:
        return compare_precisions(config, xt, yt, xv, yv, epochs, rows)
    ours, t_ours = train_ours(config, xt, yt, epochs)
    rows.append(
        (
            "n2nfunc, default recipe (noisy targets)",
            score(ours.predict, xv, yv),
            f"{t_ours:.0f}",
            epochs,
        )
    )
    ref, t_ref = train_torch_same_recipe(config, xt, yt, epochs)
    rows.append(("torch.nn + autograd, same recipe", score(ref, xv, yv), f"{t_ref:.0f}", epochs))
    clean, t_clean = train_ours(config, xc, yc, epochs)
    rows.append(
        (
            "n2nfunc, default recipe, clean targets",
            score(clean.predict, xv, yv),
            f"{t_clean:.0f}",
            epochs,
        )
    )
    simple, done = train_torch_simple(config, xt, yt, t_ours)
    rows.append(
        (
            "torch.nn, Adam 1e-3 batch 64, same time",
            score(simple, xv, yv),
            f"{t_ours:.0f}",
            f"{done:.1f}",
        )
    )
    base = rows[0][1]
    print(f"{'recipe':<44}{'PSNR dB':>9}{'gain dB':>9}{'train s':>9}{'epochs':>8}")
    for name, value, seconds, ep in rows:
        print(f"{name:<44}{value:>9.2f}{value - base:>+9.2f}{seconds:>9}{ep:>8}")
    print(
        f"\nparity (n2nfunc - torch, same recipe): {rows[1][1] - rows[2][1]:+.3f} dB; "
        f"Noise2Noise vs clean targets: {rows[1][1] - rows[3][1]:+.3f} dB"
    )


def compare_precisions(config, xt, yt, xv, yv, epochs, rows) -> None:
    """The default recipe in float32 and in bfloat16 mixed precision, same seed and data."""
    for precision in ("float32", "bfloat16"):
        model, seconds = train_ours({**config, "precision": precision}, xt, yt, epochs)
        rows.append(
            (
                f"n2nfunc, default recipe, {precision}",
                score(model.predict, xv, yv),
                f"{seconds:.0f}",
                epochs,
            )
        )
    base = rows[0][1]
    print(f"{'recipe':<44}{'PSNR dB':>9}{'gain dB':>9}{'train s':>9}{'epochs':>8}")
    for name, value, seconds, ep in rows:
        print(f"{name:<44}{value:>9.2f}{value - base:>+9.2f}{seconds:>9}{ep:>8}")
    print(f"\nbfloat16 - float32: {rows[2][1] - rows[1][1]:+.3f} dB (target: within 0.05 dB)")


if __name__ == "__main__":
    main()
