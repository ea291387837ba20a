"""group_norm and layer_norm against torch.nn.functional + autograd, finite differences, in
lower precision, in a network, as class wrappers, and on bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_matches_twin, assert_trains_like, autograd_vjp, rel_err

import n2nfunc as nf

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _random_params(layer, shape, dtype, seed=0):
    """The layer's params, drawn at random (not ones and zeros, which hide a swapped pair)."""
    _, params = layer.init(None, shape)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=dtype) for k, v in params.items()}


def _input(shape, dtype, seed=1, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _close(a, b, tol):
    """``a`` within ``tol`` of ``b``, relative to b's largest magnitude or 1, whichever is
    larger (where every group holds one value, dx is 0: ours exactly, torch's within
    rounding)."""
    return float((a.double() - b).abs().max()) <= tol * max(float(b.abs().max()), 1.0)


def _compare(layer, params, x, reference, tol):
    """Output, input gradient and param gradients against ``reference(x, weight, bias)``
    under autograd in float64 (for float32 too: torch's float32 group norm of one value a
    group is off by 2e-5), with a random cotangent; and the pullback without the input
    gradient."""
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2))
    names = sorted(params)  # bias, weight
    y_ref, grads = autograd_vjp(
        lambda x_, *ps: reference(x_, **dict(zip(names, ps))),
        [x.double()] + [params[k].double() for k in names],
        ct.double(),
    )
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    assert _close(y, y_ref, tol)
    assert torch.equal(layer.apply(params, x), y)
    ct_params, dx = pullback(ct)
    assert dx.shape == x.shape and dx.dtype == x.dtype and _close(dx, grads[0], tol)
    assert set(ct_params) == set(names)
    for k, g in zip(names, grads[1:]):
        assert ct_params[k].shape == params[k].shape and _close(ct_params[k], g, tol), k
    only_params, none = pullback(ct, input_grad=False)
    assert none is None and all(torch.equal(only_params[k], ct_params[k]) for k in names)


GROUP_CASES = [
    ((2, 6, 5, 7), 3),  # odd, non-square
    ((1, 4, 3, 3), 1),  # batch 1, one group: layer norm over (C, H, W)
    ((1, 4, 3, 3), 4),  # instance norm
    ((3, 4, 5), 2),  # (N, C, L)
    ((2, 8, 3, 2, 3), 2),  # (N, C, D, H, W)
    ((2, 6), 3),  # (N, C): two values a group
    ((2, 3, 1, 1), 3),  # one value a group: xhat is 0
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,groups", GROUP_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_matches_torch(dtype, shape, groups, affine):
    eps = 1e-5 if shape != (2, 6) else 0.25
    layer = nf.group_norm(groups, eps=eps, affine=affine)
    params = _random_params(layer, shape, dtype)
    for channels_last in (False, True) if len(shape) == 4 else (False,):
        x = _input(shape, dtype, channels_last=channels_last)
        _compare(
            layer, params, x, lambda x_, **p: F.group_norm(x_, groups, eps=eps, **p), TOL[dtype]
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 5), (3, 4, 7), (1, 1, 3), (2, 3, 4, 6), (4, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(dtype, shape, affine):
    layer = nf.layer_norm(eps=1e-3, affine=affine)
    params = _random_params(layer, shape, dtype)
    x = _input(shape, dtype)
    ref = lambda x_, **p: F.layer_norm(x_, shape[-1:], eps=1e-3, **p)  # noqa: E731
    _compare(layer, params, x, ref, TOL[dtype])


def _moved_layer_norm(axis):
    """torch's twin of ``layer_norm(axis)``: the axis moved last, ``F.layer_norm``, moved back."""

    def reference(x_, **p):
        moved = x_.movedim(axis, -1)
        return F.layer_norm(moved, moved.shape[-1:], eps=1e-3, **p).movedim(-1, axis)

    return reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape,axis,channels_last",
    [
        ((2, 5, 3, 4), 1, True),  # each pixel's channels, as the convolutions lay them out
        ((2, 5, 3, 4), 1, False),  # ... and contiguous: a strided axis
        ((1, 3, 4, 7), -2, False),
        ((3, 4, 6), 1, False),
        ((2, 6, 1, 1), -3, True),
    ],
)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_along_another_axis_matches_torch(dtype, shape, axis, channels_last, affine):
    layer = nf.layer_norm(axis, eps=1e-3, affine=affine)
    params = _random_params(layer, shape, dtype)
    x = _input(shape, dtype, channels_last=channels_last)
    _compare(layer, params, x, _moved_layer_norm(axis), TOL[dtype])
    if channels_last:  # the output keeps the input's layout, the input gradient the output's
        y, pullback = layer.vjp(params, x)
        dx = pullback(torch.randn_like(y))[1]
        assert y.stride() == x.stride() and dx.stride() == x.stride()


def test_a_channels_last_input_gives_channels_last_output_and_input_gradient():
    layer = nf.group_norm(2)
    params = _random_params(layer, (2, 8, 5, 6), torch.float32)
    x = _input((2, 8, 5, 6), torch.float32, channels_last=True)
    y, pullback = layer.vjp(params, x)
    dx = pullback(torch.randn_like(y))[1]
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: nf.group_norm(2), (2, 4, 3, 5)),
        (lambda: nf.group_norm(3, affine=False), (1, 6, 4, 3)),
        (lambda: nf.group_norm(1, eps=0.5), (3, 2, 3)),
        (lambda: nf.layer_norm(), (2, 3, 5)),
        (lambda: nf.layer_norm(affine=False), (3, 4)),
        (lambda: nf.layer_norm(1), (2, 3, 4, 2)),
        (lambda: nf.layer_norm(-2, affine=False), (1, 3, 4, 2)),
    ],
)
def test_check_vjp(make, shape):
    layer = make()
    nf.check_vjp(layer, _random_params(layer, shape, torch.float64), _input(shape, torch.float64))


