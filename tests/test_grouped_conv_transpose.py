"""conv_transpose2d with groups > 1 against torch.nn.functional.conv_transpose2d + autograd,
finite differences, in a network, as the TransposeConv2d wrapper, and on bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_conv_matches, assert_trains_like, image, params_in

import n2nfunc as nf

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# input shape, out_channels, kernel, stride, padding, output_padding, dilation, groups
CASES = [
    ((2, 4, 5, 6), 6, 3, 1, 1, 0, 1, 2),
    ((1, 6, 4, 5), 6, 4, 2, 1, 0, 1, 3),  # the default network's k4 s2, batch 1
    ((2, 4, 5, 4), 4, 3, 2, 1, 1, 1, 4),  # depthwise, stride 2, output_padding
    ((2, 4, 3, 5), 8, (2, 3), (2, 1), (0, 1), (1, 0), (1, 2), 2),  # non-square everything
    ((1, 3, 6, 5), 6, 1, 1, 0, 0, 1, 3),  # 1 x 1, two outputs per input channel
    ((1, 8, 4, 4), 4, 3, 3, 2, 0, 1, 4),  # stride 3, wide padding
]


def _torch_conv(s, p, op, groups, d):
    return lambda x, w, b: F.conv_transpose2d(x, w, b, s, p, op, groups, d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,out,k,s,p,op,d,groups", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_conv_transpose2d_matches_torch(dtype, shape, out, k, s, p, op, d, groups, bias):
    layer = nf.conv_transpose2d(out, k, s, p, op, d, bias=bias, groups=groups)
    params = params_in(layer, shape, dtype)
    for channels_last in (False, True):
        x = image(shape, dtype, channels_last=channels_last)
        assert_conv_matches(layer, params, x, _torch_conv(s, p, op, groups, d), TOL[dtype], False)


@pytest.mark.parametrize("shape,out,k,s,p,op,d,groups", CASES[:4])
def test_check_vjp(shape, out, k, s, p, op, d, groups):
    layer = nf.conv_transpose2d(out, k, s, p, op, d, groups=groups)
    nf.check_vjp(layer, params_in(layer, shape, torch.float64), image(shape, torch.float64))


def test_init_draws_torchs_weights_for_the_same_seed():
    layer = nf.conv_transpose2d(8, 4, 2, 1, groups=2)
    torch.manual_seed(5)
    out, params = layer.init(None, (-1, 6, 8, 8))
    torch.manual_seed(5)
    ref = torch.nn.ConvTranspose2d(6, 8, 4, 2, 1, groups=2)
    assert out == (-1, 8, 16, 16) and params["weight"].shape == (6, 4, 4, 4)
    assert torch.equal(params["weight"], ref.weight) and torch.equal(params["bias"], ref.bias)


def test_the_wrapper_trains_like_torch_nn():
    torch.manual_seed(0)
    ours = nf.Sequential(
        nf.Conv2d(4, 8, 4, 2, 1, groups=2), nf.ReLU(), nf.TransposeConv2d(8, 4, 4, 2, 1, groups=4)
    )
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 4, 2, 1, groups=2),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(8, 4, 4, 2, 1, groups=4),
    )
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.parameters()))
    assert ours[2].groups == 4 and "groups=4" in repr(ours[2])
    assert_trains_like(ours, theirs, (2, 4, 6, 8), (2, 4, 6, 8))


def test_the_weight_gradient_is_its_own_tensor_and_errors_name_the_grouped_layer():
    layer = nf.conv_transpose2d(2, 3, padding=1, groups=2)
    params = params_in(layer, (1, 8, 5, 5), torch.float32)
    _, pullback = layer.vjp(params, image((1, 8, 5, 5), torch.float32))
    dw = pullback(torch.randn(1, 2, 5, 5))[0]["weight"]
    assert dw.shape == (8, 1, 3, 3)
    assert dw.is_contiguous() and dw.untyped_storage().nbytes() == dw.numel() * 4
    with pytest.raises(ValueError, match=r"groups=2\): output gradient must have"):
        pullback(torch.randn(1, 2, 5, 4))


def test_bad_params_and_input_are_refused_naming_the_layer_and_shapes():
    layer = nf.conv_transpose2d(6, 3, groups=2)
    _, params = layer.init(None, (-1, 4, 5, 5))
    assert params["weight"].shape == (4, 3, 3, 3)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match=r"groups=2\): expected input of shape \(N, 4, H, W\)"):
        layer.apply(params, torch.randn(2, 6, 5, 5))
    ungrouped = {"weight": torch.randn(4, 6, 3, 3), "bias": params["bias"]}
    with pytest.raises(ValueError, match=r"'weight' must have shape \(4, 3, 3, 3\), got \(4, 6"):
        layer.apply(ungrouped, x)
    odd = {"weight": torch.randn(5, 3, 3, 3), "bias": params["bias"]}  # 5 inputs, 2 groups
    with pytest.raises(ValueError, match=r"the 5 input channels of weight .* do not split"):
        layer.apply(odd, torch.randn(2, 5, 5, 5))


@pytest.mark.cuda
def test_grouped_conv_transpose2d_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for shape, out, k, s, p, op, d, groups in CASES:
        layer = nf.conv_transpose2d(out, k, s, p, op, d, groups=groups)
        params = nf.tree.map(lambda t: t.cuda(), params_in(layer, shape, torch.float64))
        x = image(shape, torch.float64).cuda()
        ref = _torch_conv(s, p, op, groups, d)
        assert_conv_matches(layer, params, x, ref, TOL[torch.float64], False)


def test_torchs_name_is_in_its_errors():
    with pytest.raises(ValueError, match=r"^ConvTranspose2d: in_channels 64 do not split into"):
        nf.ConvTranspose2d(64, 32, 4, 2, 1, groups=3)
