"""dense and flatten against torch.nn.functional + autograd, finite differences, a network
mixing the new layers against its torch.nn twin, and bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, init64, randn, rel_err

import n2nfunc as nf

TOL64, TOL32 = 1e-10, 1e-5


def _compare_dense(layer, params, x, tol):
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, dtype=y.dtype)
    names = list(params)
    y_ref, grads = autograd_vjp(
        lambda x_, *ps: F.linear(x_, *ps), [x] + [params[k] for k in names], ct
    )
    assert y.shape == y_ref.shape and rel_err(y, y_ref) <= tol
    assert rel_err(layer.apply(params, x), y_ref) <= tol
    ct_params, ct_x = pullback(ct)
    assert rel_err(ct_x, grads[0]) <= tol
    assert set(ct_params) == set(names)
    for k, g in zip(names, grads[1:]):
        assert ct_params[k].shape == params[k].shape and rel_err(ct_params[k], g) <= tol, k


@pytest.mark.parametrize(
    "shape,out,bias",
    list(itertools.product([(1, 5), (4, 7), (3, 2, 5), (2, 3, 1, 6)], [1, 3], [True, False])),
)
def test_dense_matches_torch_float64(shape, out, bias):
    layer = nf.dense(out, bias=bias)
    params = init64(layer, (-1,) + shape[1:])
    _compare_dense(layer, params, randn(*shape), TOL64)


def test_dense_matches_torch_float32():
    layer = nf.dense(6)
    _, params = layer.init(torch.Generator().manual_seed(0), (-1, 9))
    _compare_dense(layer, params, randn(5, 9, dtype=torch.float32), TOL32)
    _compare_dense(layer, params, randn(2, 4, 9, dtype=torch.float32), TOL32)


def test_dense_init_shapes_and_default_init_equals_torch_nn_linear():
    layer = nf.dense(5)
    out, params = layer.init(torch.Generator().manual_seed(7), (-1, 3, 11))
    assert out == (-1, 3, 5)
    torch.manual_seed(7)
    ref = torch.nn.Linear(11, 5)
    assert torch.equal(params["weight"], ref.weight) and torch.equal(params["bias"], ref.bias)
    assert set(nf.dense(2, bias=False).init(None, (4, 3))[1]) == {"weight"}


def test_input_gradient_can_be_skipped():
    layer = nf.dense(3)
    params = init64(layer, (-1, 4))
    _, pullback = layer.vjp(params, randn(2, 4))
    ct = randn(2, 3)
    grads, dx = pullback(ct, input_grad=False)
    assert dx is None and rel_err(grads["weight"], pullback(ct)[0]["weight"]) == 0


@pytest.mark.parametrize("shape", [(1, 4), (2, 3), (3, 2, 5)])
def test_check_vjp_dense(shape):
    for bias in (True, False):
        layer = nf.dense(3, bias=bias)
        nf.check_vjp(layer, init64(layer, (-1,) + shape[1:]), randn(*shape, seed=2))


@pytest.mark.parametrize("shape", [(1, 3), (2, 3, 4), (3, 2, 5, 7), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 0.0), (torch.float32, 0.0)])
def test_flatten_matches_torch(shape, dtype, tol):
    x = randn(*shape, dtype=dtype)
    y, pullback = nf.flatten().vjp({}, x)
    ct = torch.randn(y.shape, dtype=dtype)
    y_ref, (g,) = autograd_vjp(lambda t: t.flatten(1), [x], ct)
    assert y.shape == y_ref.shape and torch.equal(y, y_ref)
    assert torch.equal(pullback(ct)[1], g)
    assert nf.flatten().init(None, shape) == (y.shape, {})


def test_flatten_after_a_conv_uses_pytorchs_channel_major_order():
    """Conv outputs are (N, C, H, W) views of channels-last memory; flatten must still order
    the features c*H*W + h*W + w, as torch.flatten does on the torch.nn conv's output."""
    conv, flat = nf.conv2d(4, 3, stride=2, padding=1), nf.flatten()
    x = randn(2, 3, 7, 6)
    params = init64(conv, (2, 3, 7, 6))
    h = conv.apply(params, x)
    ref = F.conv2d(x, params["weight"], params["bias"], 2, 1)
    h_last = h.contiguous(memory_format=torch.channels_last)
    assert not h_last.is_contiguous()
    for act in (h, h_last):
        y = flat.apply({}, act)
        assert torch.equal(y, h.contiguous().flatten(1)) and rel_err(y, ref.flatten(1)) <= TOL64
    net = nf.serial(conv, flat)
    ct = randn(*y.shape)
    _, (gx, gw, gb) = autograd_vjp(
        lambda x_, w, b: F.conv2d(x_, w, b, 2, 1).flatten(1),
        [x, params["weight"], params["bias"]],
        ct,
    )
    grads, dx = net.vjp({"0": params, "1": {}}, x)[1](ct)
    assert rel_err(dx, gx) <= TOL64 and rel_err(grads["0"]["weight"], gw) <= TOL64
    assert rel_err(grads["0"]["bias"], gb) <= TOL64
    assert nf.flatten().init(None, (-1, 4, 4, 3)) == ((-1, 48), {})
    assert nf.flatten().init(None, (-1, 4, -1, 3)) == ((-1, -1), {})


def _mixed():
    return nf.serial(
        nf.conv2d(4, 3, padding=1),
        nf.leaky_relu(0.1),
        nf.max_pool2d(2),
        nf.conv2d(5, 3, stride=1, padding=1, init="he_normal"),
        nf.gelu(),
        nf.avg_pool2d(3, 2, 1),
        nf.flatten(),
        nf.dense(6),
        nf.tanh(),
        nf.dense(3, init="xavier_uniform"),
        nf.log_softmax(),
    )


