import math

import pytest
import torch
import torch.nn.functional as F
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


SOFTMAX_AXIS3 = nf.softmax(axis=3)  # left out of the 2-d test: a 2-d input has no axis 3
NEW = [
    (nf.leaky_relu(), lambda t: F.leaky_relu(t)),
    (nf.leaky_relu(0.2), lambda t: F.leaky_relu(t, 0.2)),
    (nf.leaky_relu(-1.5), lambda t: F.leaky_relu(t, -1.5)),
    (nf.leaky_relu(3.0), lambda t: F.leaky_relu(t, 3.0)),  # slope > 1: the min branch
    (nf.tanh(), torch.tanh),
    (nf.gelu(), lambda t: F.gelu(t)),
    (nf.gelu("tanh"), lambda t: F.gelu(t, approximate="tanh")),
    (nf.silu(), lambda t: F.silu(t)),
    (nf.elu(), lambda t: F.elu(t)),
    (nf.elu(0.3), lambda t: F.elu(t, 0.3)),
    (nf.softplus(), lambda t: F.softplus(t)),
    (nf.softplus(2.0, 5.0), lambda t: F.softplus(t, 2.0, 5.0)),
    (nf.softplus(0.5, 1.0), lambda t: F.softplus(t, 0.5, 1.0)),
    (nf.log_softmax(), lambda t: F.log_softmax(t, 1)),
    (nf.log_softmax(axis=-1), lambda t: F.log_softmax(t, -1)),
    (nf.log_softmax(axis=0), lambda t: F.log_softmax(t, 0)),
    (nf.softmax(), lambda t: F.softmax(t, 1)),
    (SOFTMAX_AXIS3, lambda t: F.softmax(t, 3)),
    (nf.softmax(axis=-2), lambda t: F.softmax(t, -2)),
]


@pytest.mark.parametrize("layer,ref", NEW)
@pytest.mark.parametrize("shape", [(1, 3, 1, 5), (3, 4, 5, 7)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_new_activations_match_torch(layer, ref, shape, dtype, tol):
    x = randn(*shape, dtype=dtype) * 4
    x.view(-1)[:3] = 0.0  # the kinks of leaky_relu / elu, where PyTorch picks a subgradient
    y, pullback = layer.vjp({}, x)
    ct = torch.randn_like(y)
    y_ref, (g,) = autograd_vjp(ref, [x], ct)
    assert rel_err(y, y_ref) <= tol and rel_err(layer.apply({}, x), y_ref) <= tol
    params_grad, dx = pullback(ct)
    assert params_grad == {} and rel_err(dx, g) <= tol


@pytest.mark.parametrize("layer,ref", [lr for lr in NEW if lr[0] is not SOFTMAX_AXIS3])
def test_new_activations_on_2d_inputs_and_layout(layer, ref):
    x = randn(4, 6)  # (softmax along axis 3 is left out: a 2-d input has no axis 3)
    assert rel_err(layer.apply({}, x), ref(x)) <= 1e-10
    xc = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert rel_err(layer.apply({}, xc), ref(xc)) <= 1e-5
    assert layer.apply({}, xc).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "layer",
    [
        nf.leaky_relu(0.1),
        nf.tanh(),
        nf.gelu(),
        nf.elu(0.7),
        nf.softplus(),
        nf.softplus(3.0, 2.0),
        nf.log_softmax(),
        nf.softmax(),
        nf.softmax(axis=-1),
    ],
)
def test_new_activations_check_vjp(layer):
    x = randn(2, 3, 3, 2, seed=4) * 2
    x[x.abs() < 0.05] = 0.5  # keep away from kinks
    nf.check_vjp(layer, {}, x)


def test_softplus_threshold_follows_torch():
    x = torch.tensor([-30.0, -1.0, 0.0, 9.99, 10.0, 10.01, 19.0, 20.0, 21.0], dtype=torch.float64)
    for beta, threshold in [(1.0, 20.0), (2.0, 20.0), (1.0, 10.0)]:
        layer = nf.softplus(beta, threshold)
        y, pullback = layer.vjp({}, x)
        ct = torch.randn_like(x)
        y_ref, (g,) = autograd_vjp(lambda t, b=beta, th=threshold: F.softplus(t, b, th), [x], ct)
        assert rel_err(y, y_ref) <= 1e-15 and rel_err(pullback(ct)[1], g) <= 1e-15
    with pytest.raises(ValueError, match=r"softplus\(beta=0.0, threshold=20.0\): beta must be > 0"):
        nf.softplus(0.0)
    with pytest.raises(
        TypeError, match=r"leaky_relu\(negative_slope=0.1\): negative_slope must be a number"
    ):
        nf.leaky_relu("0.1")
    with pytest.raises(TypeError, match=r"elu\(alpha=None\): alpha must be a number"):
        nf.elu(None)


@pytest.mark.parametrize(
    "layer,ref", [(nf.log_softmax(), F.log_softmax), (nf.softmax(), F.softmax)]
)
def test_softmaxes_are_stable_for_huge_logits(layer, ref):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e4, 3e4, -2.0]], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype)
        y, pullback = layer.vjp({}, xd)
        ct = torch.randn_like(y)
        y_ref, (g,) = autograd_vjp(lambda t: ref(t, 1), [xd], ct)
        assert torch.isfinite(y).all() and torch.isfinite(pullback(ct)[1]).all()
        assert rel_err(y, y_ref) <= 1e-6 and rel_err(pullback(ct)[1], g) <= 1e-6


