"""Stateful networks: combinators with batch norm / dropout children, rng splitting,
check_vjp, value_and_grad and make_train_step against a torch.nn training loop."""

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err

import n2nfunc as nf
from n2nfunc.stateful import StatefulLayer


def clone(g):
    c = torch.Generator(device=g.device)
    c.set_state(g.get_state())
    return c


def child_rngs(rng, n):
    """The documented split: n int64 seeds drawn from rng, one generator per child."""
    seeds = torch.empty(n, dtype=torch.int64).random_(generator=rng).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


def to64(tree):
    return nf.tree.map(lambda t: t.double() if t.is_floating_point() else t, tree)


def mixed_net():
    return nf.serial(
        nf.conv2d(4, 3, stride=2, padding=1),
        nf.batch_norm2d(),
        nf.relu(),
        nf.dropout(0.3),
        nf.conv2d(2, 3, padding=1),
    )


def test_one_stateful_child_makes_the_network_stateful():
    assert isinstance(nf.serial(nf.conv2d(2, 3), nf.relu()), nf.Layer)
    assert isinstance(nf.residual(nf.serial(nf.conv2d(3, 3, padding=1))), nf.Layer)
    net = mixed_net()
    assert isinstance(net, StatefulLayer)
    assert isinstance(nf.parallel(nf.relu(), nf.dropout(0.5)), StatefulLayer)
    assert isinstance(nf.residual(nf.batch_norm2d()), StatefulLayer)
    out, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 9, 7))
    assert out == (-1, 2, 5, 4)
    assert [p for p, _ in nf.tree.flatten(params)] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
    ]
    assert [p for p, _ in nf.tree.flatten(state)] == [
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert state["0"] == {} and state["3"] == {}


def test_serial_matches_torch_with_the_documented_masks():
    net = mixed_net()
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 9, 7))
    params, state = to64(params), to64(state)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    rng = torch.Generator().manual_seed(4)
    rngs = child_rngs(clone(rng), 5)
    y, new_state, pullback = net.vjp(params, state, x, train=True, rng=rng)
    ct = torch.randn_like(y)
    mask = torch.empty(2, 4, 5, 4).bernoulli_(0.7, generator=rngs[3]).double() / 0.7
    flat = nf.tree.flatten(params)
    bn = torch.nn.BatchNorm2d(4).double()

    def ref(x_, *ws):
        q = dict(zip([p for p, _ in flat], ws))
        h = F.conv2d(x_, q["0.weight"], q["0.bias"], 2, 1)
        h = F.batch_norm(h, bn.running_mean, bn.running_var, q["1.weight"], q["1.bias"], True)
        return F.conv2d(F.relu(h) * mask, q["4.weight"], q["4.bias"], 1, 1)

    y_ref, grads = autograd_vjp(ref, [x] + [t for _, t in flat], ct)
    assert rel_err(y, y_ref) < 1e-10
    ct_params, ct_x = pullback(ct)
    assert rel_err(ct_x, grads[0]) < 1e-10
    for (path, g_ours), g in zip(nf.tree.flatten(ct_params), grads[1:]):
        if path == "0.bias":  # batch norm cancels it: both are rounding noise around 0
            assert float(g_ours.abs().max()) < 1e-12 and float(g.abs().max()) < 1e-12
        else:
            assert rel_err(g_ours, g) < 1e-10, path
    assert rel_err(new_state["1"]["running_mean"], bn.running_mean) < 1e-10
    assert rel_err(new_state["1"]["running_var"], bn.running_var) < 1e-10
    assert state["1"]["num_batches_tracked"] == 0  # the input state is not mutated
    # apply draws the same masks from the same generator state; evaluation needs no rng
    y2, _ = net.apply(params, state, x, train=True, rng=clone(torch.Generator().manual_seed(4)))
    assert torch.equal(y, y2)
    y_eval, same = net.apply(params, new_state, x, train=False, rng=None)
    assert same["1"] is new_state["1"]
    q = dict(flat)  # evaluation: running statistics, no dropout
    h = F.conv2d(x, q["0.weight"], q["0.bias"], 2, 1)
    h = F.batch_norm(h, bn.running_mean, bn.running_var, q["1.weight"], q["1.bias"], False)
    assert rel_err(y_eval, F.conv2d(F.relu(h), q["4.weight"], q["4.bias"], 1, 1)) < 1e-10


def test_check_vjp_on_a_network_mixing_stateful_and_plain_layers():
    net = nf.serial(
        mixed_net(),
        nf.residual(nf.serial(nf.batch_norm2d(), nf.relu(), nf.dropout(0.5))),
        nf.sigmoid(),
    )
    _, params, state = net.init(torch.Generator().manual_seed(1), (-1, 3, 7, 6))
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    nf.check_vjp(net, params, x, state=state, rng=torch.Generator().manual_seed(3), directions=2)
    nf.check_vjp(net, params, x, state=state, train=False, directions=2)
    with pytest.raises(ValueError, match="needs its state"):
        nf.check_vjp(net, params, x)


