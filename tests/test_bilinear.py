"""bilinear_upsample against torch.nn.functional.interpolate(mode="bilinear") + autograd,
finite differences, in lower precision, as the BilinearUpsampling wrapper, and on bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err

import n2nfunc as nf

TOL = {torch.float64: 1e-10, torch.float32: 1e-6}

CASES = [  # input shape, options
    ((2, 3, 5, 7), {}),  # x2, odd and non-square
    ((1, 2, 4, 6), {"scale_factor": (1.5, 3)}),
    ((2, 3, 9, 8), {"size": (4, 13)}),  # shrink one axis, grow the other
    ((2, 3, 5, 7), {"scale_factor": 2, "align_corners": True}),
    ((1, 1, 1, 5), {"size": (3, 1), "align_corners": True}),  # one input row, one output column
    ((2, 2, 6, 6), {"scale_factor": 0.5}),
    ((2, 2, 7, 5), {"scale_factor": 2.3}),
    ((1, 4, 3, 3), {"scale_factor": 1}),
    ((1, 2, 5, 7), {"scale_factor": 1.1}),  # sizes kept: copied, as torch's CPU kernel
    ((1, 2, 5, 7), {"scale_factor": (2, 1.1)}),  # one axis kept
    ((2, 2, 1, 3), {"scale_factor": (2, 4)}),  # power-of-two factors by phases: one row, x4
    ((1, 3, 4, 5), {"size": (16, 10)}),  # factors 4 and 2 given by size
    ((1, 2, 2, 2), {"scale_factor": 3.0}),
]


def _torch_options(options):
    out = {"align_corners": False, **options}
    if "size" not in out:
        out.setdefault("scale_factor", 2)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,options", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_torch(dtype, shape, options, channels_last):
    layer = nf.bilinear_upsample(**options)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, pullback = layer.vjp({}, x)
    ct = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y_ref, (gx,) = autograd_vjp(
        lambda x_: F.interpolate(x_, mode="bilinear", **_torch_options(options)), [x], ct
    )
    assert y.shape == y_ref.shape and y.dtype == dtype and rel_err(y, y_ref) <= TOL[dtype]
    assert torch.equal(layer.apply({}, x), y)
    grads, dx = pullback(ct)
    assert grads == {} and dx.shape == x.shape and rel_err(dx, gx) <= TOL[dtype]
    _, params_shape = layer.init(None, (-1,) + shape[1:])
    assert layer.init(None, shape)[0] == tuple(y.shape) and params_shape == {}


@pytest.mark.parametrize("shape,options", CASES[:5])
def test_check_vjp(shape, options):
    layer = nf.bilinear_upsample(**options)
    nf.check_vjp(layer, {}, torch.randn(shape, dtype=torch.float64))


def test_bfloat16_is_computed_in_float32_and_rounded_once():
    x = torch.randn(2, 3, 6, 5).bfloat16()
    y, pullback = nf.bilinear_upsample(scale_factor=(2, 3)).vjp({}, x)
    y32, pullback32 = nf.bilinear_upsample(scale_factor=(2, 3)).vjp({}, x.float())
    assert y.dtype == torch.bfloat16 and torch.equal(y, y32.bfloat16())
    ct = torch.randn(y.shape).bfloat16()
    assert torch.equal(pullback(ct)[1], pullback32(ct.float())[1].bfloat16())


def test_inside_a_network_and_mixed_precision():
    net = nf.serial(nf.conv2d(4, 3, padding=1), nf.bilinear_upsample(), nf.conv2d(2, 1))
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 5, 6))
    nf.check_vjp(net, nf.tree.map(lambda t: t.double(), params), torch.randn(2, 3, 5, 6).double())
    x = torch.randn(2, 3, 5, 6)
    y16 = nf.mixed_precision(net).apply(params, x)
    assert y16.dtype == torch.float32 and rel_err(y16, net.apply(params, x)) < 2e-2


def test_the_wrapper_is_torch_nn_upsample():
    ours, theirs = nf.BilinearUpsampling(), torch.nn.Upsample(scale_factor=2, mode="bilinear")
    x = torch.randn(2, 3, 4, 5)
    assert rel_err(ours.forward(x), theirs(x)) < 1e-6
    assert ours.backward(torch.randn(2, 3, 8, 10)).shape == x.shape
    sized = nf.BilinearUpsampling(size=(5, 7), align_corners=True)
    ref = torch.nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True)
    assert rel_err(sized.forward(x), ref(x)) < 1e-6
    assert repr(sized) == "BilinearUpsampling(size=(5, 7), align_corners=True)"
    assert nf.BilinearUpsampling(align_corners=None).align_corners is False  # torch's default


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda: nf.bilinear_upsample(2, (4, 4)), ValueError, r"give size or scale_factor"),
        (lambda: nf.bilinear_upsample(0), ValueError, r"scale_factor must be a positive number"),
        (lambda: nf.bilinear_upsample(float("inf")), ValueError, r"scale_factor must be a pos"),
        (lambda: nf.bilinear_upsample((2, 3, 4)), ValueError, r"scale_factor must be a pos"),
        (lambda: nf.bilinear_upsample(True), TypeError, r"scale_factor must be a positive"),
        (lambda: nf.bilinear_upsample("2"), TypeError, r"scale_factor must be a positive"),
        (lambda: nf.bilinear_upsample(size=(0, 3)), ValueError, r"bilinear_upsample.*size"),
        (lambda: nf.bilinear_upsample(align_corners="no"), TypeError, r"align_corners must be"),
        (
            lambda: nf.bilinear_upsample(0.1).init(None, (-1, 3, 5, 5)),
            ValueError,
            r"input shape \(-1, 3, 5, 5\) gives an empty output \(0, 0\)",
        ),
    ],
)
def test_bad_options_are_refused(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


@pytest.mark.parametrize(
    "x,params,error,pattern",
    [
        (torch.randn(2, 3, 5), {}, ValueError, r"expected input of shape \(N, C, H, W\)"),
        (torch.ones(1, 3, 4, 4, dtype=torch.int64), {}, TypeError, r"floating point"),
        (torch.randn(1, 3, 4, 4), {"weight": torch.ones(1)}, ValueError, r"expected parameters"),
        (torch.randn(1, 3, 0, 4), {}, ValueError, r"empty image"),
    ],
)
def test_bad_input_is_refused(x, params, error, pattern):
    with pytest.raises(error, match=rf"bilinear_upsample\(scale_factor=2.*{pattern}"):
        nf.bilinear_upsample().apply(params, x)


def test_a_wrong_cotangent_is_refused():
    _, pullback = nf.bilinear_upsample().vjp({}, torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"output gradient must have the output's shape"):
        pullback(torch.randn(1, 2, 3, 3))


@pytest.mark.cuda
def test_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for shape, options in CASES[:-1]:  # (torch's CUDA kernel copies only where both axes
        x = torch.randn(shape, dtype=torch.float64, device="cuda")  # keep their size)
        y, pullback = nf.bilinear_upsample(**options).vjp({}, x)
        ct = torch.randn_like(y)
        y_ref, (gx,) = autograd_vjp(
            lambda x_, o=options: F.interpolate(x_, mode="bilinear", **_torch_options(o)), [x], ct
        )
        assert rel_err(y, y_ref) <= 1e-10 and rel_err(pullback(ct)[1], gx) <= 1e-10


@pytest.mark.parametrize("factor", [2, 4])
def test_integer_factors_spread_infinities_and_nans_as_torch(factor):
    """The phase path reads the same two inputs with the same weights as torch's kernel,
    weight-0 neighbours included, so non-finite values land where torch's do, forward and
    backward."""
    x = torch.randn(1, 2, 5, 6)
    x[0, 0, 1, 2], x[0, 1, 3, 0], x[0, 1, 0, 5] = float("inf"), float("nan"), -float("inf")
    y = nf.bilinear_upsample(factor).apply({}, x)
    y_ref = F.interpolate(x, scale_factor=factor, mode="bilinear")
    assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.isinf(), y_ref.isinf())
    finite = torch.isfinite(y_ref)
    assert rel_err(y[finite], y_ref[finite]) < 1e-6
    x = torch.randn(1, 2, 5, 6)
    ct = torch.randn(y.shape)
    ct[0, 0, 0, 0], ct[0, 1, -1, -1] = float("inf"), float("nan")
    _, pullback = nf.bilinear_upsample(factor).vjp({}, x)
    _, (gx,) = autograd_vjp(
        lambda x_: F.interpolate(x_, scale_factor=factor, mode="bilinear"), [x], ct
    )
    dx = pullback(ct)[1]
    assert torch.equal(dx.isnan(), gx.isnan()) and torch.equal(dx.isinf(), gx.isinf())
