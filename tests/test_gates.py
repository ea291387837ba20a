"""fanin_product, chunk and global_avg_pool(keepdims=True), the pieces of gates and channel
attention, against torch autograd, finite differences, in a NAFNet-style block against its
torch twin, and on bad input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_matches_twin, autograd_vjp, rel_err

import n2nfunc as nf


def _x(shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize(
    "shapes",
    [
        [(2, 3, 4, 5), (2, 3, 1, 1)],  # features times a channel attention map
        [(1, 3, 4, 5), (1, 3, 4, 5), (1, 1, 4, 1)],  # three, one broadcast along C and W
        [(2, 1, 1, 5), (2, 3, 4, 1)],  # each broadcast along the other's axes
        [(3, 7), (3, 7)],
    ],
)
def test_fanin_product_matches_torch(dtype, tol, shapes):
    xs = tuple(_x(s, dtype, seed=i) for i, s in enumerate(shapes))
    layer = nf.fanin_product()
    y, pullback = layer.vjp({}, xs)
    ct = _x(y.shape, dtype, seed=9)

    def product(*ts):
        out = ts[0]
        for t in ts[1:]:
            out = out * t
        return out

    y_ref, grads = autograd_vjp(product, list(xs), ct)
    assert rel_err(y, y_ref) <= tol and torch.equal(layer.apply({}, xs), y)
    params, dxs = pullback(ct)
    assert params == {} and len(dxs) == len(xs)
    for dx, g, x in zip(dxs, grads, xs):
        assert dx.shape == x.shape and rel_err(dx, g) <= tol
    unknown = [tuple(-1 if a == 0 else d for a, d in enumerate(s)) for s in shapes]
    assert layer.init(None, unknown)[0] == (-1, *y.shape[1:])


def test_fanin_product_passes_check_vjp_and_keeps_each_inputs_dtype():
    xs = (_x((2, 3, 4, 5)), _x((2, 3, 1, 1), seed=1))
    nf.check_vjp(nf.fanin_product(), {}, xs)
    y, pullback = nf.fanin_product().vjp({}, (xs[0].float(), xs[1].bfloat16()))
    assert y.dtype == torch.float32  # torch's type promotion
    dxs = pullback(torch.ones(y.shape))[1]
    assert [d.dtype for d in dxs] == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize(
    "shapes,pattern",
    [
        ([(2, 3, 4, 5), (2, 2, 1, 1)], r"fanin_product: inputs must have one rank and"),
        ([(2, 3, 4, 5), (3, 1, 1)], r"one rank.*\(3, 1, 1\)"),
    ],
)
def test_fanin_product_refuses_shapes_that_do_not_broadcast(shapes, pattern):
    with pytest.raises(ValueError, match=pattern):
        nf.fanin_product().apply({}, tuple(torch.randn(s) for s in shapes))
    with pytest.raises(ValueError, match=pattern):
        nf.fanin_product().init(None, shapes)


@pytest.mark.parametrize(
    "n,axis,shape", [(2, 1, (2, 6, 3, 5)), (3, -1, (1, 2, 4, 9)), (1, 1, (2, 3))]
)
def test_chunk_is_torch_chunk_and_its_pullback_concatenates(n, axis, shape):
    x = _x(shape)
    layer = nf.chunk(n, axis)
    parts, pullback = layer.vjp({}, x)
    assert all(torch.equal(a, b) for a, b in zip(parts, torch.chunk(x, n, axis)))
    cts = tuple(_x(p.shape, seed=i + 1) for i, p in enumerate(parts))
    params, dx = pullback(cts)
    assert params == {} and torch.equal(dx, torch.cat(cts, axis))
    unknown = (-1,) + shape[1:]
    expected = tuple((-1,) + tuple(p.shape[1:]) for p in parts)
    assert layer.init(None, unknown)[0] == expected and len(parts) == n
    nf.check_vjp(layer, {}, x)


@pytest.mark.parametrize(
    "make,x,error,pattern",
    [
        (
            lambda: nf.chunk(2),
            torch.randn(2, 5, 3, 3),
            ValueError,
            r"chunk\(2, axis=1\): the size 5",
        ),
        (lambda: nf.chunk(2, 0), torch.randn(4, 2), ValueError, r"axis 0 is not a non-batch axis"),
        (lambda: nf.chunk(2, 4), torch.randn(4, 2), ValueError, r"axis 4 is not a non-batch axis"),
        (lambda: nf.chunk(0), torch.randn(4, 2), ValueError, r"n must be a positive int"),
        (lambda: nf.chunk(2, 1.0), torch.randn(4, 2), TypeError, r"axis must be an int"),
    ],
)
def test_chunk_refuses_bad_options_and_input(make, x, error, pattern):
    with pytest.raises(error, match=pattern):
        make().apply({}, x)


def test_chunk_pullback_checks_its_cotangents():
    _, pullback = nf.chunk(2).vjp({}, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"chunk.*2 output gradients"):
        pullback((torch.randn(2, 2, 3, 3),))
    with pytest.raises(ValueError, match=r"chunk.*output gradient must have"):
        pullback((torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 4)))


def test_global_avg_pool_keeping_its_dims_is_adaptive_avg_pool():
    x = _x((2, 3, 4, 5)).contiguous(memory_format=torch.channels_last)
    layer = nf.global_avg_pool(keepdims=True)
    y, pullback = layer.vjp({}, x)
    ct = _x(y.shape, seed=1)
    y_ref, (g,) = autograd_vjp(lambda t: F.adaptive_avg_pool2d(t, 1), [x], ct)
    assert y.shape == (2, 3, 1, 1) and rel_err(y, y_ref) <= 1e-12
    assert rel_err(pullback(ct)[1], g) <= 1e-12
    assert layer.init(None, (-1, 3, -1, -1))[0] == (-1, 3, 1, 1)
    with pytest.raises(TypeError, match=r"keepdims must be True or False"):
        nf.global_avg_pool(keepdims="yes")


def nafnet_block(c: int):
    """NAFNet's block (Chen et al. 2022) from n2nfunc layers: channel layer norm, 1 x 1 conv
    to 2c, depthwise 3 x 3, SimpleGate (halves multiplied), simplified channel attention
    (pooled, 1 x 1 conv, multiplied back), 1 x 1 conv, residual."""
    return nf.residual(
        nf.serial(
            nf.layer_norm(1),
            nf.conv2d(2 * c, 1),
            nf.conv2d(2 * c, 3, padding=1, groups=2 * c),
            nf.chunk(2),
            nf.fanin_product(),
            nf.fanout(2),
            nf.parallel(
                nf.identity(), nf.serial(nf.global_avg_pool(keepdims=True), nf.conv2d(c, 1))
            ),
            nf.fanin_product(),
            nf.conv2d(c, 1),
        )
    )


def test_a_nafnet_block_matches_its_torch_twin_and_passes_check_vjp():
    net = nafnet_block(4)
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 4, 6, 5))
    params = nf.tree.map(lambda t: torch.randn_like(t.double()), params)
    x = _x((2, 4, 6, 5))
    nf.check_vjp(net, params, x)

    def twin(x_, q):
        h = F.layer_norm(x_.movedim(1, -1), (4,), q["0.weight"], q["0.bias"]).movedim(-1, 1)
        h = F.conv2d(h, q["1.weight"], q["1.bias"])
        h = F.conv2d(h, q["2.weight"], q["2.bias"], padding=1, groups=8)
        a, b = h.chunk(2, 1)
        h = a * b
        h = h * F.conv2d(F.adaptive_avg_pool2d(h, 1), q["6.1.1.weight"], q["6.1.1.bias"])
        return x_ + F.conv2d(h, q["8.weight"], q["8.bias"])

    assert_matches_twin(net, params, x, twin, 1e-10)


def test_fanin_product_refuses_inputs_changed_in_place_before_its_pullback():
    """Its pullback reads the inputs, as torch's autograd does for ``a * b``: an input changed
    in place (directly, or through the views ``chunk`` made) is refused, not differentiated
    wrongly."""
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 1, 1)
    y, pullback = nf.fanin_product().vjp({}, (a, b))
    b.mul_(10)
    with pytest.raises(RuntimeError, match=r"fanin_product: its input 1 .* changed in place"):
        pullback(torch.ones_like(y))
    gate = nf.serial(nf.chunk(2), nf.fanin_product())
    x = torch.randn(2, 4, 3, 3)
    y, pullback = gate.vjp(gate.init(None, (-1, 4, -1, -1))[1], x)
    x.add_(1)
    with pytest.raises(RuntimeError, match=r"changed in place"):
        pullback(torch.ones_like(y))


def test_empty_axes_give_torchs_parts_and_gradient_shapes():
    parts = nf.chunk(2).apply({}, torch.randn(2, 0, 3))
    assert len(parts) == 2 and all(p.shape == (2, 0, 3) for p in parts)
    a, b = torch.randn(1, 3), torch.randn(0, 3)
    y, pullback = nf.fanin_product().vjp({}, (a, b))
    da, db = pullback(torch.randn(0, 3))[1]
    assert da.shape == (1, 3) and not da.any() and db.shape == (0, 3)
