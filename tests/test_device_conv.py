"""The device engine (n2nfunc.device_conv, the convolutions off the CPU) on the CPU, forced
on: in float64 the same grids as tests/test_conv.py against torch autograd, in bfloat16
tests/test_precision.py's checks against torch.autocast (tests/test_cuda.py runs the
engine where it applies by itself)."""

import pytest
import test_precision
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, init64, randn, rel_err
from test_conv import CONV_GRID, TCONV_GRID, TOL64, UP_GRID, _compare

import n2nfunc as nf
from n2nfunc import device_conv


@pytest.fixture(autouse=True)
def engine_calls(monkeypatch):
    """Force the engine on for CPU tensors; count its convolutions."""
    calls = {"conv": 0, "conv_transpose": 0}

    def counted(name):
        inner = getattr(device_conv, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return inner(*args, **kwargs)

        return call

    monkeypatch.setattr(device_conv, "applies", lambda x: x.dtype.is_floating_point)
    for name in calls:
        monkeypatch.setattr(device_conv, name, counted(name))
    return calls


@pytest.mark.parametrize("k,s,p,d,hw,n", CONV_GRID)
def test_conv2d_matches_torch_float64(engine_calls, k, s, p, d, hw, n):
    layer = nf.conv2d(4, k, stride=s, padding=p, dilation=d)
    ref = lambda x, q: F.conv2d(x, q["weight"], q["bias"], s, p, d)  # noqa: E731
    _compare(layer, ref, init64(layer, (n, 3) + hw), randn(n, 3, *hw), TOL64)
    assert engine_calls["conv"] == 2  # vjp and apply


@pytest.mark.parametrize("k,s,p,op,d,hw,n", TCONV_GRID)
def test_conv_transpose2d_matches_torch_float64(engine_calls, k, s, p, op, d, hw, n):
    layer = nf.conv_transpose2d(4, k, stride=s, padding=p, output_padding=op, dilation=d)
    ref = lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], s, p, op, 1, d)  # noqa: E731
    _compare(layer, ref, init64(layer, (n, 3) + hw), randn(n, 3, *hw), TOL64)
    assert engine_calls["conv_transpose"] == 2


@pytest.mark.parametrize("k,sc,p,d,hw,n", UP_GRID)
def test_upsample_matches_nearest_then_conv_float64(engine_calls, k, sc, p, d, hw, n):
    layer = nf.upsample(5, k, scale_factor=sc, padding=p, dilation=d)

    def ref(x, q):
        up = F.interpolate(x, scale_factor=sc, mode="nearest")
        return F.conv2d(up, q["weight"], q["bias"], 1, p, d)

    _compare(layer, ref, init64(layer, (n, 3) + hw), randn(n, 3, *hw), TOL64)
    assert engine_calls["conv"] == 2


@pytest.mark.parametrize(
    "layer,shape",
    [
        (nf.conv2d(2, 3, stride=2, padding=1), (2, 3, 5, 4)),
        (nf.conv2d(2, (1, 2), stride=(3, 1), dilation=(1, 2)), (1, 2, 7, 5)),
        (nf.conv_transpose2d(2, 3, stride=2, padding=1, output_padding=1), (1, 3, 3, 2)),
        (nf.conv_transpose2d(3, (2, 3), stride=(3, 2), padding=(0, 1)), (2, 2, 2, 3)),
        (nf.upsample(2, 3, scale_factor=2, padding=1), (2, 2, 3, 2)),
    ],
)
def test_check_vjp_finite_differences(layer, shape):
    _, params = layer.init(torch.Generator().manual_seed(0), shape)
    worst = nf.check_vjp(layer, params, torch.randn(shape, dtype=torch.float64))
    assert max(worst.values()) < 1e-6


