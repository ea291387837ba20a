import pytest
import torch
from helpers import autograd_vjp, randn, rel_err

import n2nfunc as nf


@pytest.mark.parametrize("layer,ref", [(nf.relu(), torch.relu), (nf.sigmoid(), torch.sigmoid)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_matches_torch(layer, ref, dtype, tol):
    x = randn(3, 4, 5, 7, dtype=dtype) * 3
    y, pullback = layer.vjp({}, x)
    ct = torch.randn_like(y)
    y_ref, (g,) = autograd_vjp(ref, [x], ct)
    assert rel_err(y, y_ref) <= tol
    assert rel_err(pullback(ct)[1], g) <= tol
    assert pullback(ct)[0] == {}


@pytest.mark.parametrize("layer", [nf.relu(), nf.sigmoid(), nf.identity()])
def test_check_vjp(layer):
    x = randn(2, 3, 3, 2) + 0.5
    x[x.abs() < 0.01] = 0.5  # keep relu away from its kink
    nf.check_vjp(layer, {}, x)


def test_sigmoid_is_stable_for_large_inputs():
    x = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]).view(1, 1, 1, 7)
    for dtype in (torch.float32, torch.float64):
        y, pullback = nf.sigmoid().vjp({}, x.to(dtype))
        g = pullback(torch.ones_like(y))[1]
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
        assert rel_err(y, torch.sigmoid(x.to(dtype))) < 1e-6
        assert y[0, 0, 0, 0] == 0 and y[0, 0, 0, -1] == 1


def test_relu_gradient_at_zero_is_zero_like_torch():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    _, pullback = nf.relu().vjp({}, x)
    assert pullback(torch.ones(1, 1, 1, 3))[1].view(-1).tolist() == [0.0, 0.0, 1.0]


def test_layout_is_kept():
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    for layer in (nf.relu(), nf.sigmoid()):
        assert layer.apply({}, x).is_contiguous(memory_format=torch.channels_last)
