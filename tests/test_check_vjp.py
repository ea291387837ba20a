"""check_vjp must catch real bugs and name where they are."""

import pytest
import torch

import n2nfunc as nf
from n2nfunc.testing import VJPCheckError


def _with_pullback(layer, fix):
    def vjp(params, x):
        y, pullback = layer.vjp(params, x)
        return y, lambda ct: fix(*pullback(ct))

    return nf.Layer(layer.init, layer.apply, vjp)


def test_flipped_kernel_gradient_is_caught_and_named():
    conv = nf.conv2d(2, 3, padding=1)
    buggy = _with_pullback(conv, lambda g, dx: ({**g, "weight": g["weight"].flip(2, 3)}, dx))
    _, params = conv.init(None, (1, 2, 5, 5))
    with pytest.raises(VJPCheckError, match="parameter 'weight'"):
        nf.check_vjp(buggy, params, torch.randn(1, 2, 5, 5))


def test_wrong_input_gradient_and_nonlinear_pullback_are_caught():
    sig = nf.sigmoid()
    with pytest.raises(VJPCheckError, match="wrt input"):
        nf.check_vjp(
            _with_pullback(sig, lambda g, dx: (g, dx * 1.001)), {}, torch.randn(1, 1, 3, 3)
        )
    with pytest.raises(VJPCheckError):
        nf.check_vjp(_with_pullback(sig, lambda g, dx: (g, dx + 1e-3)), {}, torch.randn(1, 1, 3, 3))


def test_bias_gradient_error_names_the_bias():
    conv = nf.conv2d(2, 1)
    _, params = conv.init(None, (1, 2, 4, 4))
    buggy = _with_pullback(conv, lambda g, dx: ({**g, "bias": g["bias"] * 0.5}, dx))
    with pytest.raises(VJPCheckError, match="parameter 'bias'.*relative error"):
        nf.check_vjp(buggy, params, torch.randn(1, 2, 4, 4))
