"""BatchNorm2d / Dropout wrappers, train()/eval(), state_dict with torch.nn's names."""

import pytest
import torch
from helpers import rel_err

from n2nfunc import BatchNorm2d, Conv2d, Dropout, Module, ReLU, Sequential, Sigmoid, dropout
from n2nfunc.model import Model


def pair(seed=0):
    """Our Sequential and the equivalent torch.nn network holding the same weights."""
    torch.manual_seed(seed)
    ours = Sequential(
        Conv2d(3, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU(), Dropout(0.5), Sigmoid()
    )
    torch.manual_seed(seed)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Sigmoid(),
    )
    return ours, ref


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_batch_norm_block_trains_like_torch(eps):
    ours, ref = BatchNorm2d(3, eps, 0.2), torch.nn.BatchNorm2d(3, eps=eps, momentum=0.2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(2, 3, 5, 4, generator=g)
        ct = torch.randn(2, 3, 5, 4, generator=g)
        ours.zero_grad()
        y = ours(x)
        dx = ours.backward(ct)
        with torch.enable_grad():
            xr = x.clone().requires_grad_()
            y_ref = ref(xr)
            gx, gw, gb = torch.autograd.grad(y_ref, [xr, ref.weight, ref.bias], ct)
        assert rel_err(y, y_ref) < 1e-5 and rel_err(dx, gx) < 1e-5
        assert rel_err(ours.param()[0][1], gw) < 1e-5 and rel_err(ours.param()[1][1], gb) < 1e-5
    assert rel_err(ours.running_mean, ref.running_mean) < 1e-5
    assert rel_err(ours.running_var, ref.running_var) < 1e-5
    assert int(ours.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 1, 1)
    assert rel_err(ours(x), ref(x)) < 1e-5
    assert int(ours.num_batches_tracked) == 3  # evaluation leaves the statistics alone


def test_train_and_eval_are_recursive_and_return_self():
    net, _ = pair()
    assert net.training and all(m.training for m in net)
    assert net.eval() is net
    assert not net.training and not any(m.training for m in net)
    assert net.train() is net and all(m.training for m in net)
    assert net.train(False) is net and not net[3].training
    with pytest.raises(ValueError, match="train: mode must be a bool"):
        net.train("yes")
    inner = Sequential(Conv2d(3, 3, 1), Dropout())
    outer = Sequential(inner, ReLU())
    outer.eval()
    assert not inner.training and not inner[1].training


def test_dropout_block_modes_and_generator():
    x = torch.ones(4, 3, 8, 8)
    d = Dropout(0.25, generator=torch.Generator().manual_seed(0))
    y = d(x)
    assert set(y.unique().tolist()) == {0.0, float(torch.tensor(1 / 0.75))}
    assert torch.equal(d.backward(x), y)  # the same mask
    assert not torch.equal(d(x), y)  # its generator moved on
    assert torch.equal(d.eval()(x), x)
    again = Dropout(0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(x), y)  # seeded from the constructor's generator
    torch.manual_seed(5)
    a = Dropout()(x)
    torch.manual_seed(5)
    assert torch.equal(Dropout()(x), a)  # seeded from torch's global generator
    d = Dropout()
    torch.manual_seed(5)
    assert torch.equal(d(x), a)
    assert not torch.equal(d(x), a)  # ... at each forward pass: the global stream moved on
    torch.manual_seed(5)
    assert torch.equal(d(x), a)  # re-seeding repeats a pass's mask, as torch.nn.Dropout
    # ... at its first forward pass, not when built: a block built after it gets the weights
    # torch.nn gives for the same seed (torch's Dropout draws nothing when built)
    torch.manual_seed(0)
    ours = Sequential(Dropout(0.5), Conv2d(3, 4, 3))
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Conv2d(3, 4, 3))
    assert torch.equal(ours[1].weight, ref[1].weight) and torch.equal(ours[1].bias, ref[1].bias)
    # nor in evaluation mode, where torch's Dropout draws nothing either: the global stream
    # goes on as torch's does, and the block seeds itself at its first training forward
    torch.manual_seed(7)
    idle = Dropout(0.5).eval()
    assert torch.equal(idle(x), x) and idle.rng is None
    after_eval = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), after_eval)
    idle.train()(x)
    assert idle.rng is not None
    with pytest.raises(ValueError, match=r"dropout: p must be a number in \[0, 1\)"):
        Dropout(1.0)
    # torch's positional order: Dropout(p, inplace); the generator is keyword-only
    assert Dropout(0.25, False).p == 0.25
    with pytest.raises(ValueError, match=r"Dropout: inplace=True is not supported"):
        Dropout(0.25, True)
    assert Dropout(0.25, 0).p == 0.25  # any false inplace, as torch
    with pytest.raises(TypeError, match=r"Dropout: the generator is keyword-only"):
        Dropout(0.25, torch.Generator())
    with pytest.raises(TypeError, match=r"Dropout: generator must be a torch.Generator.*int"):
        Dropout(0.25, generator=3)


