"""dropout: statistics of the mask, its own mask, torch autograd on that mask, both modes."""

import pytest
import torch
from helpers import autograd_vjp, rel_err

import n2nfunc as nf


def clone(g: torch.Generator) -> torch.Generator:
    c = torch.Generator(device=g.device)
    c.set_state(g.get_state())
    return c


def own_mask(shape, p, rng):
    """The documented draw: Bernoulli(1 - p) in the default float dtype from ``rng``."""
    return torch.empty(shape, device=rng.device).bernoulli_(1 - p, generator=rng)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_scaling(p):
    layer = nf.dropout(p)
    # x from another stream than the mask's (the same seed would correlate them)
    x = torch.rand(8, 16, 37, 41, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    x += 0.5  # never 0
    y, _ = layer.apply({}, {}, x, train=True, rng=torch.Generator().manual_seed(7))
    kept = y != 0
    n = x.numel()
    rate = float(kept.double().mean())
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5  # 5 standard deviations
    assert torch.allclose(y[kept], x[kept] / (1 - p), rtol=1e-15, atol=0)
    assert abs(float(y.mean() / x.mean()) - 1) < 0.02  # E[y] = x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (4, 2, 3, 3), (5, 7)])
def test_forward_and_pullback_against_its_own_mask_and_autograd(dtype, shape):
    p = 0.3
    layer = nf.dropout(p)
    rng = torch.Generator().manual_seed(5)
    mask = own_mask(shape, p, clone(rng)).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    y, state, pullback = layer.vjp({}, {}, x, train=True, rng=rng)
    ct = torch.randn(shape, dtype=dtype)
    y_ref, (gx,) = autograd_vjp(
        lambda t: torch.nn.functional.dropout(t, 0) * mask / (1 - p), [x], ct
    )
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert state == {} and rel_err(y, y_ref) < tol
    grads, dx = pullback(ct)
    assert grads == {} and rel_err(dx, gx) < tol
    assert torch.equal(dx == 0, mask == 0)


def test_same_generator_state_same_mask_in_apply_vjp_and_dtypes():
    layer = nf.dropout(0.5)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    rng = torch.Generator().manual_seed(9)
    a, _ = layer.apply({}, {}, x, train=True, rng=clone(rng))
    b, _, _ = layer.vjp({}, {}, x, train=True, rng=clone(rng))
    c, _ = layer.apply({}, {}, x.float(), train=True, rng=clone(rng))
    assert torch.equal(a, b) and torch.equal(a == 0, c == 0)
    d, _ = layer.apply({}, {}, x, train=True, rng=rng)
    e, _ = layer.apply({}, {}, x, train=True, rng=rng)  # the generator moved on
    assert not torch.equal(d == 0, e == 0)


def test_identity_in_evaluation_and_for_p_zero():
    x = torch.randn(2, 3, 4, 4)
    y, _, pullback = nf.dropout(0.5).vjp({}, {}, x, train=False, rng=None)
    assert y is x and torch.equal(pullback(x)[1], x)
    y, _ = nf.dropout(0.0).apply({}, {}, x, train=True, rng=None)
    assert y is x


def test_check_vjp_uses_one_mask():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    worst = nf.check_vjp(nf.dropout(0.4), {}, x, state={}, rng=torch.Generator().manual_seed(1))
    assert worst["input"] < 1e-6


def test_bad_arguments():
    for p in (-0.1, 1, 1.0, 2, "0.5", True, None):
        error = ValueError if isinstance(p, (int, float)) and not isinstance(p, bool) else TypeError
        with pytest.raises(error, match=r"dropout: p must be a number in \[0, 1\)"):
            nf.dropout(p)
    with pytest.raises(
        TypeError, match=r"dropout\(p=0.5\): training needs rng.*NoneType.*\(2, 3\)"
    ):
        nf.dropout(0.5).apply({}, {}, torch.randn(2, 3), train=True, rng=None)
    with pytest.raises(TypeError, match="dropout.*floating point"):
        nf.dropout(0.5).apply({}, {}, torch.ones(2, 3, dtype=torch.int64), train=False)
    with pytest.raises(ValueError, match=r"dropout.*expected state entries \[\]"):
        nf.dropout(0.5).apply({}, {"mask": torch.ones(1)}, torch.randn(2, 3), train=False)
    y, _, pullback = nf.dropout(0.5).vjp(
        {}, {}, torch.randn(2, 3), train=True, rng=torch.Generator()
    )
    with pytest.raises(ValueError, match="output gradient"):
        pullback(torch.randn(3, 2))


@pytest.mark.cuda
def test_masks_on_cuda_from_a_cuda_or_cpu_generator():
    x = torch.randn(2, 3, 8, 8, device="cuda")
    for rng in (torch.Generator(device="cuda").manual_seed(0), torch.Generator().manual_seed(0)):
        y, _ = nf.dropout(0.5).apply({}, {}, x, train=True, rng=clone(rng))
        assert y.device == x.device
        assert torch.equal((y == 0).cpu(), (own_mask(x.shape, 0.5, clone(rng)) == 0).cpu())