def _network():
    return nf.serial(
        nf.conv2d(6, 3, padding=1),
        nf.group_norm(3),
        nf.leaky_relu(0.1),
        nf.max_pool2d(2),
        nf.flatten(),
        nf.dense(5),
        nf.layer_norm(),
    )


def test_check_vjp_on_a_network_with_both():
    net = _network()
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 6, 4))
    params = nf.tree.map(lambda t: torch.randn_like(t.double()), params)
    nf.check_vjp(net, params, _input((2, 3, 6, 4), torch.float64))


def test_a_network_with_both_matches_its_torch_twin():
    net = _network()
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 6, 4))
    params = nf.tree.map(lambda t: torch.randn_like(t.double()), params)

    def twin(x_, p):
        h = F.conv2d(x_, p["0.weight"], p["0.bias"], padding=1)
        h = F.leaky_relu(F.group_norm(h, 3, p["1.weight"], p["1.bias"]), 0.1)
        h = F.linear(F.max_pool2d(h, 2).flatten(1), p["5.weight"], p["5.bias"])
        return F.layer_norm(h, (5,), p["6.weight"], p["6.bias"])

    assert_matches_twin(net, params, _input((2, 3, 6, 4), torch.float64), twin, 1e-10)


def test_init_is_torchs_and_keeps_the_shape():
    out, params = nf.group_norm(2).init(None, (-1, 6, -1, -1))
    ref = torch.nn.GroupNorm(2, 6)
    assert out == (-1, 6, -1, -1)
    assert torch.equal(params["weight"], ref.weight) and torch.equal(params["bias"], ref.bias)
    out, params = nf.layer_norm().init(None, (-1, 3, 7))
    ref = torch.nn.LayerNorm(7)
    assert out == (-1, 3, 7)
    assert torch.equal(params["weight"], ref.weight) and torch.equal(params["bias"], ref.bias)
    assert nf.group_norm(3, affine=False).init(None, (2, 3))[1] == {}
    assert nf.layer_norm(affine=False).init(None, (2, 3))[1] == {}


def test_bfloat16_is_computed_in_float32_and_rounded_once():
    layer = nf.group_norm(2)
    params32 = _random_params(layer, (2, 4, 5, 6), torch.float32)
    x32 = _input((2, 4, 5, 6), torch.float32).bfloat16().float()  # a bfloat16 input, exactly
    params16 = nf.tree.map(lambda t: t.bfloat16(), params32)
    p32 = nf.tree.map(lambda t: t.float(), params16)
    y, pullback = layer.vjp(params16, x32.bfloat16())
    y_ref, pullback_ref = layer.vjp(p32, x32)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref.bfloat16())
    ct = torch.randn(y.shape).bfloat16()
    grads, dx = pullback(ct)
    grads_ref, dx_ref = pullback_ref(ct.float())
    assert dx.dtype == torch.bfloat16 and torch.equal(dx, dx_ref.bfloat16())
    assert all(torch.equal(grads[k], grads_ref[k].bfloat16()) for k in grads)
    # and torch's own bfloat16 group norm agrees within bfloat16 rounding
    torch_y = F.group_norm(x32.bfloat16(), 2, params16["weight"], params16["bias"])
    assert rel_err(y.float(), torch_y.float()) < 1e-2