def test_sequential_forward_backward_match_torch_with_the_same_masks():
    ours, ref = pair(1)
    x = torch.randn(2, 3, 6, 5)
    ours[3].rng = torch.Generator().manual_seed(7)  # the masks' generator, set by hand
    rng = torch.Generator().manual_seed(7)
    mask = torch.empty(2, 4, 6, 5).bernoulli_(0.5, generator=rng)
    ct = torch.randn(2, 4, 6, 5)
    y = ours(x)
    dx = ours.backward(ct)
    with torch.enable_grad():
        xr = x.clone().requires_grad_()
        h = ref[2](ref[1](ref[0](xr)))
        y_ref = torch.sigmoid(h * mask / 0.5)
        grads = torch.autograd.grad(y_ref, [xr, *ref.parameters()], ct)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(dx, grads[0]) < 1e-5
    for (_, g), g_ref in zip(ours.param(), grads[1:]):
        assert rel_err(g, g_ref) < 1e-5
    assert rel_err(ours[1].running_var, ref[1].running_var) < 1e-5
    # the Sequential's state is its blocks' state
    assert ours.state["1"] is ours[1].state


def test_state_dict_has_torch_names_and_loads_both_ways():
    ours, ref = pair(2)
    for _ in range(2):
        x = torch.randn(3, 3, 5, 5)
        ours(x)
        ref(x)
    assert list(ours.state_dict()) == list(ref.state_dict())
    fresh = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Sigmoid(),
    )
    fresh.load_state_dict(ours.state_dict())  # strict: every key, torch's dtypes
    x = torch.randn(2, 3, 5, 5)
    assert rel_err(ours.eval()(x), fresh.eval()(x)) < 1e-5
    back, _ = pair(3)
    back.load_state_dict(ref.state_dict())
    assert rel_err(back.eval()(x), ref.eval()(x)) < 1e-5
    assert int(back[1].num_batches_tracked) == 2
    with pytest.raises(KeyError, match=r"missing keys \['1.running_mean'"):
        back.load_state_dict({k: v for k, v in ref.state_dict().items() if "running_mean" not in k})


def test_to_keeps_the_step_counter_an_integer():
    bn = BatchNorm2d(3).to(dtype=torch.float64)
    assert bn.running_mean.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.int64
    bn(torch.randn(2, 3, 2, 2, dtype=torch.float64))
    assert int(bn.num_batches_tracked) == 1


def test_from_layer_wraps_a_stateful_layer():
    block = Module.from_layer(dropout(0.5), (-1, 3, -1, -1), rng=torch.Generator().manual_seed(0))
    x = torch.ones(2, 3, 4, 4)
    assert set(block(x).unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(block.eval()(x), x)


def test_model_switches_its_network_mode():
    model = Model({"widths": (4, 4), "batch_size": 2})
    seen = []
    model.train(
        torch.rand(2, 3, 8, 8),
        torch.rand(2, 3, 8, 8),
        1,
        lambda *a: seen.append(model.net.training),
    )
    assert seen == [True]
    model.predict(torch.rand(1, 3, 8, 8))
    assert not model.net.training and not model.net[0].training


def test_running_statistics_are_updated_in_place_as_torch_buffers():
    bn = BatchNorm2d(2)
    held, state = bn.running_mean, bn.state_dict()
    bn.forward(torch.randn(4, 2, 3, 3) + 0.5)
    assert bn.running_mean is held and float(held.abs().sum()) > 0
    assert state["running_mean"] is held and state["num_batches_tracked"] is bn.num_batches_tracked
