"""conv2d with groups > 1 (grouped and depthwise convolutions) against
torch.nn.functional.conv2d + autograd, finite differences, in lower precision, in a
network, as the Conv2d wrapper, and on bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_conv_matches,
    assert_matches_twin,
    assert_trains_like,
    image,
    params_in,
    rel_err,
)

import n2nfunc as nf

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# input shape, out_channels, kernel, stride, padding, dilation, groups
CASES = [
    ((2, 4, 7, 6), 6, 3, 1, 1, 1, 2),
    ((1, 6, 9, 8), 6, 3, 2, 1, 1, 6),  # depthwise, stride 2, batch 1
    ((2, 3, 6, 5), 6, 3, 1, "same", 1, 3),  # depthwise with two outputs per channel
    ((2, 4, 8, 5), 8, (2, 3), (2, 1), (1, 0), (2, 1), 4),  # non-square everything
    ((3, 6, 5, 5), 3, 1, 1, 0, 1, 3),  # 1 x 1
    ((2, 4, 10, 9), 4, 3, 2, 0, 1, 2),  # the last row and column read by no window
    ((1, 8, 5, 7), 4, 5, 1, 2, 1, 4),
    ((1, 4, 11, 10), 8, 3, 2, 1, 2, 4),  # depthwise x2, stride and dilation 2, a cropped edge
    ((2, 2, 6, 6), 2, (3, 1), 1, (1, 0), 1, 2),  # depthwise, a non-square kernel
]


def _torch_conv(s, p, d, groups):
    return lambda x, w, b: F.conv2d(x, w, b, s, p, d, groups)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,out,k,s,p,d,groups", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_conv2d_matches_torch(dtype, shape, out, k, s, p, d, groups, bias):
    layer = nf.conv2d(out, k, s, p, d, bias=bias, groups=groups)
    params = params_in(layer, shape, dtype)
    for channels_last in (False, True):
        x = image(shape, dtype, channels_last=channels_last)
        assert_conv_matches(layer, params, x, _torch_conv(s, p, d, groups), TOL[dtype])


@pytest.mark.parametrize("shape,out,k,s,p,d,groups", CASES[:4])
def test_check_vjp(shape, out, k, s, p, d, groups):
    layer = nf.conv2d(out, k, s, p, d, groups=groups)
    nf.check_vjp(layer, params_in(layer, shape, torch.float64), image(shape, torch.float64))


def test_init_draws_torchs_weights_for_the_same_seed():
    layer = nf.conv2d(6, 3, padding=1, groups=3)
    torch.manual_seed(5)
    out, params = layer.init(None, (-1, 6, 8, 8))
    torch.manual_seed(5)
    ref = torch.nn.Conv2d(6, 6, 3, padding=1, groups=3)
    assert out == (-1, 6, 8, 8) and params["weight"].shape == (6, 2, 3, 3)
    assert torch.equal(params["weight"], ref.weight) and torch.equal(params["bias"], ref.bias)


def test_bfloat16_sums_in_float32():
    """A depthwise layer in bfloat16 is computed in float32 and rounded once: its results are
    the float32 ones of the same numbers, rounded."""
    layer = nf.conv2d(8, 3, 1, 1, groups=8)
    p32 = nf.tree.map(lambda t: t.bfloat16().float(), params_in(layer, (2, 8, 6, 7), torch.float32))
    x32 = image((2, 8, 6, 7), torch.float32).bfloat16().float()
    y, pullback = layer.vjp(nf.tree.map(lambda t: t.bfloat16(), p32), x32.bfloat16())
    y_ref, pullback_ref = layer.vjp(p32, x32)
    assert y.dtype == torch.bfloat16 and rel_err(y.float(), y_ref) < 1e-2
    ct = torch.randn(y.shape).bfloat16()
    grads, dx = pullback(ct)
    grads_ref, dx_ref = pullback_ref(ct.float())
    assert dx.dtype == torch.bfloat16 and rel_err(dx.float(), dx_ref) < 1e-2
    assert rel_err(grads["weight"].float(), grads_ref["weight"]) < 1e-2


def test_bfloat16_input_gradient_adds_its_taps_in_float32():
    """Taps 256, 1 and -256 reach each inner pixel: added in bfloat16, 256 + 1 rounds to 256
    and the pixel's gradient is 0; in float32 it is 1."""
    layer = nf.conv2d(2, (1, 3), padding=(0, 1), bias=False, groups=2)
    weight = torch.tensor([256.0, 1.0, -256.0]).repeat(2, 1).view(2, 1, 1, 3).bfloat16()
    _, pullback = layer.vjp({"weight": weight}, torch.zeros(1, 2, 2, 5).bfloat16())
    dx = pullback(torch.ones(1, 2, 2, 5).bfloat16())[1]
    assert torch.equal(dx[..., 1:-1], torch.ones(1, 2, 2, 3).bfloat16())