def test_mixed_precision_takes_a_network_with_group_norm():
    net = nf.serial(nf.conv2d(4, 3, padding=1), nf.group_norm(2))
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    x = _input((2, 3, 8, 8), torch.float32)
    y32, pullback32 = net.vjp(params, x)
    y16, pullback16 = nf.mixed_precision(net).vjp(params, x)
    assert y16.dtype == torch.float32 and rel_err(y16, y32) < 3e-2
    ct = torch.randn(y32.shape)
    grads32, grads16 = pullback32(ct)[0], pullback16(ct)[0]
    for k, g in nf.tree.flatten(grads16):
        assert g.dtype == torch.float32 and rel_err(g, dict(nf.tree.flatten(grads32))[k]) < 5e-2, k


def test_a_large_offset_does_not_cancel_in_float32():
    """Mean and variance in two passes: for x = 1e4 + noise of 0.1 (variance 1e-2 beside
    squares of 1e8, which one pass, E[x^2] - E[x]^2, loses entirely) the normalised values
    are as close to the float64 ones as torch's float32 group norm gets."""
    layer = nf.group_norm(1, affine=False)
    x = (_input((2, 2, 8, 8), torch.float64) * 1e-1 + 1e4).float()
    exact = F.group_norm(x.double(), 1)
    error = rel_err(layer.apply({}, x), exact)
    assert error < 1e-2 and error <= rel_err(F.group_norm(x, 1), exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_constant_set_normalises_to_exactly_zero(dtype):
    """A flat region (0.1 everywhere: its floating-point mean is not 0.1), and a grey image
    copied into three channels under the per-pixel channel norm, give exactly 0 (then the
    bias), as torch does; the input gradient is finite."""
    flat = torch.full((1, 3, 5, 5), 0.1, dtype=dtype)
    y, pullback = nf.group_norm(1, affine=False).vjp({}, flat)
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.isfinite(pullback(torch.randn(y.shape, dtype=dtype))[1]).all()
    grey = (torch.rand(1, 1, 8, 9, dtype=dtype) * 255).expand(1, 3, 8, 9).contiguous()
    layer = nf.layer_norm(1, eps=1e-6)
    params = _random_params(layer, grey.shape, dtype)
    y = layer.apply(params, grey)
    assert torch.equal(y, params["bias"].view(1, 3, 1, 1).expand_as(y))


def test_the_pullback_refuses_a_changed_weight_or_kept_output():
    layer = nf.group_norm(2)
    params = _random_params(layer, (2, 4, 3, 3), torch.float32)
    x = _input((2, 4, 3, 3), torch.float32)
    _, pullback = layer.vjp(params, x)
    params["weight"].add_(1)
    with pytest.raises(RuntimeError, match=r"group_norm.*weight .*changed in place"):
        pullback(torch.randn(2, 4, 3, 3))
    plain = nf.layer_norm(affine=False)
    y, pullback = plain.vjp({}, x)
    y.mul_(2)  # y is the normalised input the pullback reads
    with pytest.raises(RuntimeError, match=r"layer_norm.*output .*changed in place"):
        pullback(torch.randn(y.shape))
    # in bfloat16 the output is a rounded copy, and the pullback reads its float32 original;
    # group norm's output is never what its pullback reads
    for layer, x_ in ((plain, x.bfloat16()), (nf.group_norm(2, affine=False), x)):
        y, pullback = layer.vjp({}, x_)
        y.mul_(2)
        pullback(torch.randn(y.shape, dtype=y.dtype))


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda: nf.group_norm(0), ValueError, r"group_norm.*num_groups must be a positive int"),
        (lambda: nf.group_norm(2.5), TypeError, r"group_norm.*num_groups"),
        (lambda: nf.group_norm(2, eps=0), ValueError, r"group_norm.*eps must be a finite positive"),
        (lambda: nf.layer_norm(eps=float("nan")), ValueError, r"layer_norm.*eps"),
        (lambda: nf.layer_norm(affine="yes"), TypeError, r"layer_norm.*affine must be True or"),
        (lambda: nf.group_norm(4).init(None, (-1, 6, 3, 3)), ValueError, r"6 channels .* 4 groups"),
        (lambda: nf.group_norm(2).init(None, (-1, -1, 3, 3)), ValueError, r"channel count C"),
        (lambda: nf.group_norm(2).init(None, (4,)), ValueError, r"expected an input shape"),
        (lambda: nf.layer_norm().init(None, (-1, -1)), ValueError, r"size of axis -1 .* known"),
        (lambda: nf.layer_norm(axis=0), ValueError, r"layer_norm.*axis 0 is the batch axis"),
        (lambda: nf.layer_norm(axis=-3).init(None, (2, 3)), ValueError, r"axis -3 is not a non-b"),
        (
            lambda: nf.layer_norm(axis=2).init(None, (2, 3)),
            ValueError,
            r"axis 2 is not a non-batch",
        ),
        (lambda: nf.layer_norm(axis=1.0), TypeError, r"layer_norm.*axis must be an int"),
    ],
)
def test_bad_options_and_shapes_are_refused(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


GN, LN = (-1, 6, 3), (-1, 6)  # the init shapes of the cases below


@pytest.mark.parametrize(
    "layer,in_shape,x,error,pattern",
    [
        (
            nf.group_norm(2),
            GN,
            torch.randn(2, 4, 3, 3),
            ValueError,
            r"group_norm\(.*\): input of shape \(2, 4, 3, 3\) has 4 channels, expected 6",
        ),
        (nf.group_norm(2), GN, torch.randn(6), ValueError, r"got \(6,\)"),
        (
            nf.group_norm(2),
            GN,
            torch.randn(2, 6, 0, 3),
            ValueError,
            r"\(no axis of size 0\), got \(2, 6, 0, 3\)",
        ),
        (nf.group_norm(2), GN, torch.randn(0, 6, 2, 2), ValueError, r"empty batch"),
        (
            nf.group_norm(2, affine=False),
            None,
            torch.randn(2, 0, 3),
            ValueError,
            r"\(no axis of size 0\)",
        ),
        (nf.group_norm(2), GN, torch.randn(2, 6, 3).double(), TypeError, r"dtype torch.float64"),
        (
            nf.group_norm(2),
            GN,
            torch.ones(2, 6, 3, dtype=torch.int64),
            TypeError,
            r"floating point",
        ),
        (
            nf.group_norm(4, affine=False),
            None,
            torch.randn(2, 6, 3),
            ValueError,
            r"6 channels .* 4 groups",
        ),
        (
            nf.layer_norm(),
            LN,
            torch.randn(2, 5),
            ValueError,
            r"expected input \(N, 6\) \(no axis of size 0\), got \(2, 5\)",
        ),
        (nf.layer_norm(affine=False), LN, torch.randn(0, 5), ValueError, r"empty batch"),
        (
            nf.layer_norm(1),
            LN,
            torch.randn(2, 4, 3),
            ValueError,
            r"input \(N, 6, \*\) \(no axis of size 0\)",
        ),
        (nf.layer_norm(2), (-1, 3, 6), torch.randn(2, 6), ValueError, r"axis 2 is not a non-batch"),
    ],
)
def test_bad_input_is_refused_naming_the_layer_and_shapes(layer, in_shape, x, error, pattern):
    params = {} if in_shape is None else layer.init(None, in_shape)[1]
    with pytest.raises(error, match=pattern):
        layer.apply(params, x)


def test_bad_params_and_cotangents_are_refused():
    layer = nf.group_norm(2)
    params = _random_params(layer, (2, 6, 3), torch.float32)
    x = torch.randn(2, 6, 3)
    with pytest.raises(ValueError, match=r"'weight' must be a 1-d tensor, .* got \(6, 1\)"):
        layer.apply({"weight": params["weight"][:, None], "bias": params["bias"]}, x)
    with pytest.raises(ValueError, match=r"'weight' must be a 1-d tensor, .* got list"):
        layer.apply({"weight": [1.0] * 6, "bias": params["bias"]}, x)
    with pytest.raises(ValueError, match=r"parameter 'bias' must have shape \(6,\), got \(5,\)"):
        layer.apply({"weight": params["weight"], "bias": params["bias"][:5]}, x)
    with pytest.raises(ValueError, match=r"expected parameters \['bias', 'weight'\], got \[\]"):
        layer.apply({}, x)
    with pytest.raises(ValueError, match=r"expected parameters \[\], got \['bias', 'weight'\]"):
        nf.group_norm(2, affine=False).apply(params, x)
    _, pullback = layer.vjp(params, x)
    with pytest.raises(
        ValueError, match=r"group_norm.*output gradient .* \(2, 6, 3\), got \(2, 6\)"
    ):
        pullback(torch.randn(2, 6))
    with pytest.raises(TypeError, match=r"input_grad must be True or False"):
        pullback(torch.randn(2, 6, 3), input_grad="no")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_wrappers_match_torch_nn_and_share_its_state_dict(dtype):
    torch.manual_seed(0)
    for ours, theirs, shape in [
        (
            nf.GroupNorm(2, 6, eps=1e-4, dtype=dtype),
            torch.nn.GroupNorm(2, 6, eps=1e-4),
            (3, 6, 4, 5),
        ),
        (nf.LayerNorm(5, dtype=dtype), torch.nn.LayerNorm(5), (2, 3, 5)),
        (nf.LayerNorm((5,), eps=0.1, dtype=dtype), torch.nn.LayerNorm((5,), eps=0.1), (4, 5)),
    ]:
        theirs = theirs.to(dtype)
        with torch.no_grad():
            for p in theirs.parameters():
                p.normal_()
        assert ours.load_state_dict(theirs.state_dict()) is not None
        x = torch.randn(shape, dtype=dtype)
        ct = torch.randn(shape, dtype=dtype)
        y = ours.forward(x)
        dx = ours.backward(ct)
        xr = x.clone().requires_grad_()
        with torch.enable_grad():
            y_ref = theirs(xr)
            y_ref.backward(ct)
        assert rel_err(y, y_ref.detach()) < TOL[dtype] and rel_err(dx, xr.grad) < TOL[dtype]
        for (p, g), (name, q) in zip(ours.param(), theirs.named_parameters()):
            assert torch.equal(p, q.detach()) and rel_err(g, q.grad) < TOL[dtype], name
        assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda: nf.GroupNorm(4, 6), ValueError, r"GroupNorm: num_channels 6 must divide into"),
        (lambda: nf.GroupNorm(2, 6, affine="no"), TypeError, r"GroupNorm.*affine must be True"),
        (lambda: nf.GroupNorm(2, 0), ValueError, r"GroupNorm: num_channels must be a positive"),
        (lambda: nf.LayerNorm(()), ValueError, r"LayerNorm: normalized_shape must give at least"),
        (lambda: nf.LayerNorm((3, 0)), ValueError, r"normalized_shape must be a positive int"),
        (lambda: nf.LayerNorm(4, bias=False), ValueError, r"LayerNorm: bias=False"),
        (lambda: nf.LayerNorm(4, elementwise_affine="no"), TypeError, r"elementwise_affine must"),
        (lambda: nf.LayerNorm("4"), TypeError, r"LayerNorm: normalized_shape must be a positive"),
    ],
)
def test_the_wrappers_refuse_bad_arguments(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


@pytest.mark.parametrize(
    "ours,theirs,shape",
    [
        (
            lambda: nf.GroupNorm(2, 6, affine=False),
            lambda: torch.nn.GroupNorm(2, 6, affine=False),
            (3, 6, 4, 5),
        ),
        (
            lambda: nf.LayerNorm(5, elementwise_affine=False, bias=False),
            lambda: torch.nn.LayerNorm(5, elementwise_affine=False, bias=False),
            (2, 3, 5),
        ),
    ],
)
def test_the_wrappers_without_affine_params_match_torch(ours, theirs, shape):
    """No params at all: torch's output and input gradient, empty state_dict and param(),
    ``weight`` and ``bias`` None, and a clear error for assigning one."""
    ours, theirs = ours(), theirs()
    x = torch.randn(shape, dtype=torch.float64)
    ct = torch.randn(shape, dtype=torch.float64)
    ours.to(dtype=torch.float64)
    y, dx = ours.forward(x), ours.backward(ct)
    xr = x.clone().requires_grad_()
    with torch.enable_grad():
        y_ref = theirs.double()(xr)
        y_ref.backward(ct)
    assert rel_err(y, y_ref.detach()) < 1e-12 and rel_err(dx, xr.grad) < 1e-12
    assert ours.param() == [] and dict(ours.state_dict()) == dict(theirs.state_dict()) == {}
    assert ours.weight is None and ours.bias is None
    assert "affine=False" in repr(ours)
    with pytest.raises(
        ValueError, match=r"Norm: was built without affine params, so it has no weight"
    ):
        ours.weight = torch.ones(shape[1])


@pytest.mark.parametrize("groups,channels", list(itertools.product([1, 2], [4])))
def test_group_norm_in_a_sequential_trains_like_torch(groups, channels):
    """Three SGD steps of conv + GroupNorm + ReLU, wrappers against torch.nn from the same
    weights: the losses agree step by step."""
    torch.manual_seed(0)
    ours = nf.Sequential(
        nf.Conv2d(3, channels, 3, padding=1), nf.GroupNorm(groups, channels), nf.ReLU()
    )
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1),
        torch.nn.GroupNorm(groups, channels),
        torch.nn.ReLU(),
    )
    assert_trains_like(ours, theirs, (2, 3, 5, 6), (2, channels, 5, 6))