def test_kinks_take_pytorchs_subgradient():
    x = torch.zeros(1, 1, 1, 3, dtype=torch.float64)
    ct = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64).view(1, 1, 1, 3)
    for layer, ref in [
        (nf.leaky_relu(0.3), lambda t: F.leaky_relu(t, 0.3)),
        (nf.elu(2.0), lambda t: F.elu(t, 2.0)),
    ]:
        _, pullback = layer.vjp({}, x)
        assert torch.equal(pullback(ct)[1], autograd_vjp(ref, [x], ct)[1][0])


def test_bad_axes_and_inputs_are_refused():
    with pytest.raises(
        ValueError, match=r"log_softmax\(axis=2\): axis 2 is out of range for input shape \(4, 6\)"
    ):
        nf.log_softmax(axis=2).apply({}, torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"softmax\(axis=-3\): axis -3 is out of range"):
        nf.softmax(axis=-3).vjp({}, torch.randn(4, 6))
    with pytest.raises(TypeError, match=r"softmax\(axis=1.0\): axis must be an int"):
        nf.softmax(axis=1.0)
    with pytest.raises(TypeError, match=r"gelu: input must be floating point.*\(2, 2\)"):
        nf.gelu().apply({}, torch.ones(2, 2, dtype=torch.int64))
    _, pullback = nf.tanh().vjp({}, torch.randn(2, 3))
    with pytest.raises(
        ValueError, match=r"tanh: output gradient must have the output's shape \(2, 3\)"
    ):
        pullback(torch.randn(3))


@pytest.mark.parametrize(
    "layer", [nf.relu(), nf.sigmoid(), nf.tanh(), nf.leaky_relu(0.1), nf.softmax()]
)
def test_pullbacks_written_in_the_output_do_not_keep_the_input(layer):
    import gc
    import weakref

    x = randn(2, 3, 4, 5)
    y, pullback = layer.vjp({}, x)
    ct = torch.randn_like(y)
    _, dx_ref = layer.vjp({}, x.clone())[1](ct)
    alive = weakref.ref(x)
    del x
    gc.collect()
    assert alive() is None  # the backward pass keeps y only: one activation less in memory
    assert torch.equal(pullback(ct)[1], dx_ref)


@pytest.mark.parametrize(
    "layer",
    [nf.gelu(), nf.elu(), nf.softplus(), nf.leaky_relu(-0.5)],
    ids=["gelu", "elu", "softplus", "leaky_relu(-0.5)"],
)
def test_pullbacks_written_in_the_input_do_not_keep_the_output(layer):
    import gc
    import weakref

    x = randn(2, 3, 4, 5)
    y, pullback = layer.vjp({}, x)
    ct = randn(*y.shape, seed=1)
    _, dx_ref = layer.vjp({}, x)[1](ct)
    alive = weakref.ref(y)
    del y
    gc.collect()
    assert alive() is None  # the backward pass keeps x only: one activation less in memory
    assert torch.equal(pullback(ct)[1], dx_ref)


@pytest.mark.parametrize("slope", [0.0, 0.01, 1.0, 1.5, -0.5])
def test_leaky_relu_gradient_at_zeros_subnormals_and_infinities_matches_torch(slope):
    special = [0.0, -0.0, 1e-310, -1e-310, float("inf"), -float("inf"), 2.0, -3.0]
    x = torch.tensor(special, dtype=torch.float64).view(1, 2, 2, 2)
    y, pullback = nf.leaky_relu(slope).vjp({}, x)
    ct = torch.tensor([1.5, -2.0, 0.25, 3.0, -1.0, 0.5, 2.5, -0.75], dtype=torch.float64)
    ct = ct.view(1, 2, 2, 2)
    ref = F.relu if slope == 0 else (lambda t: F.leaky_relu(t, slope))  # torch: -inf * 0 = nan
    y_ref, (dx_ref,) = autograd_vjp(ref, [x], ct)
    assert torch.equal(y, y_ref)
    assert torch.equal(pullback(ct)[1], dx_ref)


