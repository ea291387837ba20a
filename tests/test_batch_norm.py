"""batch_norm2d against torch.nn.BatchNorm2d + autograd, in both modes."""

import pytest
import torch
from helpers import rel_err

import n2nfunc as nf

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def init(c, dtype, momentum=0.1, eps=1e-5, seed=0):
    """Our layer with random weight/bias, and torch's twin holding the same values."""
    layer = nf.batch_norm2d(eps=eps, momentum=momentum)
    _, params, state = layer.init(None, (-1, c, -1, -1))
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(c, generator=g, dtype=dtype) for k in params}
    state = nf.tree.map(lambda t: t.to(dtype) if t.is_floating_point() else t, state)
    ref = torch.nn.BatchNorm2d(c, eps=eps, momentum=momentum).to(dtype)
    ref.weight.data.copy_(params["weight"])
    ref.bias.data.copy_(params["bias"])
    return layer, params, state, ref


def torch_vjp(ref, x, ct):
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        y = ref(xr)
        grads = torch.autograd.grad(y, [xr, ref.weight, ref.bias], ct)
    return y.detach(), grads


# the last large enough that channels-last sums run in two steps (kernels.SUM_IN_TWO)
SHAPES = [(2, 3, 5, 7), (1, 4, 3, 2), (3, 2, 1, 1), (1, 2, 1, 3), (4, 5, 8, 8), (9, 6, 64, 45)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "momentum,eps", [(0.1, 1e-5), (0.7, 0.3), (None, 1e-5), (0.0, 2.0), (1.0, 1e-5)]
)
def test_training_steps_match_torch(dtype, shape, momentum, eps):
    n, c, h, w = shape
    layer, params, state, ref = init(c, dtype, momentum, eps)
    g = torch.Generator().manual_seed(1)
    tol = TOL[dtype]
    for step in range(3):
        x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1
        if step == 1:
            x = x.contiguous(memory_format=torch.channels_last)  # as conv layers give it
        y, state, pullback = layer.vjp(params, state, x, train=True)
        ct = torch.randn(shape, generator=g, dtype=dtype)
        if step == 1:
            ct = ct.contiguous(memory_format=torch.channels_last)  # as conv layers give it
        y_ref, (gx, gw, gb) = torch_vjp(ref, x, ct)
        assert rel_err(y, y_ref) < tol
        grads, dx = pullback(ct)
        assert rel_err(dx, gx) < tol
        assert rel_err(grads["weight"], gw) < tol and rel_err(grads["bias"], gb) < tol
        assert rel_err(state["running_mean"], ref.running_mean) < tol
        assert rel_err(state["running_var"], ref.running_var) < tol
        assert int(state["num_batches_tracked"]) == int(ref.num_batches_tracked) == step + 1
        # the same step through apply gives the same output and state
        y2, state2 = layer.apply(params, {**state}, x, train=True)
        assert rel_err(y2, y) < tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 3, 1, 1), (1, 3, 4, 3)])
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_evaluation_matches_torch_before_and_after_training(dtype, shape, eps):
    n, c, h, w = shape
    layer, params, state, ref = init(c, dtype, eps=eps)
    g = torch.Generator().manual_seed(2)
    tol = TOL[dtype]
    # before any statistics exist: PyTorch's initial mean 0 / variance 1, not an error
    ref.eval()
    x = torch.randn(shape, generator=g, dtype=dtype)
    y, same = layer.apply(params, state, x, train=False)
    assert same is state
    assert rel_err(y, ref(x)) < tol
    assert (
        rel_err(
            y,
            x / (1 + eps) ** 0.5 * params["weight"].view(1, -1, 1, 1)
            + params["bias"].view(1, -1, 1, 1),
        )
        < tol
    )
    # after two training steps on the same batches as torch
    ref.train()
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        xb = torch.randn(4, c, 3, 5, generator=g, dtype=dtype)
        _, state = layer.apply(params, state, xb, train=True)
        ref(xb)
    ref.eval()
    ct = torch.randn(shape, generator=g, dtype=dtype)
    y, new_state, pullback = layer.vjp(params, state, x, train=False)
    y_ref, (gx, gw, gb) = torch_vjp(ref, x, ct)
    assert rel_err(y, y_ref) < tol
    grads, dx = pullback(ct)
    assert rel_err(dx, gx) < tol
    assert rel_err(grads["weight"], gw) < tol and rel_err(grads["bias"], gb) < tol
    assert new_state is state and int(state["num_batches_tracked"]) == 2


def test_check_vjp_in_both_modes():
    layer, params, state, _ = init(3, torch.float64)
    _, state = layer.apply(params, state, torch.randn(2, 3, 4, 4, dtype=torch.float64), train=True)
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64)
    nf.check_vjp(layer, params, x, state=state)
    nf.check_vjp(layer, params, x, state=state, train=False)
    nf.check_vjp(layer, params, torch.randn(1, 3, 1, 2, dtype=torch.float64), state=state)