def test_a_separable_block_with_the_new_norms_matches_torch_and_passes_check_vjp():
    """Depthwise 3 x 3, pointwise 1 x 1, group norm, channel layer norm: the blocks of
    NAFNet-style denoisers."""
    net = nf.serial(
        nf.conv2d(4, 3, padding=1, groups=4),
        nf.conv2d(8, 1),
        nf.group_norm(2),
        nf.leaky_relu(0.1),
        nf.layer_norm(1),
        nf.conv2d(8, 3, 2, 1, groups=8),
    )
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 4, 7, 6))
    params = nf.tree.map(lambda t: torch.randn_like(t.double()), params)
    x = image((2, 4, 7, 6), torch.float64)
    nf.check_vjp(net, params, x)

    def twin(x_, q):
        h = F.conv2d(x_, q["0.weight"], q["0.bias"], padding=1, groups=4)
        h = F.conv2d(h, q["1.weight"], q["1.bias"])
        h = F.leaky_relu(F.group_norm(h, 2, q["2.weight"], q["2.bias"]), 0.1)
        h = F.layer_norm(h.movedim(1, -1), (8,), q["4.weight"], q["4.bias"]).movedim(-1, 1)
        return F.conv2d(h, q["5.weight"], q["5.bias"], 2, 1, groups=8)

    assert_matches_twin(net, params, x, twin, 1e-10)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (nf.conv2d(8, 3, padding=1, groups=2), (2, 4, 8, 8)),
        (nf.conv_transpose2d(8, 4, 2, 1, groups=2), (2, 4, 6, 6)),
    ],
    ids=["conv", "transpose"],
)
def test_mixed_precision_takes_a_grouped_convolution(layer, shape):
    params = params_in(layer, shape, torch.float32)
    x = image(shape, torch.float32)
    y32, pullback32 = layer.vjp(params, x)
    y16, pullback16 = nf.mixed_precision(layer).vjp(params, x)
    assert y16.dtype == torch.float32 and rel_err(y16, y32) < 2e-2
    ct = torch.randn(y32.shape)
    (g16, dx16), (g32, dx32) = pullback16(ct), pullback32(ct)
    assert g16["weight"].dtype == torch.float32 and rel_err(g16["weight"], g32["weight"]) < 2e-2
    assert rel_err(dx16, dx32) < 2e-2


def test_the_wrapper_trains_like_torch_nn():
    torch.manual_seed(0)
    ours = nf.Sequential(nf.Conv2d(4, 8, 3, 1, 1, groups=4), nf.ReLU(), nf.Conv2d(8, 4, 1))
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, 1, 1, groups=4), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    )
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.parameters()))
    assert ours[0].groups == 4 and "groups=4" in repr(ours[0])
    assert_trains_like(ours, theirs, (2, 4, 5, 6), (2, 4, 5, 6))


BAD_GROUPS = [  # (call of the functional layer f or its wrapper F, error, message)
    (lambda f, F: f(6, 3, groups=4), ValueError, r"\): out_channels 6 do not split into 4"),
    (lambda f, F: f(6, 3, groups=0), ValueError, r"groups must be a positive int"),
    (lambda f, F: f(6, 3, groups=2.0), TypeError, r"groups must be a positive int"),
    (lambda f, F: f(4, 3, groups=True), TypeError, r"groups=True\): groups must be a pos"),
    (
        lambda f, F: f(6, 3, groups=3).init(None, (-1, 4, 5, 5)),
        ValueError,
        r"groups=3\): the 4 input channels .* do not split into 3 groups",
    ),
    (
        lambda f, F: F(4, 6, 3, groups=3),
        ValueError,
        r"Conv2d: in_channels 4 do not split into groups=3",
    ),
    (
        lambda f, F: F(6, 4, 3, groups=3),
        ValueError,
        r"Conv2d: out_channels 4 do not split into groups=3",
    ),
    (lambda f, F: F(4, 6, 3, groups=True), TypeError, r"Conv2d: groups must be a positive int"),
    (lambda f, F: F(4, 6, 3, groups=None), TypeError, r"Conv2d: groups must be a positive int"),
]


@pytest.mark.parametrize(
    "f,F",
    [(nf.conv2d, nf.Conv2d), (nf.conv_transpose2d, nf.TransposeConv2d)],
    ids=["conv", "transpose"],
)
@pytest.mark.parametrize("make,error,pattern", BAD_GROUPS)
def test_bad_groups_are_refused(f, F, make, error, pattern):
    """Grouped convolutions and grouped transposed convolutions refuse the same bad groups,
    functional and wrapper alike, naming the layer and the counts."""
    with pytest.raises(error, match=pattern):
        make(f, F)