@pytest.mark.parametrize("slope", [0.01, 0.1, 1.0, 1.5, -0.5, -2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_leaky_relu_forward_has_torch_bits_at_special_values(slope, dtype):
    """The forward pass bit for bit as ``F.leaky_relu``'s, signed zeros and NaNs included
    (``torch.equal`` counts -0.0 equal to 0.0 and a NaN unequal to itself), on a strided
    channels-last view as a convolution leaves it."""
    special = [0.0, -0.0, float("nan"), -float("nan"), float("inf"), -float("inf"), 1e-310]
    special += [-1e-310, 1e-40, -1e-40, 2.5, -3.25, 7.0, -0.125, 1e30, -1e30]
    buf = torch.tensor(special * 7, dtype=dtype).view(2, 4, 7, 2)  # (N, H, W + 1, C)
    x = buf[:, :, :6].permute(0, 3, 1, 2)  # every special value, in a strided NCHW view
    y = nf.leaky_relu(slope).apply({}, x)
    ints = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(y.contiguous().view(ints), F.leaky_relu(x, slope).contiguous().view(ints))


@pytest.mark.parametrize("layer", [nf.relu(), nf.leaky_relu(0.1)])
def test_bfloat16_pullbacks_keep_the_output_dtype_and_layout(layer):
    x = torch.randn(2, 8, 5, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y, pullback = layer.vjp({}, x)
    for ct in (torch.randn(y.shape).to(torch.bfloat16), torch.randn(y.shape)):  # NCHW memory
        dx = pullback(ct)[1]
        assert dx.dtype == torch.bfloat16
        assert dx.is_contiguous(memory_format=torch.channels_last)
        dx32 = layer.vjp({}, x.float())[1](ct.float())[1]
        assert rel_err(dx.float(), dx32) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_relu_pullback_in_16_bit_floats_equals_torchs_bit_for_bit(dtype):
    """The 16-bit pullback works on the bits of y and ct: zeros (+0 and -0 inputs), tiny and
    huge values, and infinite cotangents where y = 0 must all come out as torch's."""
    x = torch.randn(3, 4, 5, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30]).to(dtype)
    x[1, 0, 0, :2] = torch.tensor([float("inf"), -float("inf")]).to(dtype)
    ct = torch.randn(x.shape).to(dtype)
    ct[0, 0, 0, :2] = torch.tensor([float("inf"), -float("inf")]).to(dtype)  # at y = 0
    y, pullback = nf.relu().vjp({}, x)
    y_ref, (dx_ref,) = autograd_vjp(torch.relu, [x], ct)
    dx = pullback(ct)[1]
    assert torch.equal(y, y_ref)
    assert dx.dtype == dtype and torch.equal(dx, dx_ref)
    assert not dx[0, 0, 0, :2].isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1, 0.5, 1.0, 2.0, -0.5])
def test_leaky_relu_pullback_in_16_bit_floats_is_torchs_bit_for_bit(dtype, slope):
    """The 16-bit pullback picks ct or ct * slope on the bits: the product must be rounded
    once from the unrounded slope, as PyTorch's (a slope rounded to 16 bits first biased
    every negative-side gradient, by +0.1% for 0.1 in bfloat16), at zeros (+0 and -0),
    subnormals and infinities too."""
    x = torch.randn(3, 4, 5, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30]).to(dtype)
    x[1, 0, 0, :2] = torch.tensor([float("inf"), -float("inf")]).to(dtype)
    ct = torch.randn(x.shape).to(dtype)
    _, pullback = nf.leaky_relu(slope).vjp({}, x)
    dx = pullback(ct)[1]
    _, (dx_ref,) = autograd_vjp(lambda t: F.leaky_relu(t, slope), [x], ct)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(dx, dx_ref)
    assert torch.equal(dx.signbit(), dx_ref.signbit())


def test_elu_passes_the_cotangent_at_a_nan_input_as_torch():
    x = torch.tensor([float("nan"), -1.0, 1.0, 0.0], dtype=torch.float64)
    ct = torch.tensor([0.5, -2.0, 3.0, 1.5], dtype=torch.float64)
    _, (dx_ref,) = autograd_vjp(F.elu, [x], ct)
    assert torch.equal(nf.elu(1.0).vjp({}, x)[1](ct)[1], dx_ref)