def test_children_get_independent_deterministic_randomness():
    net = nf.parallel(nf.dropout(0.5), nf.dropout(0.5))
    _, params, state = net.init(None, ((4, 50), (4, 50)))
    x = torch.ones(4, 50)
    (a, b), _ = net.apply(params, state, (x, x), train=True, rng=torch.Generator().manual_seed(0))
    (c, d), _ = net.apply(params, state, (x, x), train=True, rng=torch.Generator().manual_seed(0))
    assert torch.equal(a, c) and torch.equal(b, d)  # deterministic
    assert not torch.equal(a, b)  # independent children
    rngs = child_rngs(torch.Generator().manual_seed(0), 2)
    assert torch.equal(a == 0, torch.empty(4, 50).bernoulli_(0.5, generator=rngs[0]) == 0)
    # a child's masks do not depend on what its siblings draw
    net2 = nf.parallel(nf.dropout(0.9), nf.dropout(0.5))
    (_, b2), _ = net2.apply(params, state, (x, x), train=True, rng=torch.Generator().manual_seed(0))
    assert torch.equal(b, b2)
    # residual is a combinator too: its one child gets seed 0 of the split, in apply and vjp
    block = nf.residual(nf.dropout(0.5))
    mask = torch.empty(4, 50).bernoulli_(0.5, generator=child_rngs(torch.Generator(), 1)[0])
    for run in (block.apply, block.vjp):
        y = run(params["0"], state["0"], x, train=True, rng=torch.Generator())[0]
        assert torch.equal(y - x, mask * 2)


def test_residual_and_parallel_with_a_stateful_child_match_torch():
    block = nf.residual(nf.serial(nf.conv2d(3, 3, padding=1), nf.batch_norm2d()))
    net = nf.serial(nf.fanout(2), nf.parallel(block, nf.relu()), nf.fanin_sum())
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 5, 4))
    params, state = to64(params), to64(state)
    w, b = params["1"]["0"]["0"]["weight"], params["1"]["0"]["0"]["bias"]
    bn = torch.nn.BatchNorm2d(3).double()
    for _ in range(3):
        x = torch.randn(3, 3, 5, 4, dtype=torch.float64)
        y, state, _ = net.vjp(params, state, x, train=True, rng=None)
        y_ref = x + bn(F.conv2d(x, w, b, padding=1)) + F.relu(x)
        assert rel_err(y, y_ref) < 1e-10
    s = state["1"]["0"]["1"]
    assert rel_err(s["running_var"], bn.running_var) < 1e-10
    assert int(s["num_batches_tracked"]) == 3
    nf.check_vjp(net, params, x, state=state, directions=2)


