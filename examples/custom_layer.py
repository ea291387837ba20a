"""Write your own layer -- a learnable per-channel scale, ``y = x * exp(s[c])`` -- and verify
its hand-written VJP with ``check_vjp`` before using it in a network.

    python examples/custom_layer.py
"""

import argparse

import torch

import n2nfunc as nf

parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
parser.parse_args()  # --help prints the docstring above


def channel_scale() -> nf.Layer:
    def init(generator, in_shape):  # no random draw: the generator goes unused
        return in_shape, {"log_scale": torch.zeros(in_shape[1])}

    def vjp(params, x):
        if x.dtype != params["log_scale"].dtype:  # as the library's layers: no silent promotion
            raise TypeError(
                f"channel_scale: input {x.dtype}, parameters {params['log_scale'].dtype}"
            )
        scale = params["log_scale"].exp().view(1, -1, 1, 1)
        y = x * scale

        def pullback(ct):
            ct = ct.to(y.dtype)  # the contract: a cotangent of another dtype is converted first
            # dL/dx = ct * scale;  dL/ds[c] = sum over n, h, w of ct * y  (d exp(s)/ds = exp(s))
            return {"log_scale": (ct * y).sum((0, 2, 3))}, ct * scale

        return y, pullback

    return nf.Layer(init, lambda params, x: vjp(params, x)[0], vjp)


layer = channel_scale()
_, params = layer.init(None, (2, 3, 4, 5))  # None: init draws nothing
params["log_scale"] = torch.randn(3)
print("check_vjp:", nf.check_vjp(layer, params, torch.randn(2, 3, 4, 5)))


def broken_scale() -> nf.Layer:
    """The same layer with a classic bug: the parameter gradient drops the factor
    ``y = x exp(s)`` that the chain rule puts in it."""
    good = channel_scale()

    def vjp(params, x):
        y, pullback = good.vjp(params, x)
        return y, lambda ct: ({"log_scale": ct.sum((0, 2, 3))}, pullback(ct)[1])

    return nf.Layer(good.init, good.apply, vjp)


try:
    nf.check_vjp(broken_scale(), params, torch.randn(2, 3, 4, 5))
except nf.VJPCheckError as e:
    print("the buggy version is caught:", e)
else:
    raise SystemExit("check_vjp passed the buggy version")

net = nf.serial(nf.conv2d(3, 3, padding=1), channel_scale(), nf.sigmoid())
_, net_params = net.init(torch.Generator().manual_seed(0), (1, 3, 6, 6))
# directions=2: two random directions per part (the default is 3); parts of at most 64
# numbers are also checked coordinate by coordinate
errors = nf.check_vjp(net, net_params, torch.randn(1, 3, 6, 6), directions=2)
print("inside a network, worst relative error per check:")
for check, error in errors.items():
    print(f"  {check}: {error:.1e}")
