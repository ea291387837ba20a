"""Pooling layers against torch.nn.functional + autograd over a grid of geometries (ties
included), against finite differences, and their errors."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, randn, rel_err

import n2nfunc as nf

TOL64, TOL32 = 1e-10, 1e-5


def _compare(layer, ref, x, tol, ct=None):
    y, pullback = layer.vjp({}, x)
    ct = torch.randn(y.shape, dtype=y.dtype) if ct is None else ct
    y_ref, (g,) = autograd_vjp(ref, [x], ct)
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= tol
    assert rel_err(layer.apply({}, x), y_ref) <= tol
    params_grad, dx = pullback(ct)
    assert params_grad == {} and dx.shape == x.shape
    assert rel_err(dx, g) <= tol
    return y, dx, g


def _pair(v):
    return (v, v) if isinstance(v, int) else v


POOL_GRID = [
    (k, s, p, hw, n)
    for k, s, p, (hw, n) in itertools.product(
        [1, 2, 3, (3, 2), (2, 4)],
        [None, 1, 2, (1, 3)],
        [0, 1, (1, 0)],
        [((7, 9), 1), ((8, 8), 3), ((5, 12), 2)],
    )
    if all(pi <= ki // 2 for pi, ki in zip(_pair(p), _pair(k)))
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p,hw,n", POOL_GRID)
def test_pools_match_torch_float64(kind, k, s, p, hw, n):
    layer = (nf.max_pool2d if kind == "max" else nf.avg_pool2d)(k, s, p)
    ref = F.max_pool2d if kind == "max" else F.avg_pool2d
    _compare(layer, lambda t: ref(t, k, s, p), randn(n, 2, *hw), TOL64)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 1))])
def test_pools_match_torch_float32(kind, k, s, p):
    layer = (nf.max_pool2d if kind == "max" else nf.avg_pool2d)(k, s, p)
    ref = F.max_pool2d if kind == "max" else F.avg_pool2d
    _compare(layer, lambda t: ref(t, k, s, p), randn(2, 3, 9, 10, dtype=torch.float32), TOL32)


@pytest.mark.parametrize(
    "k,s,p",
    [
        (2, None, 0),
        (3, None, 1),
        ((2, 3), None, (1, 1)),
        (3, 1, 1),
        (3, 2, 1),
        ((2, 3), (1, 2), (1, 1)),
    ],
)
@pytest.mark.parametrize("values", [1, 2, 3])
@pytest.mark.parametrize("masks", [False, True])
def test_max_pool_ties_go_to_the_first_maximum_like_torch(k, s, p, values, masks):
    """Inputs full of ties (a constant image, or 2-3 distinct values): the gradient of each
    window lands on its first maximum in row-major order, exactly as in PyTorch. The
    cotangents are random integers, so overlapping windows' sums are exact in any order.
    ``masks``: one +inf in the batch sends the pullback down the boolean path (the one a GPU
    always takes), which must route the finite ties alike."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, values, (2, 3, 7, 8), generator=gen).double()
    if masks:
        x[1, 2, 6, 7] = float("inf")
    ct = torch.randint(-9, 10, F.max_pool2d(x, k, s, p).shape, generator=gen).double()
    y, pullback = nf.max_pool2d(k, s, p).vjp({}, x)
    y_ref, (g,) = autograd_vjp(lambda t: F.max_pool2d(t, k, s, p), [x], ct)
    assert torch.equal(y, y_ref) and torch.equal(pullback(ct)[1], g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,p", [(2, 0), (3, 1)])
def test_max_pool_tiles_write_every_input_gradient_exactly(dtype, k, p):
    """Windows that tile the input (stride = kernel) write each input's gradient rather than
    add it, into an input gradient that is not zeroed first: the rows and columns past the
    last window (7 x 8 images), the padding and every input off a maximum must still get 0,
    and every maximum its gradient bit for bit (+0 for a -0 gradient, as torch's sum)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (2, 5, 7, 8), generator=gen).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    ct = torch.randn(F.max_pool2d(x.float(), k, k, p).shape, generator=gen).to(dtype)
    ct[0, 0, 0, 0] = -0.0
    y, pullback = nf.max_pool2d(k, padding=p).vjp({}, x)
    y_ref, (g,) = autograd_vjp(lambda t: F.max_pool2d(t, k, k, p), [x], ct)
    dx = pullback(ct)[1]
    assert torch.equal(y, y_ref) and torch.equal(dx, g)
    assert torch.equal(
        dx.view(torch.int16 if dtype != torch.float32 else torch.int32).ne(0), g.ne(0)
    )


def test_max_pool_with_negative_inputs_ignores_the_padding():
    x = -1 - torch.rand(1, 2, 5, 5, dtype=torch.float64)
    _compare(nf.max_pool2d(3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), x, TOL64)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 5, 7), (4, 2, 6, 6)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)])
def test_global_avg_pool_matches_torch(shape, dtype, tol):
    _compare(
        nf.global_avg_pool(),
        lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1),
        randn(*shape, dtype=dtype),
        tol,
    )


@pytest.mark.parametrize(
    "layer",
    [
        nf.max_pool2d(2),
        nf.max_pool2d(3, 1, 1),
        nf.max_pool2d((3, 2), (2, 1), (1, 0)),
        nf.avg_pool2d(2),
        nf.avg_pool2d(3, 2, 1),
        nf.avg_pool2d((2, 3), 1, (1, 1)),
        nf.global_avg_pool(),
    ],
)
def test_check_vjp_finite_differences(layer):
    nf.check_vjp(layer, {}, randn(2, 2, 5, 6, seed=3))


def test_init_shapes():
    assert nf.max_pool2d(2).init(None, (4, 3, 8, 9)) == ((4, 3, 4, 4), {})
    assert nf.avg_pool2d(3, 2, 1).init(None, (-1, 3, 7, -1)) == ((-1, 3, 4, -1), {})
    assert nf.global_avg_pool().init(None, (-1, 5, -1, -1)) == ((-1, 5), {})
    x = randn(2, 3, 7, 5)
    for layer in (nf.max_pool2d((3, 2), (2, 1), (1, 1)), nf.avg_pool2d(2, 3)):
        assert layer.init(None, tuple(x.shape))[0] == tuple(layer.apply({}, x).shape)


def test_channels_last_and_non_contiguous_inputs():
    conv = nf.conv2d(4, 3, padding=1)
    _, params = conv.init(torch.Generator().manual_seed(0), (2, 3, 8, 8))
    y = conv.apply(params, randn(2, 3, 8, 8, dtype=torch.float32))  # a conv's strided output
    x = y.contiguous(memory_format=torch.channels_last)
    assert x.is_contiguous(memory_format=torch.channels_last)
    for layer, ref in [
        (nf.max_pool2d(3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
        (nf.avg_pool2d(2), lambda t: F.avg_pool2d(t, 2)),
        (nf.global_avg_pool(), lambda t: t.mean((2, 3))),
    ]:
        for inp in (y, x, x[:, :, :, ::2]):
            _compare(layer, ref, inp, TOL32)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: nf.max_pool2d(0), "kernel_size must be >= 1"),
        (lambda: nf.avg_pool2d((2, -1)), "kernel_size must be >= 1"),
        (lambda: nf.max_pool2d(2, stride=0), "stride must be >= 1"),
        (lambda: nf.avg_pool2d(2, padding=-1), "padding must be >= 0"),
        (lambda: nf.max_pool2d(3, padding=2), r"padding \(2, 2\) must be at most half"),
        (lambda: nf.avg_pool2d((4, 2), padding=(1, 2)), "at most half the kernel size"),
        (lambda: nf.max_pool2d(2.5), "kernel_size must be an int"),
    ],
)
def test_constructors_reject_bad_options(make, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make()


@pytest.mark.parametrize(
    "layer,x,error,pattern",
    [
        (nf.max_pool2d(2), torch.randn(3, 8, 8), ValueError, r"max_pool2d.*\(3, 8, 8\)"),
        (
            nf.avg_pool2d(2),
            torch.randn(2, 3, 4, 4, 1),
            ValueError,
            r"avg_pool2d.*\(2, 3, 4, 4, 1\)",
        ),
        (nf.global_avg_pool(), torch.randn(2, 3), ValueError, r"global_avg_pool.*\(2, 3\)"),
        (nf.max_pool2d(5), torch.randn(1, 2, 4, 9), ValueError, r"max_pool2d.*empty output"),
        (nf.avg_pool2d(2), torch.zeros(2, 3, 4, 4, dtype=torch.int64), TypeError, "floating"),
        (nf.max_pool2d(2), torch.randn(0, 3, 4, 4), ValueError, "empty batch"),
    ],
)
def test_apply_rejects_bad_input(layer, x, error, pattern):
    with pytest.raises(error, match=pattern):
        layer.apply({}, x)
    with pytest.raises(error, match=pattern):
        layer.vjp({}, x)


def test_non_tensors_are_refused():
    for layer in (nf.max_pool2d(2), nf.avg_pool2d(2), nf.global_avg_pool()):
        with pytest.raises(TypeError, match="input must be a Tensor, got list"):
            layer.apply({}, [[1.0, 2.0]])


def test_init_rejects_bad_shapes_and_params():
    with pytest.raises(ValueError, match=r"max_pool2d.*empty output"):
        nf.max_pool2d(3).init(None, (1, 2, 2, 8))
    with pytest.raises(ValueError, match=r"global_avg_pool: expected an input shape"):
        nf.global_avg_pool().init(None, (2, 8))
    with pytest.raises(ValueError, match=r"avg_pool2d.*expected parameters \[\]"):
        nf.avg_pool2d(2).apply({"weight": torch.ones(1)}, torch.randn(1, 1, 4, 4))
    _, pullback = nf.max_pool2d(2).vjp({}, torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"output gradient must have the output's shape"):
        pullback(torch.randn(1, 1, 4, 4))


@pytest.mark.cuda
def test_pools_on_cuda():
    x = torch.randn(2, 3, 9, 8)
    for layer in (nf.max_pool2d(3, 2, 1), nf.avg_pool2d(2, 1, 1), nf.global_avg_pool()):
        y, pullback = layer.vjp({}, x)
        ct = torch.randn_like(y)
        y2, pb2 = layer.vjp({}, x.cuda())
        assert y2.is_cuda and rel_err(y2.cpu(), y) < 1e-6
        assert rel_err(pb2(ct.cuda())[1].cpu(), pullback(ct)[1]) < 1e-6


def test_max_pool2d_propagates_a_nan_and_routes_its_gradient_like_torch():
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 1] = float("nan")  # one NaN in a window
    x[0, 1, 3, 3] = float("nan")  # (with several NaNs in one window the gradient goes to the
    # first here, to the last in PyTorch: documented in max_pool2d)
    ct = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    layer = nf.max_pool2d(2)
    y, pullback = layer.vjp({}, x)
    _, dx = pullback(ct)
    xr = x.clone().requires_grad_()
    with torch.enable_grad():
        ref = F.max_pool2d(xr, 2)
        (g,) = torch.autograd.grad(ref, xr, ct)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())
    assert torch.equal(dx, g)


@pytest.mark.parametrize(
    "k,s,p", [(2, None, 0), (3, 1, 1), (2, 1, 1), (3, 2, 1), ((1, 3), 1, (0, 1))]
)
def test_max_pool2d_routes_infinite_maxima_like_torch(k, s, p):
    """+inf maxima (tied or not) and windows of -inf take the exact (boolean) path, since
    ``v - max`` is NaN there; the gradient still goes to each window's first maximum, and a
    window of -inf that takes in padding (-inf too) gives it to its first input."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (1, 2, 6, 7), generator=gen).double()
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = float("inf")  # a tie of +inf in one window
    x[0, 1, 2:4, 2:4] = float("-inf")  # a window of -inf only
    x[0, 0, 4:, :3] = x[0, 1, 0, :] = x[0, 1, :, 6] = float("-inf")  # -inf along the borders
    ct = torch.randint(-9, 10, F.max_pool2d(x, k, s, p).shape, generator=gen).double()
    y, pullback = nf.max_pool2d(k, s, p).vjp({}, x)
    y_ref, (g,) = autograd_vjp(lambda t: F.max_pool2d(t, k, s, p), [x], ct)
    assert torch.equal(y, y_ref) and torch.equal(pullback(ct)[1], g)


@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), (2, 1, 0)])
def test_max_pool2d_routes_infinite_and_nan_gradients_like_torch(k, s, p):
    """An infinite or NaN output gradient goes to its window's maximum only, as torch's
    index scatter sends it; the float path's ``0 * inf`` had put NaN beside it."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64)
    y, pullback = nf.max_pool2d(k, s, p).vjp({}, x)
    ct = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    ct[0, 0, 0, 0], ct[1, 2, 1, 1], ct[0, 1, -1, -1] = float("inf"), -float("inf"), float("nan")
    _, (want,) = autograd_vjp(lambda t: F.max_pool2d(t, k, s, p), [x], ct)
    got = pullback(ct)[1]
    assert torch.equal(got.isnan(), want.isnan()) and int(want.isnan().sum()) >= 1
    assert torch.allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)


def test_16_bit_window_sums_accumulate_in_float32_and_round_once():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 16, 16, generator=g) + 1.0).bfloat16()  # sums that bfloat16 rounds
    ref = F.avg_pool2d(x.float(), 8)
    y = nf.avg_pool2d(8).apply({}, x)
    assert y.dtype == torch.bfloat16 and float(((y.float() - ref) / ref).abs().max()) <= 2**-8
    up = nf.nearest_upsample(4)
    _, pb = up.vjp({}, x)
    ct = (torch.rand(2, 3, 64, 64, generator=g) + 1.0).bfloat16()
    want = ct.float().view(2, 3, 16, 4, 16, 4).sum((3, 5))
    got = pb(ct)[1]
    assert float(((got.float() - want) / want).abs().max()) <= 2**-8
    # windows that overlap in the backward pass, along both axes or along one
    for k, s, p in [(5, 1, 2), ((5, 1), 1, 0), (3, (3, 1), 0)]:
        _, pb = nf.avg_pool2d(k, s, p).vjp({}, x)
        ct = (torch.rand(pb_shape(nf.avg_pool2d(k, s, p), x), generator=g) + 1.0).bfloat16()
        with torch.enable_grad():
            x32 = x.float().requires_grad_()
            F.avg_pool2d(x32, k, s, p).backward(ct.float())
        got, want = pb(ct)[1].float(), x32.grad
        read = want != 0  # (a row that no window reads has no gradient)
        assert torch.equal(got[~read], want[~read]), (k, s)
        assert float(((got - want)[read] / want[read]).abs().max()) <= 2**-8, (k, s)


def pb_shape(layer, x):
    return tuple(layer.apply({}, x).shape)


@pytest.mark.parametrize(
    "layer",
    [nf.max_pool2d(2), nf.max_pool2d(3, stride=2, padding=1), nf.avg_pool2d(2, padding=1)],
    ids=["max", "max-padded", "avg-padded"],
)
def test_pullback_works_on_tensors_that_require_grad_in_grad_mode(layer):
    # grad mode on and inputs that require grad (parameters taken from a torch module): the
    # pullback's in-place sums once refused a leaf that requires grad
    x = randn(2, 3, 7, 6, seed=41)
    ct = randn(*layer.apply({}, x).shape, seed=42)
    _, expected = layer.vjp({}, x)[1](ct)
    with torch.enable_grad():
        y, pullback = layer.vjp({}, x.clone().requires_grad_())
        _, dx = pullback(ct.clone().requires_grad_())
    assert torch.equal(y.detach(), layer.apply({}, x)) and torch.equal(dx, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_average_pooling_sums_in_float32(dtype):
    """A float16 window of four 30,000s summed to inf before the division."""
    x = torch.full((1, 2, 4, 6), 30000.0, dtype=dtype)
    x[0, 1] = torch.randn(4, 6).to(dtype)
    for k, s, p in ((2, 2, 0), (3, 1, 1), ((2, 3), (1, 2), (1, 0))):
        ours = nf.avg_pool2d(k, s, p).apply({}, x)
        theirs = F.avg_pool2d(x.float(), k, s, p).to(dtype)
        assert ours.dtype == dtype
        assert torch.isfinite(ours).all()
        assert rel_err(ours, theirs) < 1e-2
