"""A small NAFNet-style denoiser (Chen et al., "Simple Baselines for Image Restoration",
2022) composed from n2nfunc layers, trained Noise2Noise on built-in pairs.

    python examples/nafnet.py            # 4,000 pairs, 3 epochs (about 30 s on 2 cores)
    python examples/nafnet.py --quick    # 128 pairs, 1 epoch (what the tests run)

(A run of 2026-12-06, 2-core Intel Xeon: validation 20.78 dB noisy, 22.79 / 23.83 / 24.20 dB
after the three epochs, 9-10 s each.)

Each NAF block is one ``Layer``: channel layer norm (``layer_norm(1)``), a 1 x 1 convolution
to twice the width, a depthwise 3 x 3 (``groups=`` the channels), SimpleGate (``chunk(2)``
then ``fanin_product()``: the two halves multiplied, no activation function), simplified
channel attention (``fanout``, ``global_avg_pool(keepdims=True)`` and a 1 x 1 convolution,
``fanin_product`` broadcasting the (N, C, 1, 1) map over the features), a 1 x 1
convolution, all inside ``residual``. Down and up by ``pixel_unshuffle`` / ``pixel_shuffle``;
the network predicts the noise, added back to its input (a global residual). NAFNet's
learnable per-block output scales are left out.
"""

import argparse
import time

import torch

import n2nfunc as nf
from n2nfunc.data import builtin_pairs

parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
parser.add_argument("--quick", action="store_true", help="128 pairs, 1 epoch: a smoke test")
QUICK = parser.parse_args().quick

torch.set_grad_enabled(False)
torch.set_num_threads(2)


def naf_block(c: int) -> nf.Layer:
    """x + f(x), f keeping c channels (see the module docstring)."""
    simple_gate = nf.serial(nf.chunk(2), nf.fanin_product())
    channel_attention = nf.serial(
        nf.fanout(2),
        nf.parallel(nf.identity(), nf.serial(nf.global_avg_pool(keepdims=True), nf.conv2d(c, 1))),
        nf.fanin_product(),
    )
    return nf.residual(
        nf.serial(
            nf.layer_norm(1),
            nf.conv2d(2 * c, 1),
            nf.conv2d(2 * c, 3, padding=1, groups=2 * c),
            simple_gate,
            channel_attention,
            nf.conv2d(c, 1),
        )
    )


body = nf.serial(
    nf.conv2d(16, 3, padding=1),
    naf_block(16),
    nf.pixel_unshuffle(2),  # (16, H, W) -> (64, H / 2, W / 2)
    nf.conv2d(32, 1),
    naf_block(32),
    naf_block(32),
    nf.conv2d(64, 1),
    nf.pixel_shuffle(2),  # (64, H / 2, W / 2) -> (16, H, W)
    naf_block(16),
    nf.conv2d(3, 3, padding=1),
)
net = nf.serial(nf.fanout(2), nf.parallel(body, nf.identity()), nf.fanin_sum())

out_shape, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 32, 32))
count = sum(t.numel() for _, t in nf.tree.flatten(params))
print(f"output shape {out_shape}, {count:,} parameters")
tiny = torch.rand(2, 3, 4, 6, dtype=torch.float64)  # the hand-written gradients, checked
nf.check_vjp(net, nf.tree.map(lambda t: t.double(), params), tiny)
print("check_vjp: the network's gradients match finite differences")

xt, yt = builtin_pairs(128 if QUICK else 4000, "train")
xv, yv = builtin_pairs(32 if QUICK else 500, "val")
xt, yt, xv = xt.float() / 255, yt.float() / 255, xv.float() / 255
optimizer = nf.adam(1e-3)
state = optimizer.init(params)
step = nf.make_train_step(net, nf.mse, optimizer)
print(f"noisy input: {nf.psnr(xv, yv.float() / 255):.2f} dB")
if QUICK:
    print(
        "(--quick: 4 steps, too few to denoise; the PSNR shows the code runs, not what it learns)"
    )
shuffle = torch.Generator().manual_seed(1)
for epoch in range(1 if QUICK else 3):
    t0 = time.perf_counter()
    order = torch.randperm(xt.shape[0], generator=shuffle)
    losses = []
    for i in range(0, xt.shape[0], 32):
        idx = order[i : i + 32]
        params, state, loss = step(params, state, xt[idx], yt[idx])
        losses.append(float(loss) * len(idx))
    denoised = net.apply(params, xv).clamp(0, 1)
    print(
        f"epoch {epoch + 1}: mean training loss {sum(losses) / xt.shape[0]:.4f}, "
        f"validation {nf.psnr(denoised, yv.float() / 255):.2f} dB, {time.perf_counter() - t0:.0f} s"
    )