def test_input_grad_can_be_skipped():
    layer, params, state, _ = init(3, torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y, _, pullback = layer.vjp(params, state, x, train=True)
    ct = torch.randn_like(y)
    full = pullback(ct)
    grads, dx = nf.pull(layer.vjp, pullback, ct, input_grad=False)
    assert dx is None and torch.equal(grads["weight"], full[0]["weight"])


def test_init_matches_torch_defaults():
    _, params, state = nf.batch_norm2d().init(None, (-1, 4, -1, -1))
    ref = torch.nn.BatchNorm2d(4)
    assert torch.equal(params["weight"], ref.weight.detach())
    assert torch.equal(params["bias"], ref.bias.detach())
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert (
            torch.equal(state[key], getattr(ref, key))
            and state[key].dtype == getattr(ref, key).dtype
        )


def test_one_value_per_channel_in_training_is_refused_like_torch():
    layer, params, state, ref = init(3, torch.float64)
    x = torch.randn(1, 3, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ref(x)
    with pytest.raises(
        ValueError, match=r"batch_norm2d.*more than 1 value per channel.*\(1, 3, 1, 1\)"
    ):
        layer.apply(params, state, x, train=True)
    layer.apply(params, state, x, train=False)  # evaluation works, as in torch


def test_bad_input_is_named():
    layer, params, state, _ = init(3, torch.float64)
    with pytest.raises(ValueError, match=r"batch_norm2d.*\(N, 3, H, W\).*\(2, 4, 5, 5\)"):
        layer.apply(params, state, torch.randn(2, 4, 5, 5, dtype=torch.float64), train=True)
    with pytest.raises(ValueError, match=r"batch_norm2d.*\(N, 3, H, W\).*\(2, 3, 5\)"):
        layer.apply(params, state, torch.randn(2, 3, 5, dtype=torch.float64), train=False)
    with pytest.raises(ValueError, match=r"expected state entries .*got \['running_mean'\]"):
        layer.apply(
            params, {"running_mean": state["running_mean"]}, torch.randn(2, 3, 2, 2), train=True
        )
    with pytest.raises(ValueError, match=r"state 'running_var' must have shape \(3,\), got \(4,\)"):
        layer.apply(
            params, {**state, "running_var": torch.ones(4)}, torch.randn(2, 3, 2, 2), train=True
        )
    with pytest.raises(TypeError, match=r"state 'running_mean' is torch.float32"):
        layer.apply(
            params,
            {**state, "running_mean": torch.zeros(3)},
            torch.randn(2, 3, 2, 2, dtype=torch.float64),
            train=True,
        )
    with pytest.raises(TypeError, match="input dtype"):
        layer.apply(params, state, torch.randn(2, 3, 2, 2), train=True)
    for bad in (dict(eps=0), dict(eps=-1.0), dict(momentum=1.5)):
        with pytest.raises(ValueError, match="batch_norm2d"):
            nf.batch_norm2d(**bad)
    for bad in (dict(eps="1e-5"), dict(momentum="0.1")):  # a wrong type: TypeError, as torch
        with pytest.raises(TypeError, match="batch_norm2d"):
            nf.batch_norm2d(**bad)
    with pytest.raises(ValueError, match=r"batch_norm2d.*\(N, C, H, W\)"):
        nf.batch_norm2d().init(None, (3, 4))
    y, _, pullback = layer.vjp(
        params, state, torch.randn(2, 3, 2, 2, dtype=torch.float64), train=True
    )
    with pytest.raises(ValueError, match="output gradient"):
        pullback(torch.randn(2, 3, 2, 3, dtype=torch.float64))


def test_a_wrong_weight_or_a_float_batch_count_is_named():
    bn = nf.batch_norm2d()
    _, params, state = bn.init(None, (1, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(
        ValueError, match=r"'weight' must have shape \(C,\), one per channel, got \(3, 1\)"
    ):
        bn.apply(dict(params, weight=torch.ones(3, 1)), state, x, train=True)
    with pytest.raises(TypeError, match="'num_batches_tracked' must be an int64 number"):
        bn.apply(params, dict(state, num_batches_tracked=torch.zeros(())), x, train=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_16_bit_batch_norm_computes_in_float32_as_torch(dtype, train):
    """In float16 the squares of centred values past 256 overflowed: the output was all
    zeros and the running variance inf. Now float32 inside, rounded once, as torch does."""
    torch.manual_seed(0)
    bn = nf.batch_norm2d()
    _, params, state = bn.init(None, (-1, 3, 8, 8))
    params = {k: (torch.rand(3) + 0.5 if k == "weight" else torch.randn(3)) for k in params}
    state = {**state, "running_mean": torch.randn(3) * 50, "running_var": torch.rand(3) * 1e3}
    x = torch.randn(16, 3, 8, 8) * 100 + 20
    ct = torch.randn(16, 3, 8, 8)
    low = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    y, new_state, pullback = bn.vjp(
        nf.tree.map(low, params), nf.tree.map(low, state), low(x), train=train
    )
    grads, dx = pullback(low(ct))
    assert y.dtype == dx.dtype == grads["weight"].dtype == new_state["running_var"].dtype == dtype
    twin = torch.nn.BatchNorm2d(3).train(train)
    with torch.no_grad():
        twin.weight.copy_(params["weight"]), twin.bias.copy_(params["bias"])
        twin.running_mean.copy_(state["running_mean"]), twin.running_var.copy_(state["running_var"])
    twin = twin.to(dtype)
    with torch.enable_grad():
        xt = low(x).requires_grad_()
        yt = twin(xt)
        yt.backward(low(ct))
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert rel_err(y, yt) < tol
    assert rel_err(dx, xt.grad) < tol
    assert rel_err(grads["weight"], twin.weight.grad) < tol
    assert rel_err(grads["bias"], twin.bias.grad) < tol
    assert rel_err(new_state["running_var"], twin.running_var) < tol
    with pytest.raises(ValueError, match="batch_norm2d"):
        pullback(ct.to(dtype)[:1])