def test_gelu_keeps_its_accuracy_in_the_negative_tail():
    """Phi(x) by erfc: no cancellation in 1 + erf for negative x (in float32 GELU was 0 below
    about -5.5); 16-bit inputs are computed in float32 and rounded once, as torch does."""
    x64 = torch.linspace(-12, 4, 801, dtype=torch.float64).float().double()
    exact = torch.tensor(
        [v * math.erfc(-v / math.sqrt(2)) / 2 for v in x64.tolist()], dtype=torch.float64
    )
    y32 = nf.gelu().apply({}, x64.float()).double()  # (the float32 rounding of x / sqrt 2
    assert ((y32 - exact).abs() <= 1e-4 * exact.abs()).all()  # moves erfc by up to 1e-5 here)
    for dtype in (torch.bfloat16, torch.float16):  # within half an ulp of the exact values
        x = x64.to(dtype)  # (torch's 16-bit GELU, from 1 + erf in float32, is 0 below -5.5)
        ct = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        y, pullback = nf.gelu().vjp({}, x)
        dx = pullback(ct)[1]
        assert y.dtype == dx.dtype == dtype
        y_exact, (g_exact,) = autograd_vjp(
            lambda t: t * torch.erfc(-t / math.sqrt(2)) / 2, [x.double()], ct.double()
        )
        ulp, tiny = 2.0 ** -(8 if dtype == torch.bfloat16 else 11), torch.finfo(dtype).tiny
        assert ((y.double() - y_exact).abs() <= ulp * y_exact.abs() + tiny).all()
        assert ((dx.double() - g_exact).abs() <= ulp * g_exact.abs() + tiny).all()


def test_elu_gradient_keeps_its_accuracy_for_very_negative_inputs():
    x = torch.tensor([-1.0, -10.0, -20.0, -30.0, -40.0, -80.0], dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 1e-6)):
        _, pullback = nf.elu(0.7).vjp({}, x.to(dtype))
        dx = pullback(torch.ones(6, dtype=dtype))[1].double()
        exact = 0.7 * x.exp()
        if dtype == torch.float32:
            exact = exact.float().double()  # e^-80 * 0.7 is a float32 subnormal
        assert ((dx - exact).abs() <= tol * exact.abs() + 1e-44).all()


def test_softplus_in_float16_does_not_overflow_below_the_threshold():
    """exp(12) is past float16's largest number (65504): the value must still be ~x, as
    torch's (which computes it in float32)."""
    x = torch.tensor([-30.0, -1.0, 0.0, 11.0, 12.0, 15.0, 19.9, 20.0, 21.0], dtype=torch.float16)
    y = nf.softplus().apply({}, x)
    assert torch.isfinite(y).all()
    assert (y.double() - F.softplus(x.float()).double()).abs().max() <= 0.01


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_relu_passes_infinite_and_nan_gradients_where_torch_does(dtype):
    """``ct`` where ``y > 0`` (infinite, NaN or not) and +0 elsewhere, torch's
    threshold_backward: ``sign(y) * ct`` had made 0 * inf = NaN off the active inputs."""
    x = torch.tensor([-2.0, 0.0, 3.0, -1.0, 4.0, -0.0, float("nan")], dtype=dtype)
    ct = torch.tensor([float("inf"), -float("inf"), float("inf"), float("nan"), 2.0, 5.0, 1.0])
    ct = ct.to(dtype)
    y, pullback = nf.relu().vjp({}, x)
    with torch.enable_grad():
        xr = x.clone().requires_grad_()
        (want,) = torch.autograd.grad(F.relu(xr), xr, ct)
    got = pullback(ct)[1]
    assert got.dtype == dtype and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make,ref", [(nf.softmax, F.softmax), (nf.log_softmax, F.log_softmax)])
