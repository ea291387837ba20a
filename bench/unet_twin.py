"""The n2nfunc U-Net (n2nfunc/unet.py) written a second time in torch.nn, for the tests and
the benchmarks: same layers, same edge padding and crop, and weights copied from n2nfunc's
params (the convolutions in execution order, ``n2nfunc.unet.conv_list``)."""

import torch
import torch.nn.functional as F
from torch import nn

from n2nfunc.unet import conv_list


class TorchUNet(nn.Module):
    def __init__(self, depth=4, widths=(32, 64, 48, 24), in_channels=3, out_channels=3):
        super().__init__()
        enc, dec, last_a, last_b = widths
        self.depth = depth
        convs = [nn.Conv2d(in_channels, enc, 3, padding=1), nn.Conv2d(enc, enc, 3, padding=1)]
        for _ in range(depth):  # enc2 .. enc(depth), then the bottleneck
            convs.append(nn.Conv2d(enc, enc, 3, padding=1))
        self.encoder = nn.ModuleList(convs)
        decoder = []
        for k in range(depth - 1, 0, -1):  # decoder levels, deepest first
            cin = enc + (enc if k == depth - 1 else dec)
            decoder += [nn.Conv2d(cin, dec, 3, padding=1), nn.Conv2d(dec, dec, 3, padding=1)]
        self.decoder = nn.ModuleList(decoder)
        top_in = (enc if depth == 1 else dec) + in_channels
        self.last = nn.ModuleList(
            [
                nn.Conv2d(top_in, last_a, 3, padding=1),
                nn.Conv2d(last_a, last_b, 3, padding=1),
                nn.Conv2d(last_b, out_channels, 3, padding=1),
            ]
        )

    def execution_order(self):
        """The convolutions in the order the n2nfunc network runs them."""
        return list(self.encoder) + list(self.decoder) + list(self.last)

    def load_n2nfunc(self, params) -> "TorchUNet":
        convs = conv_list(params)
        mine = self.execution_order()
        assert len(convs) == len(mine), (len(convs), len(mine))
        with torch.no_grad():
            for conv, (weight, bias) in zip(mine, convs):
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
        return self

    def forward(self, x):
        h, w = x.shape[2:]
        m = 2**self.depth
        x = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        enc = list(self.encoder)
        skips = [x]
        t = act(enc[1](act(enc[0](x))))
        for k in range(1, self.depth):
            t = F.max_pool2d(t, 2)
            skips.append(t)
            t = act(enc[k + 1](t))
        t = act(enc[self.depth + 1](F.max_pool2d(t, 2)))  # the bottleneck
        dec = list(self.decoder)
        for i, k in enumerate(range(self.depth - 1, 0, -1)):
            t = torch.cat([F.interpolate(t, scale_factor=2, mode="nearest"), skips[k]], 1)
            t = act(dec[2 * i + 1](act(dec[2 * i](t))))
        t = torch.cat([F.interpolate(t, scale_factor=2, mode="nearest"), skips[0]], 1)
        a, b, out = self.last
        return out(act(b(act(a(t)))))[:, :, :h, :w]
