"""Each layer alone: forward and VJP (forward + pullback) of n2nfunc against
torch.nn.functional + autograd, to see where a training step's time goes.

    python bench/layers.py [--batch 100] [--precision float32|bfloat16|both]
    python bench/layers.py --unet --precision float32   # the U-Net's own layers, 8 x 64 x 64

``--unet`` times the layers of the shipped U-Net (depth 4, widths 32/64/48/24) at the shapes
they have in its training step (batch 8 of 64 x 64 crops unless ``--batch`` / ``--crop``),
each once as the network has it, and sums their VJPs: where the step's time goes against its
torch.nn twin, layer by layer (the LeakyReLUs, the loss and Adam are left out).

Both sides run the layer directly in the given dtype (bfloat16 tensors in, bfloat16 out),
so the table shows the kernels themselves; n2nfunc gets channels-last images and a
cotangent laid out like its output, as inside a network (torch: the faster layout). GEMM
is one bare matmul with the forward's nominal multiply-adds, operands ready; %peak is the
share of the measured GEMM peak of that precision (2048^3 matmul) that the nominal
multiply-adds reach.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parent),
]  # this tree
from common import DTYPES, header, interleaved, nf  # noqa: E402

from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.base import pull  # noqa: E402

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
    (
        "bilinear_upsample x2",
        nf.bilinear_upsample(),
        lambda x, p: F.interpolate(x, scale_factor=2, mode="bilinear"),
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
    (
        "conv2d 32->32 k3 g4",
        nf.conv2d(32, 3, 1, 1, groups=4),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 1, 1, 1, 4),
        (32, 16, 16),
    ),
    (
        "conv2d 32 k3 depthwise",
        nf.conv2d(32, 3, 1, 1, groups=32),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 1, 1, 1, 32),
        (32, 16, 16),
    ),
    (
        "group_norm 32, 8 groups",
        nf.group_norm(8),
        lambda x, p: F.group_norm(x, 8, p["weight"], p["bias"]),
        (32, 16, 16),
    ),
    (
        "layer_norm 512",
        nf.layer_norm(),
        lambda x, p: F.layer_norm(x, (512,), p["weight"], p["bias"]),
        (512,),
    ),
    ("gelu", nf.gelu(), lambda x, p: F.gelu(x), (32, 16, 16)),
    ("silu", nf.silu(), lambda x, p: F.silu(x), (32, 16, 16)),
    ("pixel_shuffle 2", nf.pixel_shuffle(2), lambda x, p: F.pixel_shuffle(x, 2), (128, 8, 8)),
    (
        "conv_t 32->32 k4 s2 g4",
        nf.conv_transpose2d(32, 4, 2, 1, groups=4),
        lambda x, p: F.conv_transpose2d(x, p["weight"], p["bias"], 2, 1, 0, 4),
        (32, 8, 8),
    ),
    ("log_softmax", nf.log_softmax(), lambda x, p: F.log_softmax(x, 1), (10, 1, 1)),
]


def _conv_case(c: int, o: int, size: int, input_grad: bool = True):
    """A 3 x 3, padding-1 convolution of the U-Net: ``c -> o`` channels on ``size``^2; without
    ``input_grad`` (a convolution of the network's input) its VJP computes no input
    gradient, on both sides, as in the training step."""
    return (
        f"conv {c}->{o} @{size}" + ("" if input_grad else " (no dx)"),
        nf.conv2d(o, 3, padding=1),
        lambda x, p: F.conv2d(x, p["weight"], p["bias"], 1, 1),
        (c, size, size),
        input_grad,
    )


def unet_cases(depth: int, widths: tuple, crop: int) -> list:
    """The layers of :func:`n2nfunc.unet.unet` with these ``depth`` and ``widths``, at their
    input shapes for ``crop`` x ``crop`` images, each once as the network has it: the
    encoder's convolutions and poolings, then per decoder level the skip block's upsampling
    part (nearest x2 + conv, no bias) and skip convolution, and the level's last convolution;
    the LeakyReLUs are left out."""
    enc, dec, last_a, last_b = widths
    cases = [_conv_case(3, enc, crop, False), _conv_case(enc, enc, crop)]
    for k in range(depth):
        size = crop >> k
        cases.append(
            (
                f"max_pool2d 2 @{size}",
                nf.max_pool2d(2),
                lambda x, p: F.max_pool2d(x, 2),
                (enc, size, size),
            )
        )
        cases.append(_conv_case(enc, enc, size // 2))  # (the last: the bottleneck)
    for k in range(depth, 0, -1):
        low, size = crop >> k, crop >> (k - 1)
        c_low, out = (enc if k == depth else dec), (dec if k > 1 else last_a)
        cases.append(
            (
                f"upsample {c_low}->{out} @{low}",
                nf.upsample(out, 3, 2, padding=1, bias=False),
                lambda x, p: F.conv2d(F.interpolate(x, scale_factor=2), p["weight"], None, 1, 1),
                (c_low, low, low),
            )
        )
        cases.append(_conv_case(3 if k == 1 else enc, out, size, k > 1))  # the skip part
        if k > 1:
            cases.append(_conv_case(dec, dec, size))
    return cases + [_conv_case(last_a, last_b, crop), _conv_case(last_b, 3, crop)]


def nominal_gemm(name: str, x_shape, y_shape, params):
    """``(M, K, N)`` of one matmul with the multiply-adds of the layer's forward pass as a
    direct convolution counts them, M = output pixels and N = output channels (None for a
    layer without weights)."""
    if "weight" not in params or params["weight"].dim() < 2:  # (a normalisation's: per channel)
        return None
    w = params["weight"]
    if len(y_shape) == 2:  # dense: one matmul
        return y_shape[0], w.shape[1], w.shape[0]
    m, n = y_shape[0] * y_shape[2] * y_shape[3], y_shape[1]
    if name.startswith(("conv_t", "shipped conv_t")):  # per input pixel: Cin x Cout x k x k
        macs = x_shape[0] * x_shape[2] * x_shape[3] * w.numel()
    else:
        macs = m * w.numel()
    return m, macs // (m * n), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int_range(1), help="default: 100, --unet 8")
    ap.add_argument("--unet", action="store_true", help="the U-Net's own layers and shapes")
    ap.add_argument("--crop", type=int_range(16), help="--unet: the crop size (default: 64)")
    ap.add_argument("--threads", type=int_range(1), default=2)
    ap.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="both")
    ap.add_argument("--rounds", type=int_range(1), default=5)
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 8 if args.unet else 100
    if args.crop is not None and not args.unet:
        ap.error("--crop is for --unet (the other cases have their own sizes)")
    args.crop = 64 if args.crop is None else args.crop
    if args.unet and args.crop % 16:
        ap.error(f"--crop must be a multiple of 16 (four 2 x 2 poolings), got {args.crop}")
    torch.set_grad_enabled(False)
    peaks = header(args.threads)
    for precision in ["float32", "bfloat16"] if args.precision == "both" else [args.precision]:
        table(precision, DTYPES[precision], peaks[precision], args)


def table(precision: str, dtype, peak: float, args) -> None:
    print(
        f"{precision}: batch {args.batch}; times in ms (median of {args.rounds} rounds); torch = "
        f"the faster of NCHW and channels_last; GEMM peak {peak:.0f} GFLOP/s"
    )
    print(
        f"{'layer':<24}{'fwd ours':>9}{'torch':>8}{'ratio':>7}{'GEMM':>7}{'%peak':>7}"
        f"{'vjp ours':>10}{'torch':>8}{'ratio':>7}{'%peak':>7}"
    )
    cases = unet_cases(4, (32, 64, 48, 24), args.crop) if args.unet else CASES
    ours = theirs = 0.0
    for name, layer, ref, shape, *input_grad in cases:
        text, (t_ours, t_torch) = row(name, layer, ref, shape, dtype, peak, args, *input_grad)
        print(text)
        ours, theirs = ours + t_ours, theirs + t_torch
    if args.unet:
        print(f"{'sum of the vjps':<24}{'':>44}{ours * 1e3:>10.2f}{theirs * 1e3:>8.2f}", end="")
        print(f"{theirs / ours:>7.2f}")
    print(
        "\nratio = torch time / n2nfunc time (>1: n2nfunc faster); vjp = forward + all "
        "gradients; GEMM = one bare matmul with the forward's nominal multiply-adds, "
        "operands ready (pixels x Cin k k x Cout, the faster orientation); %peak = nominal "
        "FLOPs (x3 for vjp, x2 without dx) / time / the GEMM peak of this precision\n"
    )


def row(name: str, layer, ref, shape, dtype, peak: float, args, input_grad: bool = True) -> tuple:
    """One table row: the layer's forward and VJP (with the input gradient or not) against
    torch's and the bare GEMM; and the two VJPs' seconds (n2nfunc's, torch's)."""
    x = torch.randn(args.batch, *shape).to(dtype)
    _, params = layer.init(torch.Generator().manual_seed(0), x.shape)
    params = {k: v.to(dtype) for k, v in params.items()}
    ct = torch.randn(layer.apply(params, x).shape).to(dtype)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    xcl, ctcl = (  # channels_last exists for images only
        t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in (x, ct)
    )
    # ours as inside a network: channels-last activations (what n2nfunc's layers return),
    # and a cotangent laid out like the output
    x_ours = xcl
    y = layer.apply(params, x_ours)
    ct_ours = torch.empty_like(y).copy_(ct)

    def ours_vjp():
        _, pullback = layer.vjp(params, x_ours)
        pull(layer.vjp, pullback, ct_ours, input_grad)

    def torch_vjp(xx, cc):
        def run():
            with torch.enable_grad():
                xr = xx.detach().requires_grad_(input_grad)
                wrt = ([xr] if input_grad else []) + list(leaves.values())
                torch.autograd.grad(ref(xr, leaves), wrt, cc)

        return run

    nominal = nominal_gemm(name, x.shape, y.shape, params)
    gemm = nominal or (1, 1, 1)  # (a matmul to time all the same)
    a, b = torch.randn(gemm[0], gemm[1]).to(dtype), torch.randn(gemm[1], gemm[2]).to(dtype)
    at, bt = a.t().contiguous(), b.t().contiguous()
    t = interleaved(
        {
            "G": lambda: a.matmul(b),  # both orientations: a thin N is faster transposed
            "Gt": lambda: bt.matmul(at),
            "f": lambda: layer.apply(params, x_ours),
            "F": lambda: ref(x, leaves),
            "Fcl": lambda: ref(xcl, leaves),
            "v": ours_vjp,
            "V": torch_vjp(x, ct),
            "Vcl": torch_vjp(xcl, ctcl),
        },
        2,
        5,
        args.rounds,
    )
    tf, tv = min(t["F"], t["Fcl"]), min(t["V"], t["Vcl"])
    flops = 2.0 * gemm[0] * gemm[1] * gemm[2] if nominal else 0.0
    bare = f"{min(t['G'], t['Gt']) * 1e3:>7.2f}" if flops else f"{'-':>7}"

    def share(seconds, factor):
        return f"{100 * factor * flops / seconds / 1e9 / peak:>6.0f}%" if flops else f"{'-':>7}"

    text = (
        f"{name:<24}{t['f'] * 1e3:>9.2f}{tf * 1e3:>8.2f}{tf / t['f']:>7.2f}{bare}"
        f"{share(t['f'], 1)}"
        f"{t['v'] * 1e3:>10.2f}{tv * 1e3:>8.2f}{tv / t['v']:>7.2f}"
        f"{share(t['v'], 3 if input_grad else 2)}"
    )
    return text, (t["v"], tv)


if __name__ == "__main__":
    main()