def test_16_bit_softmax_is_computed_in_float32_as_torch(dtype, make, ref):
    """Rounded once from float32, as torch's: its error against float64 is torch's (in 16
    bits throughout, bfloat16 log_softmax erred 0.12 where torch's does 0.07)."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(8, 300, generator=g, dtype=torch.float64) * 16
    ct64 = torch.randn(8, 300, generator=g, dtype=torch.float64)
    x, ct = x64.to(dtype), ct64.to(dtype)
    y, pullback = make(axis=1).vjp({}, x)
    dx = pullback(ct)[1]
    y_ref, (dx_ref,) = autograd_vjp(lambda t: ref(t, 1), [x], ct)
    y_64, (dx_64,) = autograd_vjp(lambda t: ref(t, 1), [x.double()], ct.double())
    assert y.dtype == dx.dtype == dtype
    for ours, theirs, exact in ((y, y_ref, y_64), (dx, dx_ref, dx_64)):
        ours_err = float((ours.double() - exact).abs().max())
        assert ours_err <= float((theirs.double() - exact).abs().max()) * 1.01 + 1e-30


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "ours,ref",
    [
        (lambda: nf.elu(), F.elu),
        (lambda: nf.elu(0.7), lambda t: F.elu(t, 0.7)),
        (lambda: nf.softplus(), F.softplus),
        (lambda: nf.softplus(4.0, 10.0), lambda t: F.softplus(t, 4.0, 10.0)),
    ],
)
def test_16_bit_elu_and_softplus_are_computed_in_float32(dtype, ours, ref):
    """exp(x) and sigmoid(x) of x below about -10 are float16 subnormals: computed in 16 bits,
    dx erred 6-7% where torch's errs 0.05%. Now rounded once, within torch's error."""
    g = torch.Generator().manual_seed(0)
    x64 = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    ct64 = torch.randn(2001, generator=g, dtype=torch.float64) * 3e4 / (1 + x64.abs())
    x, ct = x64.to(dtype), ct64.to(dtype)
    y, pullback = ours().vjp({}, x)
    dx = pullback(ct)[1]
    y_ref, (dx_ref,) = autograd_vjp(ref, [x], ct)
    y_64, (dx_64,) = autograd_vjp(ref, [x.double()], ct.double())
    assert y.dtype == dx.dtype == dtype

    def error(t, exact):
        return float(((t.double() - exact).abs() / exact.abs().clamp(min=1e-3)).max())

    for got, theirs, exact in ((y, y_ref, y_64), (dx, dx_ref, dx_64)):
        assert error(got, exact) <= error(theirs, exact) * 1.01 + 1e-30


def test_softmax_over_an_empty_axis_is_empty_as_torchs():
    for make, ref in ((nf.softmax, F.softmax), (nf.log_softmax, F.log_softmax)):
        x = torch.randn(2, 0, 4)
        y, pullback = make(axis=1).vjp({}, x)
        assert y.shape == ref(x, 1).shape == (2, 0, 4)
        assert pullback(torch.randn(2, 0, 4))[1].shape == (2, 0, 4)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: nf.leaky_relu(float("nan")), r"negative_slope must be finite, got nan"),
        (lambda: nf.elu(float("inf")), r"alpha must be finite, got inf"),
        (lambda: nf.softplus(float("inf")), r"beta must be finite, got inf"),
        (lambda: nf.softplus(1.0, float("nan")), r"threshold must be not NaN, got nan"),
        (lambda: nf.batch_norm2d(eps=float("inf")), r"eps must be a finite positive number"),
    ],
)
def test_nan_and_infinite_hyperparameters_are_refused(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
    x = torch.tensor([-1.0, 0.0, 2.0])  # an infinite threshold: never linear, as torch
    assert torch.equal(nf.softplus(1.0, float("inf")).apply({}, x), F.softplus(x, 1, float("inf")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_gradient_of_an_infinite_cotangent_far_below_zero_is_torchs(dtype):
    """sigmoid(x) of x below -87 is a float32 subnormal, which the sigmoid pass flushed to 0:
    an infinite cotangent times it was NaN where torch's is infinite (and 0 where torch's is)."""
    x = torch.tensor([-120.0, -104.0, -100.0, -95.0, -89.0, -30.0, 0.0, 3.0, 25.0], dtype=dtype)
    ct = torch.full_like(x, float("inf"))
    _, pullback = nf.softplus().vjp({}, x)
    _, (g,) = autograd_vjp(F.softplus, [x], ct)
    ours = pullback(ct)[1]
    assert torch.equal(ours.isnan(), g.isnan()) and torch.equal(ours.isinf(), g.isinf()), (ours, g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_tanh_pullback_is_torchs_bit_for_bit(dtype):
    """1 - y^2 with y^2 rounded to 16 bits first lost most of its digits (bfloat16: 2.5% off
    the exact product, torch's 0.4%); computed in float32 and rounded once, as torch's."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4096, generator=g) * 8 - 4).to(dtype)
    ct = torch.randn(4096, generator=g).to(dtype)
    y, pullback = nf.tanh().vjp({}, x)
    y_ref, (dx_ref,) = autograd_vjp(torch.tanh, [x], ct)
    assert torch.equal(y, y_ref) and torch.equal(pullback(ct)[1], dx_ref)
