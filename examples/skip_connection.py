"""Compose a skip-connection denoiser with the combinators and train it on built-in pairs.

    python examples/skip_connection.py            # 10,000 pairs, 3 epochs
    python examples/skip_connection.py --quick    # 128 pairs, 1 epoch (what the tests run)

The network: a stride-2 encoder, a residual block at low resolution, a transposed-conv
decoder, and a long skip that concatenates the input with the decoded features before
the last convolution -- all one ``Layer`` built from ``serial``, ``fanout``,
``parallel``, ``residual`` and ``fanin_concat``.
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

body = nf.serial(
    nf.conv2d(32, 3, stride=2, padding=1),
    nf.relu(),
    nf.residual(nf.serial(nf.conv2d(32, 3, padding=1), nf.relu(), nf.conv2d(32, 3, padding=1))),
    nf.relu(),
    nf.conv_transpose2d(16, 4, stride=2, padding=1),
    nf.relu(),
)
net = nf.serial(
    nf.fanout(2),
    nf.parallel(body, nf.identity()),
    nf.fanin_concat(),
    nf.conv2d(3, 3, padding=1),
    nf.sigmoid(),
)

out_shape, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 32, 32))
print("output shape", out_shape, "parameters:", [p for p, _ in nf.tree.flatten(params)])

xt, yt = builtin_pairs(128 if QUICK else 10000, "train")
xv, yv = builtin_pairs(32 if QUICK else 500, "val")
xt, yt, xv = xt.float() / 255, yt.float() / 255, xv.float() / 255
optimizer = nf.adam(2e-3)
state = optimizer.init(params)
step = nf.make_train_step(net, nf.mse, optimizer)
print(f"noisy input: {nf.psnr(xv, yv.float() / 255):.2f} dB")
if QUICK:
    print(
        "(--quick: 4 steps, too few to denoise; the PSNR shows the code runs, not what it learns)"
    )
shuffle = torch.Generator().manual_seed(1)  # the same batches, hence weights, on every run
for epoch in range(1 if QUICK else 3):
    t0 = time.perf_counter()
    order = torch.randperm(xt.shape[0], generator=shuffle)
    losses = []
    for i in range(0, xt.shape[0], 32):
        idx = order[i : i + 32]
        params, state, loss = step(params, state, xt[idx], yt[idx])
        losses.append(float(loss) * len(idx))
    denoised = net.apply(params, xv)
    print(
        f"epoch {epoch + 1}: mean training loss {sum(losses) / xt.shape[0]:.4f}, "
        f"validation {nf.psnr(denoised, yv.float() / 255):.2f} dB, {time.perf_counter() - t0:.0f} s"
    )
