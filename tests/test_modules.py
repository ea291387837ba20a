"""The class wrappers, used as the exercise grader uses them, against torch.nn."""

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from n2nfunc import (
    MSE,
    SGD,
    Adam,
    AdamW,
    Conv2d,
    Module,
    NearestUpsampling,
    ReLU,
    RMSprop,
    Sequential,
    Sigmoid,
    TransposeConv2d,
    Upsampling,
    conv2d,
)


def test_conv2d_forward_equals_functional_conv2d():
    conv = Conv2d(3, 3, 3)
    x = torch.randn(4, 3, 9, 11)
    assert rel_err(conv.forward(x), F.conv2d(x, conv.weight, conv.bias)) < 1e-6
    assert rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias)) < 1e-6
    conv = Conv2d(3, 5, kernel_size=3, stride=2, padding=1)
    assert rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)) < 1e-6


def test_same_seed_same_weights_as_torch_nn():
    torch.manual_seed(3)
    ours = Conv2d(3, 4, 3, stride=2, padding=1)
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)


@pytest.mark.parametrize(
    "ours,ref",
    [
        (lambda: Conv2d(3, 4, 3, stride=2, padding=1), lambda m: torch.nn.Conv2d(3, 4, 3, 2, 1)),
        (
            lambda: TransposeConv2d(3, 4, 3, stride=2, padding=1, output_padding=1),
            lambda m: torch.nn.ConvTranspose2d(3, 4, 3, 2, 1, 1),
        ),
        (
            lambda: Upsampling(3, 4, 3, scale_factor=2, padding=1),
            lambda m: torch.nn.Sequential(
                torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(3, 4, 3, 1, 1)
            ),
        ),
    ],
)
def test_backward_accumulates_like_autograd(ours, ref):
    block = ours()
    torch_block = ref(block)
    conv = torch_block[1] if isinstance(torch_block, torch.nn.Sequential) else torch_block
    with torch.no_grad():
        conv.weight.copy_(block.weight)
        conv.bias.copy_(block.bias)
    xs = [torch.randn(2, 3, 6, 7) for _ in range(2)]
    with torch.enable_grad():
        for x in xs:
            xr = x.clone().requires_grad_()
            y_ref = torch_block(xr)
            ct = torch.randn_like(y_ref)
            y_ref.backward(ct)
            y = block.forward(x)
            dx = block.backward(ct)
            assert rel_err(y, y_ref.detach()) < 1e-5
            assert rel_err(dx, xr.grad) < 1e-5
    (w, gw), (b, gb) = block.param()
    assert w is block.weight and rel_err(gw, conv.weight.grad) < 1e-5  # summed over 2 calls
    assert rel_err(gb, conv.bias.grad) < 1e-5
    block.zero_grad()
    assert float(gw.abs().sum()) == 0


def required(seed=0):
    torch.manual_seed(seed)
    return Sequential(
        Conv2d(3, 8, 3, stride=2, padding=1),
        ReLU(),
        Conv2d(8, 12, 3, stride=2, padding=1),
        ReLU(),
        Upsampling(12, 8, 3, padding=1),
        ReLU(),
        Upsampling(8, 3, 3, padding=1),
        Sigmoid(),
    )


def required_torch(seed=0):
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, 2, 1),
        nn.ReLU(),
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(12, 8, 3, 1, 1)),
        nn.ReLU(),
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 3, 3, 1, 1)),
        nn.Sigmoid(),
    )


