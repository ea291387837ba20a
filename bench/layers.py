"""Each layer alone: forward and VJP (forward + pullback) of n2nfunc against
torch.nn.functional + autograd, to see where a training step's time goes.

    python bench/layers.py [--batch 100]
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, nf  # noqa: E402

CASES = [  # name, layer, torch forward, input shape (C, H, W)
    (
        "conv2d 3->32 k3 s2",
        nf.conv2d(32, 3, 2, 1),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 2, 1),
        (3, 32, 32),
    ),
    (
        "conv2d 32->64 k3 s2",
        nf.conv2d(64, 3, 2, 1),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 2, 1),
        (32, 16, 16),
    ),
    (
        "conv2d 32->32 k3 s1",
        nf.conv2d(32, 3, 1, 1),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 1, 1),
        (32, 16, 16),
    ),
    (
        "upsample 64->32 k3",
        nf.upsample(32, 3, 2, 1),
        lambda x, p: F.conv2d(F.interpolate(x, scale_factor=2), p["weight"], p["bias"], 1, 1),
        (64, 8, 8),
    ),
    (
        "upsample 32->3 k3",
        nf.upsample(3, 3, 2, 1),
        lambda x, p: F.conv2d(F.interpolate(x, scale_factor=2), p["weight"], p["bias"], 1, 1),
        (32, 16, 16),
    ),
    (
        "conv_t 64->32 k3 s2",
        nf.conv_transpose2d(32, 3, 2, 1, 1),
        lambda x, p: F.conv_transpose2d(x, p["weight"], p["bias"], 2, 1, 1),
        (64, 8, 8),
    ),
    (
        "conv_t 32->3 k3 s2",
        nf.conv_transpose2d(3, 3, 2, 1, 1),
        lambda x, p: F.conv_transpose2d(x, p["weight"], p["bias"], 2, 1, 1),
        (32, 16, 16),
    ),
    (
        "shipped conv 3->48 k4",
        nf.conv2d(48, 4, 2, 1),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 2, 1),
        (3, 32, 32),
    ),
    (
        "shipped conv 48->48 k4",
        nf.conv2d(48, 4, 2, 1),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 2, 1),
        (48, 16, 16),
    ),
    (
        "shipped conv_t 48->48",
        nf.conv_transpose2d(48, 4, 2, 1),
        lambda x, p: F.conv_transpose2d(x, p["weight"], p["bias"], 2, 1),
        (48, 8, 8),
    ),
    (
        "shipped conv_t 48->3",
        nf.conv_transpose2d(3, 4, 2, 1),
        lambda x, p: F.conv_transpose2d(x, p["weight"], p["bias"], 2, 1),
        (48, 16, 16),
    ),
    (
        "nearest_upsample x2",
        nf.nearest_upsample(2),
        lambda x, p: F.interpolate(x, scale_factor=2),
        (32, 16, 16),
    ),
    ("relu", nf.relu(), lambda x, p: torch.relu(x), (32, 16, 16)),
    ("sigmoid", nf.sigmoid(), lambda x, p: torch.sigmoid(x), (3, 32, 32)),
    ("max_pool2d 2", nf.max_pool2d(2), lambda x, p: F.max_pool2d(x, 2), (32, 16, 16)),
    (
        "max_pool2d 3 s2 p1",
        nf.max_pool2d(3, 2, 1),
        lambda x, p: F.max_pool2d(x, 3, 2, 1),
        (32, 16, 16),
    ),
    ("avg_pool2d 2", nf.avg_pool2d(2), lambda x, p: F.avg_pool2d(x, 2), (32, 16, 16)),
    ("global_avg_pool", nf.global_avg_pool(), lambda x, p: x.mean((2, 3)), (32, 16, 16)),
    (
        "dense 512->64",
        nf.dense(64),
        lambda x, p: F.linear(x, p["weight"], p["bias"]),
        (512,),
    ),
    ("gelu", nf.gelu(), lambda x, p: F.gelu(x), (32, 16, 16)),
    ("log_softmax", nf.log_softmax(), lambda x, p: F.log_softmax(x, 1), (10, 1, 1)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {torch.get_num_threads()} threads; times in ms (median)\n")
    print(
        f"{'layer':<22}{'fwd ours':>9}{'fwd torch':>10}{'ratio':>7}{'vjp ours':>10}{'vjp torch':>10}{'ratio':>7}"
    )
    for name, layer, ref, shape in CASES:
        x = torch.randn(args.batch, *shape)
        _, params = layer.init(torch.Generator().manual_seed(0), x.shape)
        y = layer.apply(params, x)
        ct = torch.randn_like(y)
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}

        def ours_vjp():
            _, pullback = layer.vjp(params, x)
            pullback(ct)

        def torch_vjp():
            with torch.enable_grad():
                xr = x.requires_grad_() if not x.requires_grad else x
                torch.autograd.grad(ref(xr, leaves), [xr] + list(leaves.values()), ct)

        t = interleaved(
            {
                "f": lambda: layer.apply(params, x),
                "F": lambda: ref(x, leaves),
                "v": ours_vjp,
                "V": torch_vjp,
            },
            2,
            5,
        )
        print(
            f"{name:<22}{t['f'] * 1e3:>9.2f}{t['F'] * 1e3:>10.2f}{t['F'] / t['f']:>7.2f}"
            f"{t['v'] * 1e3:>10.2f}{t['V'] * 1e3:>10.2f}{t['V'] / t['v']:>7.2f}"
        )
        x.requires_grad_(False)
    print("\nratio = torch time / n2nfunc time (>1: n2nfunc faster); vjp = forward + all gradients")


if __name__ == "__main__":
    main()