@pytest.mark.cuda
def test_group_and_layer_norm_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for layer, shape, ref in [
        (nf.group_norm(2), (2, 4, 5, 6), lambda x_, **p: F.group_norm(x_, 2, **p)),
        (nf.layer_norm(), (3, 7), lambda x_, **p: F.layer_norm(x_, (7,), **p)),
    ]:
        params = nf.tree.map(lambda t: t.cuda(), _random_params(layer, shape, torch.float64))
        _compare(layer, params, _input(shape, torch.float64).cuda(), ref, TOL[torch.float64])


INSTANCE_CASES = [(2, 6, 5, 7), (1, 3, 1, 4), (3, 2, 2, 2)]  # odd, one row, batch 3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", INSTANCE_CASES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_matches_torch(dtype, shape, affine, channels_last):
    layer = nf.instance_norm(eps=1e-4, affine=affine)
    params = _random_params(layer, shape, dtype)
    x = _input(shape, dtype, channels_last=channels_last)

    def reference(x_, weight=None, bias=None):
        return F.instance_norm(x_, weight=weight, bias=bias, eps=1e-4)

    _compare(layer, params, x, reference, TOL[dtype])


def test_instance_norm_passes_check_vjp_and_matches_its_group_norm():
    layer = nf.instance_norm(affine=True)
    params = _random_params(layer, (2, 3, 4, 5), torch.float64)
    x = _input((2, 3, 4, 5), torch.float64)
    nf.check_vjp(layer, params, x)
    assert torch.equal(layer.apply(params, x), nf.group_norm(3).apply(params, x))
    assert nf.instance_norm().init(None, (-1, 3, -1, -1)) == ((-1, 3, -1, -1), {})