def test_sequential_mse_sgd_train_like_torch():
    net, ref = required(), required_torch()
    for (k, p), q in zip(net.state_dict().items(), ref.parameters()):
        q.data.copy_(p)
    assert list(net.state_dict()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
        "6.weight",
        "6.bias",
    ]
    loss, opt = MSE(), SGD(net.param(), lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ref_opt = torch.optim.SGD(
        ref.parameters(), lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-3
    )
    for _ in range(3):
        x, y = torch.rand(5, 3, 12, 8), torch.rand(5, 3, 12, 8)
        value = loss.forward(net.forward(x), y)
        opt.zero_grad()
        dx = net.backward(loss.backward())
        opt.step()
        with torch.enable_grad():
            xr = x.clone().requires_grad_()
            ref_loss = F.mse_loss(ref(xr), y)
            ref_opt.zero_grad()
            ref_loss.backward()
            ref_opt.step()
        assert abs(float(value) - float(ref_loss)) < 1e-6
        assert rel_err(dx, xr.grad) < 1e-4
    for p, q in zip(net.state_dict().values(), ref.parameters()):
        assert rel_err(p, q.detach()) < 1e-4


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda ps: AdamW(ps), lambda ps: torch.optim.AdamW(ps)),
        (
            lambda ps: AdamW(ps, lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
            lambda ps: torch.optim.AdamW(ps, 3e-2, (0.8, 0.99), 1e-6, 0.1),
        ),
        (lambda ps: Adam(ps, amsgrad=True), lambda ps: torch.optim.Adam(ps, amsgrad=True)),
        (lambda ps: RMSprop(ps), lambda ps: torch.optim.RMSprop(ps)),
        (
            lambda ps: RMSprop(ps, 1e-3, 0.9, 1e-6, 0.01, 0.9, True),
            lambda ps: torch.optim.RMSprop(ps, 1e-3, 0.9, 1e-6, 0.01, 0.9, True),
        ),
    ],
    ids=["AdamW", "AdamW-options", "Adam-amsgrad", "RMSprop", "RMSprop-options"],
)
def test_adamw_rmsprop_wrappers_train_like_torch(ours, theirs):
    net, ref = required().to(dtype=torch.float64), required_torch().double()
    for p, q in zip(net.state_dict().values(), ref.parameters()):
        q.data.copy_(p)
    loss, opt, ref_opt = MSE(), ours(net.param()), theirs(ref.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.rand(3, 3, 12, 8, generator=g, dtype=torch.float64)
        y = torch.rand(3, 3, 12, 8, generator=g, dtype=torch.float64)
        opt.zero_grad()
        loss.forward(net.forward(x), y)
        net.backward(loss.backward())
        opt.step()
        with torch.enable_grad():
            ref_opt.zero_grad()
            F.mse_loss(ref(x), y).backward()
            ref_opt.step()
    for p, q in zip(net.state_dict().values(), ref.parameters()):
        assert rel_err(p, q.detach()) < 1e-9


def test_adam_wrapper_and_lr_changes():
    net = required()
    opt = Adam(net, lr=1e-2)
    before = net.state_dict()["0.weight"].clone()
    net.forward(torch.rand(4, 3, 16, 16))
    net.backward(torch.randn(4, 3, 16, 16))
    assert all(float(g.abs().sum()) > 0 for _, g in net.param())
    opt.lr = 0.0
    opt.step()
    assert torch.equal(before, net.state_dict()["0.weight"])
    opt.lr = 1e-2
    opt.step()
    assert not torch.equal(before, net.state_dict()["0.weight"])


def test_parameterless_blocks_and_from_layer():
    for block in (ReLU(), Sigmoid(), NearestUpsampling(2)):
        assert block.param() == []
    up = NearestUpsampling(2)
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2))
    assert torch.equal(up.backward(torch.ones(1, 2, 6, 6)), torch.full((1, 2, 3, 3), 4.0))
    custom = Module.from_layer(conv2d(2, 1), (-1, 3, -1, -1))
    assert custom(torch.randn(1, 3, 2, 2)).shape == (1, 2, 2, 2)


def test_state_dict_round_trip_and_errors():
    a, b = required(0), required(1)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    bad = dict(a.state_dict())
    bad["0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(1,\), expected \(8, 3, 3, 3\)"):
        b.load_state_dict(bad)
    with pytest.raises(KeyError, match="missing keys"):
        b.load_state_dict({})


def test_backward_before_forward_is_an_error():
    for block in (Conv2d(3, 3, 3), ReLU(), required()):
        with pytest.raises(ValueError, match="backward\\(\\) called before forward\\(\\)"):
            block.backward(torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="MSE: backward"):
        MSE().backward()


def test_weight_can_be_replaced_with_the_same_shape_only():
    conv = Conv2d(3, 2, 3)
    conv.weight = torch.zeros(2, 3, 3, 3)
    assert float(conv(torch.randn(1, 3, 3, 3)).sub(conv.bias.view(1, 2, 1, 1)).abs().max()) == 0
    with pytest.raises(ValueError, match="weight must have shape"):
        conv.weight = torch.zeros(3, 3, 3, 3)


def test_sgd_rejects_bad_params():
    with pytest.raises(TypeError, match="pairs"):
        SGD([torch.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="SGD: lr"):
        SGD([], lr=-1)