def _mixed_torch(x, p):
    h = F.leaky_relu(F.conv2d(x, p["0"]["weight"], p["0"]["bias"], padding=1), 0.1)
    h = F.max_pool2d(h, 2)
    h = F.gelu(F.conv2d(h, p["3"]["weight"], p["3"]["bias"], padding=1))
    h = F.avg_pool2d(h, 3, 2, 1).flatten(1)
    h = torch.tanh(F.linear(h, p["7"]["weight"], p["7"]["bias"]))
    return F.log_softmax(F.linear(h, p["9"]["weight"], p["9"]["bias"]), 1)


def test_check_vjp_on_a_network_mixing_the_new_layers():
    net = _mixed()
    _, params = net.init(torch.Generator().manual_seed(0), (2, 2, 6, 7))
    params = nf.tree.map(lambda t: t.double(), params)
    nf.check_vjp(net, params, randn(2, 2, 6, 7, seed=5), full_jacobian_max=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, TOL64), (torch.float32, TOL32)])
def test_network_mixing_the_new_layers_matches_torch(dtype, tol):
    net = _mixed()
    _, params = net.init(torch.Generator().manual_seed(1), (-1, 2, 9, 10))
    params = nf.tree.map(lambda t: t.to(dtype), params)
    x = randn(3, 2, 9, 10, dtype=dtype)
    y, pullback = net.vjp(params, x)
    ct = torch.randn(y.shape, dtype=dtype)
    paths = [p for p, _ in nf.tree.flatten(params)]
    leaves = [t for _, t in nf.tree.flatten(params)]

    def ref(x_, *ps):
        return _mixed_torch(x_, nf.tree.unflatten(params, dict(zip(paths, ps))))

    y_ref, grads = autograd_vjp(ref, [x] + leaves, ct)
    assert rel_err(y, y_ref) <= tol
    ct_params, dx = pullback(ct)
    assert rel_err(dx, grads[0]) <= tol
    for (path, got), want in zip(nf.tree.flatten(ct_params), grads[1:]):
        assert rel_err(got, want) <= tol, path


@pytest.mark.parametrize(
    "x,error,pattern",
    [
        (torch.randn(5), ValueError, r"expected input of shape \(N, \*, 4\), got \(5,\)"),
        (torch.randn(2, 5), ValueError, r"dense\(out_features=3.*\(N, \*, 4\), got \(2, 5\)"),
        (torch.randn(2, 4, dtype=torch.float64), TypeError, "does not match the parameters"),
        (torch.ones(2, 4, dtype=torch.int64), TypeError, "floating point"),
        (torch.randn(0, 4), ValueError, "empty batch"),
    ],
)
def test_dense_rejects_bad_input(x, error, pattern):
    layer = nf.dense(3)
    _, params = layer.init(None, (-1, 4))
    with pytest.raises(error, match=pattern):
        layer.apply(params, x)
    with pytest.raises(error, match=pattern):
        layer.vjp(params, x)


def test_dense_rejects_bad_options_shapes_and_params():
    with pytest.raises(ValueError, match="out_features must be a positive int"):
        nf.dense(0)
    with pytest.raises(ValueError, match="init must be None"):
        nf.dense(3, init="he")
    with pytest.raises(ValueError, match=r"dense.*expected an input shape \(N, \*, F\)"):
        nf.dense(3).init(None, (5,))
    with pytest.raises(ValueError, match=r"feature count of input shape \(2, -1\)"):
        nf.dense(3).init(None, (2, -1))
    _, params = nf.dense(3).init(None, (-1, 4))
    with pytest.raises(ValueError, match=r"parameter 'bias' must have shape \(3,\), got \(4,\)"):
        nf.dense(3).apply({**params, "bias": torch.zeros(4)}, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"expected parameters \['weight'\]"):
        nf.dense(3, bias=False).apply(params, torch.randn(2, 4))
    y, pullback = nf.dense(3).vjp(params, torch.randn(2, 4))
    with pytest.raises(ValueError, match="output gradient must have the output's shape"):
        pullback(torch.randn(3, 2))


def test_flatten_rejects_bad_input():
    with pytest.raises(ValueError, match=r"flatten: expected a non-empty batch.*\(5,\)"):
        nf.flatten().apply({}, torch.randn(5))
    with pytest.raises(TypeError, match="flatten: input must be a Tensor"):
        nf.flatten().apply({}, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"flatten: expected an input shape \(N, ...\)"):
        nf.flatten().init(None, (3,))


@pytest.mark.cuda
def test_dense_and_flatten_on_cuda():
    net = nf.serial(nf.flatten(), nf.dense(4))
    _, params = net.init(torch.Generator().manual_seed(0), (2, 3, 4, 5))
    x = torch.randn(2, 3, 4, 5)
    y, pullback = net.vjp(params, x)
    ct = torch.randn_like(y)
    grads, dx = pullback(ct)
    cuda = nf.tree.map(lambda t: t.cuda(), params)
    y2, pb2 = net.vjp(cuda, x.cuda())
    grads2, dx2 = pb2(ct.cuda())
    assert y2.is_cuda and rel_err(y2.cpu(), y) < 1e-5 and rel_err(dx2.cpu(), dx) < 1e-5
    assert rel_err(grads2["1"]["weight"].cpu(), grads["1"]["weight"]) < 1e-5