def test_input_gradient_skipped_and_layouts(engine_calls):
    """Without the input gradient the weight gradients are the same; channels-last and
    strided inputs give the contiguous input's results; the outputs are channels-last (NHWC
    memory, as the CPU's engines write them)."""
    for layer in [nf.conv2d(4, 3, 2, 1), nf.conv_transpose2d(4, 4, 2, 1)]:
        params = init64(layer, (2, 3, 8, 6))
        x = randn(2, 3, 8, 12)[:, :, :, ::2]
        y, pullback = layer.vjp(params, x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        ct = torch.randn(y.shape, dtype=y.dtype)
        full, dx = pullback(ct)
        skipped, none = nf.pull(layer.vjp, pullback, ct, input_grad=False)
        assert none is None and dx.shape == x.shape
        assert all(torch.equal(full[k], skipped[k]) for k in full)
        x_last = x.contiguous(memory_format=torch.channels_last)
        y_last, pb_last = layer.vjp(params, x_last)
        assert torch.allclose(y_last, y, rtol=1e-12, atol=1e-12)
        assert torch.allclose(pb_last(ct.contiguous(memory_format=torch.channels_last))[1], dx)
    # two forward passes of each layer, and the convolution's input gradient (a transposed
    # convolution) twice: its pullback without input_grad computes none
    assert engine_calls == {"conv": 2, "conv_transpose": 4}


def test_applies_off_the_cpu_only(monkeypatch):
    monkeypatch.undo()  # the real predicate
    meta = torch.empty(1, 3, 4, 4, device="meta")
    assert all(device_conv.applies(meta.to(t)) for t in [torch.float, torch.double, torch.bfloat16])
    assert not device_conv.applies(meta.int())
    assert not device_conv.applies(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("case", sorted(test_precision.LAYER_CASES))
def test_bfloat16_layers_agree_with_torch_autocast(engine_calls, case):
    test_precision.test_conv_layers_agree_with_torch_autocast(case)
    assert engine_calls["conv"] + engine_calls["conv_transpose"] >= 2


def test_bfloat16_network_errors_are_those_of_torch_autocast(engine_calls):
    """Through the default network the errors against float32 stay within 1.5x those of
    torch.autocast (plus 2e-3)."""
    test_precision.test_whole_network_errors_are_those_of_torch_autocast()
    assert engine_calls["conv"] and engine_calls["conv_transpose"]


@pytest.mark.parametrize(
    "scale,shape", [(2, (2, 3, 4, 5)), ((1, 3), (1, 2, 3, 2)), (3, (1, 1, 1, 2))]
)
def test_nearest_upsample_sums_blocks_in_one_reduction(scale, shape):
    """With the engine on, nearest upsampling's pullback sums each block of the output
    gradient in one reduction."""
    layer = nf.nearest_upsample(scale)
    x = randn(*shape)
    y, pullback = layer.vjp({}, x)
    ct = randn(*y.shape)
    y_ref, (gx,) = autograd_vjp(
        lambda t: F.interpolate(t, scale_factor=scale, mode="nearest"), [x], ct
    )
    assert torch.equal(y, y_ref)
    assert rel_err(pullback(ct)[1], gx) < TOL64
    assert nf.check_vjp(layer, {}, x)["input"] < 1e-6


@pytest.mark.parametrize("budget", [1, "two images"])
@pytest.mark.parametrize(
    "make,ref",
    [
        (lambda: nf.conv2d(5, 3, 1, 1), lambda x, q: F.conv2d(x, q["weight"], q["bias"], 1, 1)),
        (lambda: nf.conv2d(4, 4, 2, 1), lambda x, q: F.conv2d(x, q["weight"], q["bias"], 2, 1)),
        (
            lambda: nf.conv_transpose2d(4, 4, 2, 1),
            lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], 2, 1),
        ),
        (
            lambda: nf.conv_transpose2d(4, 3, 1, 1, bias=False),
            lambda x, q: F.conv_transpose2d(x, q["weight"], None, 1, 1),
        ),
    ],
)
def test_large_products_go_by_blocks_of_images(monkeypatch, engine_calls, budget, make, ref):
    """Where an im2col matrix would pass device_conv.BLOCK_BYTES, products and weight gradients
    go a block of images at a time (here forced with a small budget): the same results."""
    layer, x = make(), randn(3, 3, 7, 6)
    params = init64(layer, x.shape)
    if budget == "two images":  # the first conv's im2col of two images fits, of three not
        budget = 2 * 7 * 6 * 9 * 3 * 8
    monkeypatch.setattr(device_conv, "BLOCK_BYTES", budget)
    _compare(layer, ref, params, x, TOL64)