@pytest.mark.parametrize(
    "x,pattern",
    [
        (
            torch.randn(2, 6, 5, 5),
            r"groups=2\): expected input of shape \(N, 4, H, W\), got \(2, 6",
        ),
        (torch.randn(2, 4, 5), r"expected input of shape \(N, 4, H, W\), got \(2, 4, 5\)"),
        (torch.randn(2, 4, 5, 5).double(), r"input dtype torch.float64 does not match"),
        (torch.randn(2, 4, 2, 2), r"gives an empty output"),
    ],
)
def test_bad_input_is_refused_naming_the_layer_and_shapes(x, pattern):
    layer = nf.conv2d(6, 3, groups=2)
    _, params = layer.init(None, (-1, 4, 5, 5))
    with pytest.raises((ValueError, TypeError), match=pattern):
        layer.apply(params, x)


def test_bad_params_are_refused():
    layer = nf.conv2d(6, 3, groups=2)
    _, params = layer.init(None, (-1, 4, 5, 5))
    x = torch.randn(2, 4, 5, 5)
    ungrouped = {"weight": torch.randn(6, 4, 3, 3), "bias": params["bias"]}  # 4 a group: 8 in all
    with pytest.raises(ValueError, match=r"groups=2\): expected input of shape \(N, 8, H, W\)"):
        layer.apply(ungrouped, x)
    odd = {"weight": torch.randn(6, 3, 3, 2), "bias": params["bias"]}
    with pytest.raises(ValueError, match=r"'weight' must have shape \(6, 2, 3, 3\), got \(6, 3"):
        layer.apply(odd, x)
    flat = {"weight": torch.randn(6, 2, 3), "bias": params["bias"]}  # 3-d; 5 channels: no split
    for bad_x in (torch.randn(2, 5, 5, 5), torch.randn(4, 5, 5)):
        with pytest.raises(ValueError, match=r"shape \(6, C/2, 3, 3\), C the input's channels"):
            layer.apply(flat, bad_x)  # the channel count was printed as -1
    for not_a_dict in (None, 3):  # set(params) had raised a TypeError first
        with pytest.raises(ValueError, match=r"expected parameters \['bias', 'weight'\], got"):
            layer.apply(not_a_dict, torch.randn(4, 5, 5))
    transposed = nf.conv_transpose2d(6, 3, groups=2)
    with pytest.raises(ValueError, match=r"shape \(C, 3, 3, 3\), C the input's channels"):
        transposed.apply(flat, torch.randn(2, 5, 5, 5))
    _, pullback = layer.vjp(params, x)
    with pytest.raises(ValueError, match=r"output gradient must have the output's shape"):
        pullback(torch.randn(2, 6, 4, 4))
    params["weight"].add_(1)
    with pytest.raises(RuntimeError, match=r"weight .*changed in place"):
        pullback(torch.randn(2, 6, 3, 3))


@pytest.mark.cuda
def test_grouped_conv2d_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for shape, out, k, s, p, d, groups in CASES:
        layer = nf.conv2d(out, k, s, p, d, groups=groups)
        params = nf.tree.map(lambda t: t.cuda(), params_in(layer, shape, torch.float64))
        x = image(shape, torch.float64).cuda()
        assert_conv_matches(layer, params, x, _torch_conv(s, p, d, groups), TOL[torch.float64])


def test_the_weight_gradient_is_its_own_tensor_and_errors_name_the_grouped_layer():
    """One output channel a group (O = G) with wider input groups: the weight gradient was a
    view into the block-diagonal one, keeping G times its memory alive."""
    layer = nf.conv2d(2, 3, padding=1, groups=2)
    params = params_in(layer, (1, 8, 5, 5), torch.float32)
    _, pullback = layer.vjp(params, image((1, 8, 5, 5), torch.float32))
    dw = pullback(torch.randn(1, 2, 5, 5))[0]["weight"]
    assert dw.is_contiguous() and dw.untyped_storage().nbytes() == dw.numel() * 4
    with pytest.raises(ValueError, match=r"groups=2\): output gradient must have"):
        pullback(torch.randn(1, 2, 5, 4))


def test_a_depthwise_layer_keeps_an_infinity_in_its_own_channel():
    layer = nf.conv2d(4, 3, padding=1, groups=4)
    params = params_in(layer, (1, 4, 5, 5), torch.float32)
    x = image((1, 4, 5, 5), torch.float32)
    x[0, 0, 2, 2] = float("inf")
    y, pullback = layer.vjp(params, x)
    assert torch.isfinite(y[:, 1:]).all()
    ct = torch.randn(y.shape)
    ct[0, 0, 1, 1] = float("inf")
    assert torch.isfinite(pullback(ct)[1][:, 1:]).all()