def test_errors_name_the_layer_path():
    net = mixed_net()
    _, params, state = net.init(None, (-1, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(
        ValueError, match=r"in layer 1: serial: the state tree has no entry '0' for child 0"
    ):
        nf.serial(nf.relu(), net).apply({"0": {}, "1": params}, {"0": {}, "1": {}}, x, train=True)
    with pytest.raises(TypeError, match=r"in layer 3: dropout\(p=0.3\): training needs rng"):
        net.apply(params, state, x, train=True, rng=None)
    bad = {**state, "1": {**state["1"], "running_mean": torch.zeros(5)}}
    with pytest.raises(ValueError, match=r"in layer 1: batch_norm2d.*running_mean.*\(4,\)"):
        net.apply(params, bad, x, train=False)
    with pytest.raises(ValueError, match=r"in layer 0: a layer without state was given"):
        net.apply(params, {**state, "0": {"x": torch.ones(1)}}, x, train=False)
    with pytest.raises(ValueError, match=r"in layer 1: batch_norm2d.*\(1, 4, 1, 1\)"):
        net.apply(params, state, torch.randn(1, 3, 1, 1), train=True, rng=torch.Generator())
    with pytest.raises(TypeError, match=r"rng must be a torch.Generator.*manual_seed\(seed\)"):
        net.apply(params, state, x, train=True, rng=0)
    with pytest.raises(ValueError, match=r"serial: the params tree has no entry '3' for child 3"):
        net.apply({k: params[k] for k in "012"}, state, x, train=False)
    with pytest.raises(ValueError, match=r"in layer 0: serial: the params tree has no entry '1'"):
        nf.serial(net).vjp({"0": {"0": params["0"]}}, {"0": state}, x, train=False)
    with pytest.raises(ValueError, match=r"parallel: the params tree has no entry '0'.*list"):
        nf.parallel(net).apply([params], {"0": state}, (x,), train=False)
    with pytest.raises(ValueError, match=r"Tensor\): are the arguments in their order"):
        net.apply(x, state, params, train=False)  # the arguments swapped
    with pytest.raises(TypeError, match="serial: argument 1"):
        nf.serial(nf.batch_norm2d(), "bn")


def test_value_and_grad_and_train_step_match_a_torch_training_loop():
    net = mixed_net()
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    params, state = to64(params), to64(state)
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in nf.tree.flatten(params)}
    bn = torch.nn.BatchNorm2d(4).double()
    opt = torch.optim.SGD(ref.values(), lr=0.1, momentum=0.9)
    optimizer = nf.sgd(0.1, momentum=0.9)
    step = nf.make_train_step(net, nf.mse, optimizer)
    opt_state = optimizer.init(params)
    data = torch.Generator().manual_seed(1)
    rng = torch.Generator().manual_seed(2)
    for _ in range(4):
        x = torch.randn(3, 3, 8, 8, generator=data, dtype=torch.float64)
        target = torch.randn(3, 2, 4, 4, generator=data, dtype=torch.float64)
        rngs = child_rngs(clone(rng), 5)
        mask = torch.empty(3, 4, 4, 4).bernoulli_(0.7, generator=rngs[3]).double() / 0.7
        params, state, opt_state, value = step(params, state, opt_state, x, target, rng)
        with torch.enable_grad():
            h = F.conv2d(x, ref["0.weight"], ref["0.bias"], 2, 1)
            h = F.batch_norm(
                h, bn.running_mean, bn.running_var, ref["1.weight"], ref["1.bias"], True
            )
            out = F.conv2d(F.relu(h) * mask, ref["4.weight"], ref["4.bias"], 1, 1)
            loss = F.mse_loss(out, target)
            opt.zero_grad()
            loss.backward()
        opt.step()
        assert abs(float(value) - float(loss)) < 1e-12 * max(1.0, float(loss))
    for path, p in nf.tree.flatten(params):
        assert float((p - ref[path].detach()).abs().max()) < 1e-10 * float(p.abs().max()), path
    assert rel_err(state["1"]["running_mean"], bn.running_mean) < 1e-10
    assert rel_err(state["1"]["running_var"], bn.running_var) < 1e-10
    value, grads, new_state = nf.value_and_grad(net, nf.mse)(params, state, x, target, rng)
    assert set(grads) == set(params) and int(new_state["1"]["num_batches_tracked"]) == 5


def test_a_stateful_network_called_like_a_plain_layer_says_how_to_call_it():
    """`net.apply(params, x)` on a network with batch norm read "missing 1 required
    positional argument: 'x'" though x was given; train steps likewise."""
    net = nf.serial(nf.conv2d(3, 3, padding=1), nf.batch_norm2d())
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    for call in (
        lambda: net.apply(params, x, train=False),
        lambda: net.vjp(params, x),
    ):
        with pytest.raises(
            TypeError,
            match=r"this network is stateful .*call (apply|vjp)\(params, state, x, train=",
        ):
            call()
    with pytest.raises(TypeError, match=r"this network is stateful .*call apply\(params, state"):
        net.apply(params, x, True)  # no state, train given by position: the whole advice
    for kind in ("apply", "vjp"):  # the state given, train not: only train= is asked for
        with pytest.raises(
            TypeError, match=rf"stateful: say whether it trains, {kind}\(params, state, x, train="
        ):
            getattr(net, kind)(params, state, x)
    opt = nf.optim.adam(1e-3)
    step = nf.make_train_step(net, nf.mse, opt)
    with pytest.raises(TypeError, match=r"train_step: the network is stateful"):
        step(params, opt.init(params), x, x)
    assert net.apply(params, state, x, train=False)[0].shape == x.shape


def test_make_train_step_names_a_factory_given_for_loss_or_optimizer():
    net = nf.serial(nf.conv2d(3, 3, padding=1))
    with pytest.raises(
        TypeError,
        match=r"make_train_step: loss must be a Loss .*function huber \(a factory\? call it",
    ):
        nf.make_train_step(net, nf.huber, nf.optim.adam(1e-3))
    with pytest.raises(
        TypeError, match=r"make_train_step: optimizer must be .*function adam \(a factory"
    ):
        nf.make_train_step(net, nf.mse, nf.optim.adam)
    with pytest.raises(
        TypeError, match=r"value_and_grad: layer must be a Layer, got the function conv2d"
    ):
        nf.value_and_grad(nf.conv2d, nf.mse)
    with pytest.raises(TypeError, match=r"got the function mse_loss \(your own loss: n2nfunc.Loss"):
        nf.value_and_grad(net, torch.nn.functional.mse_loss)  # not ours: no factory hint
    made = {}
    exec("def made_here(a, b):\n    return 0", made)  # a function without a module
    with pytest.raises(TypeError, match=r"got the function made_here \(your own loss"):
        nf.value_and_grad(net, made["made_here"])


def test_a_stateful_train_step_takes_a_target_of_none():
    """A loss that ignores its target may be given None; the check for a plain-style call
    took None for a missing argument."""
    from n2nfunc.losses import Loss

    energy = Loss(lambda p, _: (p * p).mean(), lambda p, _: ((p * p).mean(), 2 * p / p.numel()))
    net = nf.serial(nf.conv2d(3, 3, padding=1), nf.batch_norm2d(), nf.relu())
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    opt = nf.optim.sgd(0.1)
    step = nf.make_train_step(net, energy, opt)
    *_, value = step(params, state, opt.init(params), torch.randn(2, 3, 8, 8), None, None)
    assert torch.isfinite(value)


def test_a_class_wrapper_given_to_make_train_step_is_pointed_to_its_layer():
    with pytest.raises(TypeError, match=r"got a Sequential block \(its functional layer is .layer"):
        nf.make_train_step(nf.Sequential(nf.Conv2d(3, 3, 3)), nf.mse, nf.optim.sgd(0.1))
    with pytest.raises(TypeError, match=r"Loss such as n2nfunc.mse, got function \(your own loss"):
        nf.make_train_step(nf.serial(nf.relu()), lambda a, b: 0, nf.optim.sgd(0.1))


@pytest.mark.parametrize("make", [nf.batch_norm2d, lambda: nf.dropout(0.5)])
def test_a_bare_stateful_layer_called_like_a_plain_one_says_how_to_call_it(make):
    layer = make()
    _, params, state = layer.init(torch.Generator().manual_seed(0), (-1, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    for call in (lambda: layer.apply(params, x), lambda: layer.vjp(params, x)):
        with pytest.raises(TypeError, match=r"(batch_norm2d|dropout)\(.*\) is stateful .*call"):
            call()
    assert layer.apply(params, state, x, train=False)[0].shape == x.shape


def test_train_takes_a_bool_only():
    """train="False" ran the training mode (batch statistics updated, dropout on)."""
    net = nf.serial(nf.conv2d(2, 3), nf.batch_norm2d(), nf.dropout(0.5))
    _, params, state = net.init(torch.Generator().manual_seed(0), (2, 3, 8, 8))
    x = torch.rand(2, 3, 8, 8)
    for bad in ("False", "eval", None):
        with pytest.raises(TypeError, match=f"train must be True or False, got {bad!r}"):
            net.apply(params, state, x, train=bad, rng=torch.Generator())
        with pytest.raises(TypeError, match="fixed: train must be True or False"):
            nf.stateful.fixed(net, state, train=bad)
    net.apply(params, state, x, train=False)


@pytest.mark.parametrize("train", [False, True])
def test_a_fixed_network_passes_check_vjp_with_its_float32_state(train):
    """check_vjp runs in float64: the float32 statistics held by ``fixed`` follow the
    parameters up to float64 (they were refused: 'state running_mean is torch.float32 ...
    but the parameters are torch.float64'), and the fixed layer still runs in float32; a
    narrower parameter dtype is still refused."""
    net = nf.serial(nf.conv2d(4, 3, padding=1), nf.batch_norm2d(), nf.relu(), nf.dropout(0.3))
    _, params, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 6, 5))
    state = nf.tree.map(lambda t: t + 0.5 if t.is_floating_point() else t, state)
    rng = torch.Generator().manual_seed(1)
    layer = nf.stateful.fixed(net, state, train=train, rng=rng)
    x = torch.randn(2, 3, 6, 5)
    errors = nf.check_vjp(layer, params, x)
    assert max(errors.values()) < 1e-6
    y = layer.apply(params, x)
    want, _ = net.apply(params, state, x, train=train, rng=clone(rng))
    assert y.dtype == torch.float32 and torch.equal(y, want)
    y64 = layer.apply(to64(params), x.double())
    want64, _ = net.apply(to64(params), to64(state), x.double(), train=train, rng=clone(rng))
    assert y64.dtype == torch.float64 and torch.equal(y64, want64)
    half = nf.tree.map(lambda t: t.half(), params)
    with pytest.raises(TypeError, match=r"state 'running_mean' is torch.float32"):
        layer.apply(half, x.half())
    # the held state, changed in place (as a block's forward pass does), is read anew by
    # every dtype: float64 parameters were given a copy taken at their first call
    state["1"]["running_mean"] += 2.0
    y64 = layer.apply(to64(params), x.double())
    want64, _ = net.apply(to64(params), to64(state), x.double(), train=train, rng=clone(rng))
    assert torch.equal(y64, want64)