@pytest.mark.parametrize(
    "make,x,pattern",
    [
        (nf.instance_norm, torch.randn(2, 3, 1, 1), r"instance_norm.*one pixel per channel"),
        (nf.instance_norm, torch.randn(2, 3, 4), r"expected input \(N, C, H, W\).*got \(2, 3, 4\)"),
        (
            nf.instance_norm,
            torch.randn(2, 0, 4, 4),
            r"expected input \(N, C, H, W\) \(no axis of size 0\)",
        ),
        (lambda: nf.instance_norm(eps=0), torch.randn(2, 3, 4, 4), r"eps must be"),
        (lambda: nf.instance_norm(affine="yes"), torch.randn(2, 3, 4, 4), r"affine must be"),
    ],
)
def test_instance_norm_refuses_bad_input(make, x, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make().apply({}, x)


@pytest.mark.parametrize("affine", [False, True])
def test_the_instance_norm_wrapper_is_torch_nn_instance_norm2d(affine):
    ours, theirs = nf.InstanceNorm2d(4, affine=affine), torch.nn.InstanceNorm2d(4, affine=affine)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert (ours.weight is None) == (not affine) and ours.affine == affine
    torch.manual_seed(0)
    seq = nf.Sequential(nf.Conv2d(3, 4, 3, padding=1), nf.InstanceNorm2d(4, affine=affine))
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.InstanceNorm2d(4, affine=affine)
    )
    assert_trains_like(seq, ref, (2, 3, 5, 6), (2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"InstanceNorm2d: track_running_stats=True"):
        nf.InstanceNorm2d(4, track_running_stats=True)


def test_layer_norm_without_params_checks_the_size_it_was_given():
    """Without a weight the layer cannot tell F from its params: LayerNorm(F) passes its F,
    and an input of another size is refused, as torch.nn.LayerNorm refuses it."""
    with pytest.raises(
        ValueError, match=r"layer_norm\(.*size=5\): expected input \(N, 5\).*\(2, 4\)"
    ):
        nf.LayerNorm(5, elementwise_affine=False).forward(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"layer_norm\(.*size=5\): axis -1 of input shape"):
        nf.layer_norm(affine=False, size=5).init(None, (-1, 4))
    assert nf.layer_norm(affine=False, size=5).init(None, (-1, -1)) == ((-1, 5), {})
    assert nf.layer_norm(size=5).init(None, (-1, -1))[1]["weight"].shape == (5,)
    x = torch.randn(2, 5, dtype=torch.float64)
    ref = torch.nn.LayerNorm(5, elementwise_affine=False, bias=False).double()
    assert (
        rel_err(nf.LayerNorm(5, elementwise_affine=False, bias=False).double().forward(x), ref(x))
        < 1e-12
    )
    with pytest.raises(TypeError, match=r"LayerNorm: bias must be True or False"):
        nf.LayerNorm(5, elementwise_affine=False, bias="yes")
    with pytest.raises(ValueError, match=r"size must be a positive int"):
        nf.layer_norm(size=0)


def test_layer_norm_with_a_size_tells_the_next_layer_its_features():
    out, params = nf.serial(nf.layer_norm(size=4), nf.dense(3)).init(torch.Generator(), (-1, -1))
    assert out == (-1, 3) and params["1"]["weight"].shape == (3, 4)


TRAILING_CASES = [  # input shape, the last k axes
    ((2, 3, 4, 5), 3),  # (C, H, W), as torch.nn.LayerNorm((C, H, W))
    ((1, 3, 4, 5), 2),  # (H, W), batch 1
    ((3, 2, 7), 2),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,k", TRAILING_CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_layer_norm_over_the_last_axes_matches_torch(dtype, shape, k, affine, channels_last):
    if channels_last and len(shape) != 4:
        pytest.skip("channels_last needs a 4-d input")
    axes = tuple(range(-k, 0))
    layer = nf.layer_norm(axes, eps=1e-3, affine=affine)
    params = _random_params(layer, shape, dtype)
    if affine:
        assert params["weight"].shape == shape[-k:]
    x = _input(shape, dtype, channels_last=channels_last)

    def reference(x_, weight=None, bias=None):
        return F.layer_norm(x_, shape[-k:], weight, bias, 1e-3)

    _compare(layer, params, x, reference, TOL[dtype])


def test_layer_norm_over_the_last_axes_passes_check_vjp_and_refuses_bad_shapes():
    layer = nf.layer_norm((-3, -2, -1))
    _, params = layer.init(None, (-1, 3, 4, 5))
    params = nf.tree.map(lambda t: torch.randn_like(t.double()), params)
    nf.check_vjp(layer, params, _input((2, 3, 4, 5), torch.float64))
    with pytest.raises(ValueError, match=r"expected input \(N, \.\.\., 3, 4, 5\).*\(2, 3, 5, 4\)"):
        layer.apply(params, torch.randn(2, 3, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"several axes must be the last ones"):
        nf.layer_norm((1, 2))
    with pytest.raises(ValueError, match=r"the last 2 sizes of input shape \(-1, 3, -1, 5\)"):
        nf.layer_norm((-2, -1)).init(None, (-1, 3, -1, 5))
    with pytest.raises(ValueError, match=r"expected input \(N, \.\.\., 4, 4\).*got \(2, 3, 4\)"):
        nf.layer_norm((-2, -1), affine=False, size=(4, 4)).apply({}, torch.randn(2, 3, 4))


def test_the_layer_norm_wrapper_takes_several_axes_as_torch():
    ours, theirs = nf.LayerNorm((3, 4, 5)), torch.nn.LayerNorm((3, 4, 5))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    ours.load_state_dict(theirs.state_dict())
    assert ours.weight.shape == (3, 4, 5) and ours.normalized_shape == (3, 4, 5)
    x = torch.randn(2, 3, 4, 5)
    ct = torch.randn(2, 3, 4, 5)
    xr = x.clone().requires_grad_()
    with torch.enable_grad():
        theirs(xr).backward(ct)
    assert rel_err(ours.forward(x), theirs(x).detach()) < 1e-5
    assert rel_err(ours.backward(ct), xr.grad) < 1e-5
    for (_, g), q in zip(ours.param(), theirs.parameters()):
        assert rel_err(g, q.grad) < 1e-5
    with pytest.raises(ValueError, match=r"must be \(3, 4, 5\)|expected input"):
        nf.LayerNorm((3, 4, 5), elementwise_affine=False).forward(torch.randn(2, 3, 5, 4))


def test_layer_norm_over_the_last_axes_names_a_weight_of_the_wrong_rank():
    params = {"weight": torch.ones(60), "bias": torch.zeros(60)}
    with pytest.raises(ValueError, match=r"'weight' must have the 3 normalised axes' shape"):
        nf.layer_norm((-3, -2, -1)).apply(params, torch.randn(2, 3, 4, 5))


def test_a_size_of_several_axes_without_them_says_which_axis_to_give():
    with pytest.raises(ValueError, match=r"goes with axis=\(-k, \.\.\., -1\).*axis=\(-3, -2, -1\)"):
        nf.layer_norm(size=(32, 16, 16))


@pytest.mark.parametrize(
    "make,wrapper",
    [
        (lambda: nf.group_norm(4, 64), "GroupNorm"),
        (lambda: nf.instance_norm(64), "InstanceNorm2d"),
        (lambda: nf.batch_norm2d(64), "BatchNorm2d"),
    ],
)
def test_a_channel_count_in_eps_place_is_refused(make, wrapper):
    """Ported from nn.GroupNorm(4, 64) / nn.InstanceNorm2d(64): the functional layers take no
    channel count, and an eps of 64 had normalised without a word."""
    with pytest.raises(TypeError, match=rf"must be a float, got the int 64.*n2nfunc\.{wrapper}"):
        make()


def test_wrappers_take_an_int_eps_and_refuse_other_channel_counts_without_params():
    """torch.nn takes eps=1 as 1.0; a norm without params still knows its channel count."""
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    for ours, ref in (
        (nf.GroupNorm(2, 6, eps=1), torch.nn.GroupNorm(2, 6, eps=1)),
        (nf.InstanceNorm2d(6, 1), torch.nn.InstanceNorm2d(6, 1)),
        (nf.BatchNorm2d(6, 1), torch.nn.BatchNorm2d(6, 1)),
    ):
        ref = ref.double()
        ours = ours.to(dtype=torch.float64)
        assert rel_err(ours.forward(x), ref(x).detach()) < 1e-12
    for block, count in ((nf.InstanceNorm2d(3), 3), (nf.GroupNorm(2, 6, affine=False), 6)):
        with pytest.raises(ValueError, match=rf"\(2, 8, 3, 3\) has 8 channels, expected {count}"):
            block.forward(torch.randn(2, 8, 3, 3))
    with pytest.raises(TypeError, match=r"does not match the parameters' .*convert one to"):
        nf.GroupNorm(2, 6).forward(x.half())
    layer = nf.group_norm(2, channels=6)
    assert layer.init(torch.Generator(), (-1, -1, 4, 4))[0] == (-1, 6, 4, 4)
    with pytest.raises(ValueError, match=r"input shape \(-1, 4, 4, 4\) must have 6 channels"):
        layer.init(torch.Generator(), (-1, 4, 4, 4))


@pytest.mark.parametrize(
    "layer, x",
    [
        (nf.layer_norm(size=5), torch.randn(2, 4)),
        (nf.layer_norm(axis=1, size=5), torch.randn(2, 4, 3, 3)),
        (nf.group_norm(2, channels=8), torch.randn(2, 4, 3, 3)),
        (nf.instance_norm(channels=8, affine=True), torch.randn(2, 4, 3, 3)),
    ],
)
def test_params_of_another_size_than_the_layer_was_given_are_refused(layer, x):
    """A layer given its size refuses params of another (made elsewhere), as it refuses
    such an input, rather than normalising over the params' size."""
    four = {"weight": torch.ones(4), "bias": torch.zeros(4)}
    with pytest.raises(
        ValueError, match=r"parameter 'weight' must have shape \([58],\), got \(4,\)"
    ):
        layer.apply(four, x)
    with pytest.raises(ValueError, match=r"parameter 'weight' must have shape"):
        layer.vjp(four, x)
