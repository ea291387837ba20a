"""pixel_shuffle / pixel_unshuffle against torch.nn.functional's + autograd, finite
differences, as the PixelShuffle / PixelUnshuffle wrappers, in a network, and on bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_trains_like, autograd_vjp

import n2nfunc as nf

CASES = [  # factor, pixel_shuffle's input shape
    (2, (2, 12, 3, 5)),  # odd, non-square
    (3, (1, 18, 4, 2)),  # batch 1, factor 3
    (2, (3, 4, 1, 1)),  # one pixel
    (1, (2, 3, 4, 5)),  # factor 1: a copy
]


def _x(shape, dtype=torch.float64, channels_last=False, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("r,shape", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_both_match_torch_bit_for_bit(dtype, r, shape, channels_last):
    """Only moves: outputs and gradients equal torch's exactly, random cotangents."""
    for layer, fn, x in [
        (nf.pixel_shuffle(r), F.pixel_shuffle, _x(shape, dtype, channels_last)),
        (nf.pixel_unshuffle(r), F.pixel_unshuffle, F.pixel_shuffle(_x(shape, dtype), r)),
    ]:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y, pullback = layer.vjp({}, x)
        ct = _x(y.shape, dtype, seed=1)
        y_ref, (gx,) = autograd_vjp(lambda x_: fn(x_, r), [x], ct)  # noqa: B023
        assert torch.equal(y, y_ref) and y.dtype == dtype
        assert torch.equal(layer.apply({}, x), y)
        grads, dx = pullback(ct)
        assert grads == {} and torch.equal(dx, gx)
        assert y.data_ptr() != x.data_ptr()  # a new tensor, also at factor 1
        assert layer.init(None, tuple(x.shape)) == (tuple(y.shape), {})


@pytest.mark.parametrize("r,shape", CASES[:2])
def test_check_vjp(r, shape):
    nf.check_vjp(nf.pixel_shuffle(r), {}, _x(shape))
    nf.check_vjp(nf.pixel_unshuffle(r), {}, F.pixel_shuffle(_x(shape), r))


def test_init_keeps_unknown_sizes_and_the_two_are_inverses():
    assert nf.pixel_shuffle(2).init(None, (-1, 8, -1, 5))[0] == (-1, 2, -1, 10)
    assert nf.pixel_unshuffle(2).init(None, (-1, 2, 6, -1))[0] == (-1, 8, 3, -1)
    x = _x((2, 3, 6, 4))
    net = nf.serial(nf.pixel_unshuffle(2), nf.pixel_shuffle(2))
    out_shape, params = net.init(None, tuple(x.shape))
    assert out_shape == tuple(x.shape) and torch.equal(net.apply(params, x), x)


def test_wrappers_are_torch_nn_modules_in_a_network():
    """A sub-pixel upsampling block (conv to C r^2 channels, PixelShuffle) and a
    space-to-depth one train like torch.nn's."""
    assert repr(nf.PixelShuffle(2)) == "PixelShuffle(upscale_factor=2)"
    assert nf.PixelUnshuffle(3).downscale_factor == 3 and nf.PixelShuffle(2).param() == []
    torch.manual_seed(0)
    ours = nf.Sequential(
        nf.PixelUnshuffle(2), nf.Conv2d(12, 12, 3, 1, 1), nf.ReLU(), nf.PixelShuffle(2)
    )
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.PixelUnshuffle(2),
        torch.nn.Conv2d(12, 12, 3, 1, 1),
        torch.nn.ReLU(),
        torch.nn.PixelShuffle(2),
    )
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.parameters()))
    assert_trains_like(ours, theirs, (2, 3, 6, 8), (2, 3, 6, 8))


@pytest.mark.parametrize(
    "make,x,error,pattern",
    [
        (
            lambda: nf.pixel_shuffle(2),
            torch.randn(2, 6, 3, 3),
            ValueError,
            r"pixel_shuffle\(upscale_factor=2\): the 6 channels of input shape \(2, 6, 3, 3\) "
            r"are not a multiple of upscale_factor\^2 = 4",
        ),
        (
            lambda: nf.pixel_unshuffle(2),
            torch.randn(2, 3, 5, 4),
            ValueError,
            r"pixel_unshuffle\(downscale_factor=2\): the height and width of input shape "
            r"\(2, 3, 5, 4\) must be multiples",
        ),
        (
            lambda: nf.pixel_shuffle(2),
            torch.randn(8, 3, 3),
            ValueError,
            r"pixel_shuffle.*expected input of shape \(N, C, H, W\), got \(8, 3, 3\)",
        ),
        (lambda: nf.pixel_shuffle(0), None, ValueError, r"upscale_factor must be a positive"),
        (lambda: nf.pixel_unshuffle(2.0), None, TypeError, r"downscale_factor must be a pos"),
        (lambda: nf.PixelShuffle(-1), None, ValueError, r"upscale_factor must be a positive"),
        (
            lambda: nf.pixel_shuffle(2),
            torch.ones(2, 4, 3, 3, dtype=torch.int64),
            TypeError,
            r"pixel_shuffle.*floating point",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_layer_and_shapes(make, x, error, pattern):
    with pytest.raises(error, match=pattern):
        make().apply({}, x)


def test_init_refuses_a_shape_the_factor_does_not_divide():
    with pytest.raises(ValueError, match=r"the 6 channels of input shape \(-1, 6, 4, 4\)"):
        nf.pixel_shuffle(2).init(None, (-1, 6, 4, 4))
    with pytest.raises(ValueError, match=r"input shape \(-1, 3, 5, -1\) must be multiples"):
        nf.pixel_unshuffle(2).init(None, (-1, 3, 5, -1))


def test_a_wrong_cotangent_is_refused():
    _, pullback = nf.pixel_shuffle(2).vjp({}, torch.randn(1, 4, 2, 3))
    with pytest.raises(ValueError, match=r"pixel_shuffle.*output gradient must have"):
        pullback(torch.randn(1, 1, 4, 5))


def test_strided_inputs_sliced_or_transposed():
    base = _x((2, 8, 6, 10))
    for x in (base[:, :, :, 1:9], base.transpose(2, 3)[:, :, 1:9, :4], base[::2]):
        for r, fn, layer in [(2, F.pixel_unshuffle, nf.pixel_unshuffle(2))]:
            y, pullback = layer.vjp({}, x)
            assert torch.equal(y, fn(x, r))
            ct = _x(y.shape, seed=3)
            assert torch.equal(pullback(ct)[1], F.pixel_shuffle(ct, r))
        z = F.pixel_unshuffle(x, 2)[:, ::2]  # a strided input of the shuffle
        assert torch.equal(nf.pixel_shuffle(2).apply({}, z), F.pixel_shuffle(z, 2))
