"""The class wrappers, used as the exercise grader uses them, against torch.nn."""

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err

import n2nfunc as nf
from n2nfunc import (
    ELU,
    GELU,
    MSE,
    SGD,
    Adam,
    AdamW,
    AvgPool2d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    HuberLoss,
    L1Loss,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Module,
    NearestUpsampling,
    ReLU,
    RMSprop,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
    TransposeConv2d,
    Upsampling,
    batch_norm2d,
    conv2d,
    conv_transpose2d,
    cosine_decay,
    relu,
    tree,
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
        (
            lambda: Upsampling(3, 4, 3, scale_factor=2, padding=2, dilation=2),
            lambda m: torch.nn.Sequential(
                torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(3, 4, 3, 1, 2, dilation=2)
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
    for p, q in zip(net.state_dict().values(), ref.parameters()):
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
    ct = torch.randn(1, 2, 6, 6)
    _, (dx,) = autograd_vjp(lambda t: F.interpolate(t, scale_factor=2), [x], ct)
    assert torch.allclose(up.backward(ct), dx, atol=1e-6)
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


def test_backward_without_the_output_gradient_says_so():
    for block in (Conv2d(3, 3, 3), ReLU(), Sequential(Conv2d(3, 3, 3), ReLU())):
        y = block(torch.ones(1, 3, 4, 4))
        needs = rf"{type(block).__name__}.backward\(\) needs the gradient wrt the output"
        with pytest.raises(TypeError, match=needs):
            block.backward()  # torch's loss.backward() habit
        assert block.backward(torch.ones_like(y)).shape == (1, 3, 4, 4)  # still usable


def test_cross_entropy_class_weights_are_refused_by_name():
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: class weights \(weight\) are not"):
        CrossEntropyLoss(torch.ones(3))  # torch's first positional argument
    with pytest.raises(TypeError):
        CrossEntropyLoss(None, 0.1)  # label smoothing is keyword-only, as in torch
    logits, labels = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    smoothed = CrossEntropyLoss(None, label_smoothing=0.1).forward(logits, labels)
    want = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(smoothed, want, rtol=1e-12, atol=0)


def test_numpy_scalars_are_taken_where_torch_nn_takes_them():
    np = pytest.importorskip("numpy")
    torch.manual_seed(0)
    ours = Linear(np.int64(4), np.int64(3))
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 3)
    assert torch.equal(ours.weight, ref.weight)
    conv = Conv2d(np.int64(3), np.int64(4), np.int64(3), stride=np.int64(2))
    assert conv(torch.ones(1, 3, 9, 9)).shape == (1, 4, 4, 4)
    assert type(conv_transpose2d(np.int64(2), 3).init(None, (1, 3, 4, 4))[0][1]) is int
    bn = BatchNorm2d(np.int64(3), eps=np.float32(1e-5), momentum=np.float64(0.1))
    assert bn(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)
    assert Dropout(np.float32(0.5)).p == 0.5
    assert LeakyReLU(np.float64(0.2))(torch.tensor([-1.0])).item() == pytest.approx(-0.2)
    assert cosine_decay(0.1, np.int64(10), warmup_steps=np.int64(2))(0) == pytest.approx(0.05)
    with pytest.raises(TypeError, match="out_features must be a positive int"):
        Linear(2, np.float64(2.0))
    with pytest.raises(TypeError, match="out_channels must be a positive int, got True"):
        conv2d(True, 3)


def test_backward_with_retain_graph_false_releases_what_forward_kept():
    import gc
    import weakref

    for block in (ReLU(), required()):
        x = torch.randn(2, 3, 8, 8)
        y = block.forward(x)
        shape, kept = y.shape, weakref.ref(y)  # a ReLU keeps its output for the mask
        del y
        gc.collect()
        assert block.backward(torch.randn(shape)).shape == x.shape  # retained by default
        gc.collect()
        assert kept() is not None
        assert block.backward(torch.randn(shape), retain_graph=False).shape == x.shape
        gc.collect()
        assert kept() is None  # released by the backward pass, as by torch.autograd
        with pytest.raises(ValueError, match="called twice after one forward"):
            block.backward(torch.randn(shape))
    with pytest.raises(TypeError, match="retain_graph must be True or False"):
        ReLU().backward(torch.ones(1), retain_graph="no")


@pytest.mark.parametrize("nested", [False, True])
def test_a_second_backward_after_one_forward_accumulates_like_autograd(nested):
    """A grader may call backward twice on one forward (two output gradients): each adds its
    parameter gradients, as torch.autograd with retain_graph=True does."""
    torch.manual_seed(0)
    conv, up = Conv2d(3, 4, 3, stride=2, padding=1), TransposeConv2d(4, 3, 4, 2, 1)
    blocks = [conv.to(dtype=torch.float64), ReLU(), up.to(dtype=torch.float64), Sigmoid()]
    seq = Sequential(Sequential(*blocks[:2]), Sequential(*blocks[2:])) if nested else None
    seq = seq or Sequential(*blocks)
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(4, 3, 4, 2, 1), torch.nn.Sigmoid(),
    ).double()  # fmt: skip
    with torch.no_grad():
        for t, m in zip((twin[0], twin[2]), (conv, up)):
            t.weight.copy_(m.weight), t.bias.copy_(m.bias)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    cts = torch.randn(2, 2, 3, 10, 8, dtype=torch.float64)
    y = seq.forward(x)
    dxs = [seq.backward(ct) for ct in cts]
    with torch.enable_grad():
        xt = x.clone().requires_grad_()
        yt = twin(xt)
        theirs = [torch.autograd.grad(yt, xt, ct, retain_graph=True)[0] for ct in cts]
        yt.backward(cts.sum(0))
    assert rel_err(y, yt) < 1e-12
    for ours, their in zip(dxs, theirs):
        assert rel_err(ours, their) < 1e-12
    for (_, g), t in zip(seq.param(), twin.parameters()):
        assert rel_err(g, t.grad) < 1e-12


def test_a_failed_backward_leaves_the_forward_usable():
    conv = Conv2d(3, 4, 3)
    y = conv.forward(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        conv.backward(torch.randn(2, 4, 5, 5))
    assert conv.backward(torch.randn(y.shape)).shape == (2, 3, 8, 8)


def _torch_twin(conv):
    twin = torch.nn.Conv2d(conv.weight.shape[1], conv.weight.shape[0], 3, padding=1).double()
    with torch.no_grad():
        twin.weight.copy_(conv.weight), twin.bias.copy_(conv.bias)
    return twin


def test_sequential_backward_differentiates_its_own_forward():
    torch.manual_seed(0)
    x, probe = torch.randn(2, 2, 5, 7).double(), torch.randn(2, 2, 5, 7).double()
    ct = torch.randn(2, 2, 5, 7).double()

    def grads_of(run):
        conv = Conv2d(2, 2, 3, padding=1).to(dtype=torch.float64)
        twin = _torch_twin(conv)
        ours_dx, theirs = run(conv, twin)
        assert rel_err(conv.param()[0][1], twin.weight.grad) < 1e-12
        assert rel_err(ours_dx, theirs) < 1e-12

    def probed(conv, twin):  # an intermediate output looked at between forward and backward
        seq = Sequential(conv, ReLU())
        seq.forward(x)
        conv.forward(probe)
        with torch.enable_grad():
            xt = x.clone().requires_grad_()
            twin(xt).relu().backward(ct)
        return seq.backward(ct), xt.grad

    def shared(conv, twin):  # one block in two Sequentials, both differentiated
        a, b = Sequential(conv, ReLU()), Sequential(conv, ReLU())
        a.forward(x), b.forward(probe)
        with torch.enable_grad():
            xt = x.clone().requires_grad_()
            (twin(xt).relu() * ct).sum().add((twin(probe).relu() * ct).sum()).backward()
        b.backward(ct)
        return a.backward(ct), xt.grad

    def twice(conv, twin):  # the same block twice in one Sequential
        seq = Sequential(conv, ReLU(), conv)
        seq.forward(x)
        with torch.enable_grad():
            xt = x.clone().requires_grad_()
            twin(twin(xt).relu()).backward(ct)
        return seq.backward(ct), xt.grad

    def failed(conv, twin):  # a later forward that fails partway changes nothing
        seq = Sequential(conv, ReLU(), Flatten(), conv)
        seq2 = Sequential(conv, ReLU())
        seq2.forward(x)
        with pytest.raises(ValueError):
            seq.forward(probe)  # conv then ReLU run, then conv refuses the flat input
        with torch.enable_grad():
            xt = x.clone().requires_grad_()
            twin(xt).relu().backward(ct)
        return seq2.backward(ct), xt.grad

    def nested_probed(conv, twin):  # a sub-network looked at between forward and backward
        inner = Sequential(conv, ReLU())
        seq = Sequential(inner, Tanh())
        seq.forward(x)
        inner.forward(probe)
        with torch.enable_grad():
            xt = x.clone().requires_grad_()
            twin(xt).relu().tanh().backward(ct)
        return seq.backward(ct), xt.grad

    def nested_twice(conv, twin):  # one sub-network twice, its pass released as it goes
        inner = Sequential(conv, ReLU())
        seq = Sequential(inner, inner)
        seq.forward(x)
        with torch.enable_grad():
            xt = x.clone().requires_grad_()
            twin(twin(xt).relu()).relu().backward(ct)
        return seq.backward(ct, retain_graph=False), xt.grad

    for run in (probed, shared, twice, failed, nested_probed, nested_twice):
        grads_of(run)


def test_a_released_backward_that_failed_partway_is_named_when_retried_with_nesting():
    """The retry of a retain_graph=False backward that failed in an outer block, after an
    inner Sequential had run: a TypeError ('function' object is not subscriptable)."""

    class Flaky(ReLU):
        fails = [True]

        def backward(self, *ct, **options):
            if self.fails.pop():
                raise ValueError("flaky")
            return super().backward(*ct, **options)

    outer = Sequential(Flaky(), Sequential(Conv2d(2, 2, 3, padding=1), ReLU()))
    y = outer.forward(torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="flaky"):
        outer.backward(torch.randn(y.shape), retain_graph=False)
    with pytest.raises(nf.ReleasedError, match=r"block 1: this pullback was called with release"):
        outer.backward(torch.randn(y.shape), retain_graph=False)


def test_weight_can_be_replaced_with_the_same_shape_only():
    conv = Conv2d(3, 2, 3)
    conv.weight = torch.zeros(2, 3, 3, 3)
    assert float(conv(torch.randn(1, 3, 3, 3)).sub(conv.bias.view(1, 2, 1, 1)).abs().max()) == 0
    with pytest.raises(ValueError, match="weight must have shape"):
        conv.weight = torch.zeros(3, 3, 3, 3)


def test_positional_arguments_follow_torch_nn_and_misplaced_ones_are_refused():
    torch.manual_seed(0)
    ours = Conv2d(4, 6, 3, 1, 1, 1, 1, False)  # torch: ..., dilation, groups, bias
    assert ours.bias is None
    up = TransposeConv2d(4, 6, 3, 2, 1, 1, 1, True, 2)  # torch: ..., groups, bias, dilation
    twin = torch.nn.ConvTranspose2d(4, 6, 3, 2, 1, 1, 1, True, 2)
    x = torch.randn(1, 4, 5, 5)
    assert up.forward(x).shape == twin(x).shape == (1, 6, 12, 12)
    grouped = Conv2d(4, 4, 3, 1, 1, 1, 2)  # torch: ..., dilation, groups
    assert grouped.groups == 2 and grouped.weight.shape == (4, 2, 3, 3)
    grouped_up = TransposeConv2d(4, 6, 3, 2, 1, 1, 2)  # torch: ..., output_padding, groups
    assert grouped_up.groups == 2 and grouped_up.weight.shape == (4, 3, 3, 3)
    for make in (
        lambda: Conv2d(4, 4, 3, bias=2),
        lambda: Linear(4, 4, 2),
        lambda: Upsampling(4, 4, 3, 2, 1, None),
    ):
        with pytest.raises(TypeError, match="bias must be True or False"):
            make()
    with pytest.raises(TypeError):
        Linear(4, 4, True, torch.Generator())  # the generator is a keyword


def test_replaced_tensors_keep_the_blocks_dtype_and_device():
    conv = Conv2d(3, 2, 3)
    with pytest.raises(
        ValueError, match=r"weight must be torch.float32 on cpu .* got torch.float64"
    ):
        conv.weight = conv.weight.double()
    with pytest.raises(ValueError, match="built with bias=False, so it has no bias"):
        Conv2d(3, 2, 3, bias=False).bias = torch.zeros(2)
    conv.to(dtype=torch.float64)
    conv.weight = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    conv.forward(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    conv.backward(torch.randn(1, 2, 2, 2, dtype=torch.float64))
    assert all(g.dtype == torch.float64 for _, g in conv.param())


def test_to_moves_tensors_in_place_so_an_optimizer_keeps_training():
    torch.manual_seed(0)
    for make in (lambda p: SGD(p, lr=0.1, momentum=0.9), lambda p: Adam(p, lr=0.1)):
        net = Sequential(Conv2d(3, 4, 3, padding=1), ReLU())
        pairs = net.param()
        opt = make(net.param())
        net.to(dtype=torch.float64)
        assert all(
            p.dtype == torch.float64 and p is q for (p, _), (q, _) in zip(net.param(), pairs)
        )
        before = net[0].weight.clone()
        y = net.forward(torch.randn(2, 3, 5, 5, dtype=torch.float64))
        net.backward(torch.randn_like(y))
        opt.step()
        assert float((net[0].weight - before).abs().max()) > 1e-3  # the step reached the block
        assert all(t.dtype == torch.float64 for t in nf_leaves(opt.state) if t.is_floating_point())
        moved = [v for v in opt.state.values() if isinstance(v, list)]
        assert moved and all(tree.raveled(v) is not None for v in moved)  # one vector again


def nf_leaves(t):
    return [leaf for leaf in tree.leaves(t) if isinstance(leaf, torch.Tensor)]


def test_sgd_rejects_bad_params():
    with pytest.raises(TypeError, match="pairs"):
        SGD([torch.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="SGD: lr"):
        SGD([], lr=-1)
    for params in ([], Sequential(ReLU()), iter([])):  # torch.optim refuses these too
        with pytest.raises(ValueError, match="SGD: got an empty parameter list: nothing"):
            SGD(params, lr=0.1)


BLOCKS = [
    (lambda: Flatten(), lambda: torch.nn.Flatten()),
    (lambda: MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1)),
    (lambda: MaxPool2d(2), lambda: torch.nn.MaxPool2d(2)),
    (lambda: AvgPool2d((3, 2), 1, (1, 0)), lambda: torch.nn.AvgPool2d((3, 2), 1, (1, 0))),
    (lambda: LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    (lambda: Tanh(), lambda: torch.nn.Tanh()),
    (lambda: GELU(), lambda: torch.nn.GELU()),
    (lambda: GELU("tanh"), lambda: torch.nn.GELU("tanh")),
    (lambda: SiLU(), lambda: torch.nn.SiLU()),
    (lambda: nf.Identity(), lambda: torch.nn.Identity()),
    (lambda: nf.AdaptiveAvgPool2d(1), lambda: torch.nn.AdaptiveAvgPool2d(1)),
    (lambda: nf.AdaptiveAvgPool2d((1, 1)), lambda: torch.nn.AdaptiveAvgPool2d((1, 1))),
    *[
        (lambda kw=kw: nf.Upsample(**kw), lambda kw=kw: torch.nn.Upsample(**kw))
        for kw in [
            {"scale_factor": 2},
            {"size": (9, 8)},
            {"scale_factor": (2, 3)},
            {"scale_factor": 2, "mode": "bilinear"},
            {"scale_factor": 2, "mode": "bilinear", "align_corners": True},
            {"size": (3, 8), "mode": "bilinear", "align_corners": False},
        ]
    ],
    (lambda: ELU(0.5), lambda: torch.nn.ELU(0.5)),
    (lambda: Softplus(2.0, 3.0), lambda: torch.nn.Softplus(2.0, 3.0)),
    (lambda: LogSoftmax(1), lambda: torch.nn.LogSoftmax(1)),
    (lambda: Softmax(dim=-1), lambda: torch.nn.Softmax(dim=-1)),
]


@pytest.mark.parametrize("ours,ref", BLOCKS)
def test_parameterless_wrappers_match_torch_nn(ours, ref):
    block, torch_block = ours(), ref()
    assert block.param() == []
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    with torch.enable_grad():
        xr = x.clone().requires_grad_()
        y_ref = torch_block(xr)
        ct = torch.randn_like(y_ref)
        y_ref.backward(ct)
    assert rel_err(block.forward(x), y_ref.detach()) <= 1e-10
    assert rel_err(block.backward(ct), xr.grad) <= 1e-10


def test_linear_same_seed_same_weights_and_backward_like_torch():
    torch.manual_seed(5)
    lin = Linear(6, 4)
    torch.manual_seed(5)
    ref = torch.nn.Linear(6, 4)
    assert torch.equal(lin.weight, ref.weight) and torch.equal(lin.bias, ref.bias)
    assert Linear(6, 4, bias=False).bias is None
    assert repr(lin) == "Linear(in_features=6, out_features=4, bias=True)"
    xs = [torch.randn(3, 6), torch.randn(2, 5, 6)]
    with torch.enable_grad():
        for x in xs:
            xr = x.clone().requires_grad_()
            y_ref = ref(xr)
            ct = torch.randn_like(y_ref)
            y_ref.backward(ct)
            assert rel_err(lin(x), y_ref.detach()) <= 1e-5
            assert rel_err(lin.backward(ct), xr.grad) <= 1e-5
    (w, gw), (b, gb) = lin.param()
    assert w is lin.weight and rel_err(gw, ref.weight.grad) <= 1e-5
    assert rel_err(gb, ref.bias.grad) <= 1e-5


@pytest.mark.parametrize(
    "ours,ref,target",
    [
        (lambda: CrossEntropyLoss(), lambda: torch.nn.CrossEntropyLoss(), "labels"),
        (
            lambda: CrossEntropyLoss(label_smoothing=0.2),
            lambda: torch.nn.CrossEntropyLoss(label_smoothing=0.2),
            "labels",
        ),
        (lambda: L1Loss(), lambda: torch.nn.L1Loss(), "values"),
        (lambda: HuberLoss("mean", 0.5), lambda: torch.nn.HuberLoss("mean", 0.5), "values"),
        (lambda: BCEWithLogitsLoss(), lambda: torch.nn.BCEWithLogitsLoss(), "probabilities"),
    ],
)
def test_loss_wrappers_match_torch_nn(ours, ref, target):
    loss, torch_loss = ours(), ref()
    pred = torch.randn(6, 5, dtype=torch.float64)
    y = {
        "labels": torch.randint(0, 5, (6,)),
        "values": torch.randn(6, 5, dtype=torch.float64),
        "probabilities": torch.rand(6, 5, dtype=torch.float64),
    }[target]
    with torch.enable_grad():
        pr = pred.clone().requires_grad_()
        value_ref = torch_loss(pr, y)
        value_ref.backward()
    assert rel_err(loss.forward(pred, y), value_ref.detach()) <= 1e-10
    assert rel_err(loss.backward(), pr.grad) <= 1e-10
    assert loss.param() == []


def test_gelu_takes_torchs_two_forms_only():
    with pytest.raises(ValueError, match=r"GELU: gelu: approximate must be 'none' or 'tanh'"):
        GELU("sigmoid")
    assert repr(GELU("tanh")) == repr(torch.nn.GELU("tanh")) and GELU().approximate == "none"


def test_a_cnn_classifier_trains_like_torch_nn():
    """conv, LeakyReLU, max-pool, flatten, Linear, Tanh, Linear, cross-entropy and SGD,
    three steps in float64 from the same weights: the same losses, gradients and weights."""
    torch.manual_seed(0)
    net = Sequential(
        Conv2d(2, 4, 3, padding=1),
        LeakyReLU(0.1),
        MaxPool2d(2),
        Flatten(),
        Linear(4 * 3 * 4, 8),
        Tanh(),
        Linear(8, 3),
    ).to(dtype=torch.float64)
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.LeakyReLU(0.1),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 4, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 3),
    ).double()
    for p, q in zip(net.state_dict().values(), ref.parameters()):
        assert torch.equal(p, q.detach())
    loss, opt = CrossEntropyLoss(), SGD(net.param(), lr=0.3, momentum=0.9)
    ref_loss, ref_opt = torch.nn.CrossEntropyLoss(), torch.optim.SGD(ref.parameters(), 0.3, 0.9)
    for _ in range(3):
        x, y = torch.randn(5, 2, 7, 9, dtype=torch.float64), torch.randint(0, 3, (5,))
        value = loss.forward(net.forward(x), y)
        opt.zero_grad()
        net.backward(loss.backward(), input_grad=False)
        opt.step()
        with torch.enable_grad():
            value_ref = ref_loss(ref(x), y)
            ref_opt.zero_grad()
            value_ref.backward()
            ref_opt.step()
        assert rel_err(value, value_ref.detach()) <= 1e-10
    for p, q in zip(net.state_dict().values(), ref.parameters()):
        assert rel_err(p, q.detach()) <= 1e-10


def test_a_block_with_its_own_backward_is_honoured_inside_sequential():
    class Halving(Conv2d):
        def backward(self, *grad_wrt_output, input_grad=True):
            dx = super().backward(*grad_wrt_output, input_grad=input_grad)
            return None if dx is None else dx * 0.5

    torch.manual_seed(0)
    conv = Halving(2, 2, 3, padding=1)
    x, ct = torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5)
    plain = Conv2d(2, 2, 3, padding=1)
    plain.weight, plain.bias = conv.weight.clone(), conv.bias.clone()
    plain.forward(x)
    want = plain.backward(ct) * 0.5
    seq = Sequential(conv)
    seq.forward(x)
    assert torch.allclose(seq.backward(ct), want)
    seq.forward(x)  # a backward written before retain_graph is not passed it
    assert torch.allclose(seq.backward(ct, retain_graph=False), want)


def test_to_the_meta_device_and_bias_values_torch_takes():
    conv = Conv2d(3, 2, 3).to(device="meta")
    assert conv.weight.device.type == "meta" and conv.param()[0][1].device.type == "meta"
    np = pytest.importorskip("numpy")
    for flag, has_bias in ((np.False_, False), (1, True), (0, False), (np.True_, True)):
        assert (Conv2d(3, 2, 3, bias=flag).bias is not None) == has_bias
        assert (Linear(3, 2, flag).bias is not None) == has_bias


def _train_beside_torch(seq, opt, torch_net, opt_torch, steps: int) -> None:
    """``steps`` steps of sum-of-outputs descent, ours and torch.nn's, on the same inputs."""
    for _ in range(steps):
        x = torch.randn(2, 3, 6, 6)
        opt.zero_grad(), opt_torch.zero_grad()
        seq.backward(torch.ones_like(seq.forward(x)))
        with torch.enable_grad():
            torch_net(x).sum().backward()
        opt.step(), opt_torch.step()


def test_optimizers_update_a_block_used_twice_once_and_take_schedules():
    """torch.optim dedupes ``parameters()``; a block used twice in a Sequential had its
    parameters stepped twice (twice the learning rate, two Adam states for one tensor)."""
    from n2nfunc.modules import Adam

    conv = Conv2d(3, 3, 3, padding=1, generator=torch.Generator().manual_seed(0))
    twin = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        twin.weight.copy_(conv.weight), twin.bias.copy_(conv.bias)
    seq = Sequential(conv, ReLU(), conv)
    torch_net = torch.nn.Sequential(twin, torch.nn.ReLU(), twin)
    for make, make_torch in (
        (lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
        (lambda p: Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    ):
        opt, opt_torch = make(seq.param()), make_torch(torch_net.parameters())
        assert len(seq.param()) == 2 and len(opt.params) == 2
        _train_beside_torch(seq, opt, torch_net, opt_torch, steps=2)
        torch.testing.assert_close(conv.weight, twin.weight.detach(), rtol=1e-5, atol=1e-6)
    scheduled = SGD(conv.param(), lr=nf.cosine_decay(0.1, 100))
    scheduled.step()  # a schedule as lr: called with the step (it crashed here)


def test_weights_tied_by_assignment_get_both_gradients():
    """dec.weight = enc.weight: each block keeps its own gradient buffer, and torch's
    accumulated .grad is their sum; the optimizer steps the one tensor with that sum."""
    enc = Conv2d(3, 3, 3, padding=1, generator=torch.Generator().manual_seed(1))
    dec = Conv2d(3, 3, 3, padding=1, generator=torch.Generator().manual_seed(2))
    dec.weight = enc.weight
    t1, t2 = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        t1.weight.copy_(enc.weight), t1.bias.copy_(enc.bias), t2.bias.copy_(dec.bias)
    t2.weight = t1.weight
    seq, twin = Sequential(enc, ReLU(), dec), torch.nn.Sequential(t1, torch.nn.ReLU(), t2)
    opt, opt_torch = SGD(seq.param(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    _train_beside_torch(seq, opt, twin, opt_torch, steps=3)
    torch.testing.assert_close(enc.weight, t1.weight.detach(), rtol=1e-5, atol=1e-6)
    assert dec.weight is enc.weight


def test_sequential_errors_name_the_block_position():
    """A shape error inside a Sequential named the layer but not where it sits."""

    seq = nf.Sequential(nf.Conv2d(3, 8, 3), nf.ReLU(), nf.Conv2d(4, 3, 3))
    with pytest.raises(ValueError, match=r"^in layer 2: conv2d\(.*expected input of shape \(N, 4"):
        seq.forward(torch.randn(2, 3, 8, 8))
    nested = nf.Sequential(nf.Conv2d(3, 8, 3), nf.Sequential(nf.Conv2d(8, 3, 3), nf.ReLU()))
    nested.forward(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"^Sequential: output gradient must have the output's"):
        nested.backward(torch.randn(2, 3, 5, 5))  # the caller's mistake, not its last block's
    nested.backward(torch.randn(2, 3, 4, 4))  # may be retried


def test_sequential_lets_an_error_class_of_ones_own_through_with_a_note():
    """Rebuilding the error with the layer path in its message broke a ValueError subclass
    whose __init__ takes other arguments."""
    import sys

    class ShapeError(ValueError):
        def __init__(self, expected, got):
            super().__init__(f"expected {expected}, got {got}")
            self.expected = expected

    class Mine(nf.Module):
        def __init__(self):
            super().__init__(nf.relu(), {})

        def forward(self, x):
            raise ShapeError(99, x.shape[1])

    with pytest.raises(ShapeError) as e:
        nf.Sequential(nf.Conv2d(3, 4, 3, padding=1), Mine()).forward(torch.randn(1, 3, 8, 8))
    assert e.value.expected == 99
    if sys.version_info >= (3, 11):
        assert e.value.__notes__ == ["in layer 1"]


def test_sequential_of_a_functional_layer_says_how_to_wrap_it():
    """A Layer is a named tuple: it had been unpacked as a list of blocks, and the error
    blamed its init function ("block 0 is a function")."""
    for block in (relu(), batch_norm2d()):
        for args in ((block,), ([block],), (ReLU(), block)):
            with pytest.raises(TypeError, match=r"block \d is a functional \w*Layer, not a Module"):
                Sequential(*args)
    assert len(Sequential([ReLU(), ReLU()])) == 2  # a list of blocks still unpacks


def test_backward_after_a_failed_forward_is_refused():
    """It had differentiated the forward pass before the failed one, silently."""
    x, bad = torch.randn(1, 3, 8, 8), torch.randn(1, 5, 8, 8)
    for block in (Conv2d(3, 4, 3), Sequential(Conv2d(3, 4, 3), ReLU())):
        block(x)
        with pytest.raises(ValueError, match="expected input of shape"):
            block(bad)
        with pytest.raises(ValueError, match=r"after a forward\(\) that failed"):
            block.backward(torch.randn(1, 4, 6, 6))
    loss = MSE()
    loss(x, x)
    with pytest.raises(ValueError):
        loss(x, bad)
    with pytest.raises(ValueError, match=r"after a forward\(\) that failed"):
        loss.backward()


def test_blocks_check_their_input_size_and_show_non_default_options():
    for make, message in (
        (lambda: Conv2d(-1, 8, 3), "Conv2d: in_channels must be a positive int, got -1"),
        (lambda: Linear(0, 3), "Linear: in_features must be a positive int, got 0"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    for make, message in (  # not an int: a TypeError, as torch's
        (lambda: TransposeConv2d(True, 8, 3), "TransposeConv2d: in_channels must be a positive"),
        (lambda: Upsampling(2.0, 3, 3), "Upsampling: in_channels must be a positive int"),
    ):
        with pytest.raises(TypeError, match=message):
            make()
    assert repr(Conv2d(3, 8, 3, dilation=2, bias=False)).endswith("dilation=2, bias=False)")
    assert repr(Conv2d(3, 8, 3)).endswith("padding=0)")
    assert "dilation=2" in repr(TransposeConv2d(3, 8, 3, dilation=2))
    assert repr(Upsampling(3, 8, 3, bias=False)).endswith("padding=0, bias=False)")


def test_blocks_work_with_autograd_on_and_an_input_that_requires_grad():
    """The blocks' gradients are hand-written; with autograd left on, an input that requires
    grad had every operation recorded, and max pooling's backward pass was refused ("a leaf
    Variable that requires grad is being used in an in-place operation")."""
    torch.manual_seed(0)
    net = Sequential(Conv2d(2, 3, 3), ReLU(), MaxPool2d(2))
    x, ct = torch.randn(1, 2, 7, 7), torch.randn(1, 3, 2, 2)
    with torch.no_grad():
        y_ref, dx_ref = net(x), net.backward(ct)
    with torch.enable_grad():
        y = net(x.clone().requires_grad_())
        dx = net.backward(ct)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref) and not y.requires_grad


def test_pickling_is_refused_in_a_sentence_and_copies_still_work():
    """Blocks hold their layers' functions, which pickle cannot store: torch.save(block) had
    failed with "Can't pickle local object '_make_init.<locals>.init_fn'"."""
    import copy
    import io
    import pickle

    from n2nfunc import Model

    net = Sequential(Conv2d(3, 4, 3), ReLU())
    for obj, advice in (
        (net, r"save its state_dict\(\) instead"),
        (MSE(), "a loss holds no state"),
        (SGD(net.param(), 0.1), "save its state"),
        (Model(), r"use model.save\(path\) instead"),
    ):
        name = type(obj).__name__
        with pytest.raises(TypeError, match=rf"{name} cannot be pickled .*; {advice}"):
            pickle.dumps(obj)
        with pytest.raises(TypeError, match=f"{name} cannot be pickled"):
            torch.save(obj, io.BytesIO())
    twin = copy.deepcopy(net)
    assert twin[0].weight is not net[0].weight and torch.equal(twin[0].weight, net[0].weight)
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(twin(x), net(x))
    assert copy.copy(net)[0] is net[0]


def test_module_refuses_a_layer_factory_and_a_state_given_as_its_name():
    """Module(relu, {}) failed at forward with an AttributeError; Module(bn, params, state)
    took the state as the name and then said the state was empty."""
    with pytest.raises(TypeError, match=r"a Layer, got the function relu \(a factory\? call it"):
        Module(relu, {})
    bn = batch_norm2d()
    _, params, state = bn.init(torch.Generator().manual_seed(0), (-1, 3, 4, 4))
    with pytest.raises(TypeError, match=r"name must be a str, got dict .*state=state"):
        Module(bn, params, state)
    assert Module(bn, params, state=state).state is state


def test_torch_nn_keywords_padding_strings_mode_device_and_dtype():
    """Conv2d(..., padding="same" / "valid", padding_mode="zeros", device=, dtype=) as in
    torch.nn; what this library does not do is refused by name."""

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 6, dtype=torch.float64)
    for k, d in ((3, 1), (5, 2), ((3, 5), (2, 1)), (4, 2)):
        conv = Conv2d(3, 4, k, padding="same", dilation=d, dtype=torch.float64)
        assert conv.weight.dtype == torch.float64
        ref = F.conv2d(x, conv.weight, conv.bias, padding="same", dilation=d)
        assert ref.shape[2:] == x.shape[2:]
        assert rel_err(conv(x), ref) < 1e-12
    valid = Conv2d(3, 4, 3, 1, "valid", padding_mode="zeros", device="cpu")
    assert rel_err(valid(x.float()), F.conv2d(x.float(), valid.weight, valid.bias)) < 1e-6
    up = Upsampling(3, 2, 3, padding="same")
    assert up(x.float()).shape == (2, 2, 18, 12)
    assert nf.conv2d(2, 3, padding="same").init(None, (1, 3, 5, 7))[0] == (1, 2, 5, 7)
    for make, match in (
        (lambda: Conv2d(3, 4, 4, padding="same"), r"pad \(3, 3\) in all, one more on one side"),
        (lambda: Conv2d(3, 4, 3, 2, padding="same"), r"'same' needs stride 1"),
        (lambda: Conv2d(3, 4, 3, padding="full"), "padding must be 'same', 'valid' or ints"),
        (lambda: Conv2d(3, 4, 3, padding_mode="reflect"), "padding_mode='reflect' is not"),
        (lambda: TransposeConv2d(3, 4, 3, padding_mode="circular"), "padding_mode='circular'"),
        (lambda: Linear(3, 4, dtype=torch.int64), "dtype must be a floating-point"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            make()
    t = TransposeConv2d(3, 4, 3, 2, 1, 1, 1, True, 1, "zeros", None, torch.float64)
    lin = Linear(3, 4, True, "cpu", torch.float64)
    assert t.weight.dtype == lin.weight.dtype == lin.bias.dtype == torch.float64
    assert [g.dtype for _, g in t.param()] == [torch.float64] * 2


def test_losses_take_reduction_mean_and_sgd_torchs_default_lr():
    from n2nfunc import BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss

    pred, target = torch.randn(4, 3), torch.randn(4, 3)
    assert rel_err(MSE(reduction="mean").forward(pred, target), F.mse_loss(pred, target)) < 1e-6
    for loss in (MSE, L1Loss, HuberLoss, BCEWithLogitsLoss, CrossEntropyLoss):
        assert loss(reduction="mean").name == loss().name
        with pytest.raises(ValueError, match="reduction='sum' is not supported"):
            loss(reduction="sum")
    conv = Conv2d(2, 2, 1)
    x, ct = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    conv.forward(x)
    conv.backward(ct)
    w, g = (t.clone() for t in conv.param()[0])
    SGD(conv.param()).step()
    assert rel_err(conv.weight, w - 1e-3 * g) < 1e-6  # torch.optim.SGD's lr=1e-3


def test_optimizer_classes_step_nn_parameters_and_have_torchs_param_groups_and_state_dict():
    lin = torch.nn.Linear(3, 2)
    ours = Module(nf.dense(2), {"weight": lin.weight, "bias": lin.bias})
    theirs = torch.nn.Linear(3, 2)
    theirs.load_state_dict(lin.state_dict())
    opt, ref = Adam(ours.param(), lr=0.1), torch.optim.Adam(theirs.parameters(), lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    x, ct = torch.randn(4, 3), torch.randn(4, 2)
    for step in range(3):
        if step == 1:
            for group in (*opt.param_groups, *ref.param_groups):
                group["lr"] = 0.05
        opt.zero_grad()
        ours.forward(x)
        ours.backward(ct)
        ref.zero_grad()
        with torch.enable_grad():  # torch's default mode, where an in-place add to a
            theirs(x).backward(ct)  # leaf that requires grad raises
            opt.step()  # an nn.Parameter stepped in place, as torch.optim does under no_grad
        ref.step()
    assert opt.lr == 0.05 and lin.weight.requires_grad
    torch.testing.assert_close(lin.weight.detach(), theirs.weight.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"Adam: param_groups\[0\]\['betas'\] is fixed"):
        opt.param_groups[0]["betas"] = (0.5, 0.5)
    with pytest.raises(ValueError, match="Adam: lr must be a finite number >= 0, got -0.1"):
        opt.lr = -0.1
    with pytest.raises(ValueError, match="SGD: momentum must be a finite number >= 0"):
        SGD(ours.param(), 0.1, momentum=-1)


def test_optimizer_state_dict_round_trips_through_save_and_resumes_exactly(tmp_path):
    def run(opt_of, net, steps, state_dict=None):
        opt = opt_of(net)
        if state_dict is not None:
            opt.load_state_dict(state_dict)
        for _ in range(steps):
            opt.zero_grad()
            net.forward(torch.linspace(-1, 1, 12).view(4, 3))
            net.backward(torch.linspace(1, -2, 8).view(4, 2))
            opt.step()
        return opt

    def adam(net):
        return Adam(net.param(), lr=0.05)

    g = torch.Generator().manual_seed(0)
    straight = Module.from_layer(nf.dense(2), (-1, 3), generator=g)
    stopped = Module.from_layer(nf.dense(2), (-1, 3), generator=torch.Generator().manual_seed(0))
    run(adam, straight, 5)
    first = run(adam, stopped, 2)
    first.lr = 0.05
    nf.save(tmp_path / "opt.pth", first.state_dict())
    run(adam, stopped, 3, state_dict=nf.load(tmp_path / "opt.pth"))
    assert torch.equal(straight.state_dict()["weight"], stopped.state_dict()["weight"])
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: unexpected keys \['x'\]"):
        first.load_state_dict({"state": first.state, "x": 1})
    other = Module.from_layer(nf.dense(5), (-1, 3))
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: the state given: 'm.0' has sha"):
        Adam(other.param()).load_state_dict(first.state_dict())
    wide = Module.from_layer(nf.dense(2), (-1, 3)).to(dtype=torch.float64)
    cast = Adam(wide.param())  # a float32 state, cast to the float64 params' dtype, as torch
    cast.load_state_dict(first.state_dict())
    assert cast.state["m"][0].dtype == torch.float64
    assert torch.equal(cast.state["m"][0], first.state["m"][0].double())
    for key in ("m", "v"):  # loaded into one vector, as init makes it (no copy at each step)
        assert nf.tree.raveled(cast.state[key]) is not None
    with pytest.raises(ValueError, match="Adam.load_state_dict: Adam: lr must be a finite"):
        cast.load_state_dict({"state": first.state, "lr": -1.0})


def test_param_groups_lr_is_a_float_and_the_fixed_entries_stay_fixed(tmp_path):
    import numpy as np

    opt = Adam(Module.from_layer(nf.dense(2), (-1, 3)).param(), lr=np.float32(0.5))
    assert type(opt.lr) is float and opt.lr == 0.5
    nf.save(tmp_path / "opt.pth", opt.state_dict())  # (a NumPy lr could not be saved)
    opt.param_groups[0].update(lr=0.25)
    assert opt.lr == 0.25
    with pytest.raises(ValueError, match=r"Adam: param_groups\[0\]\['betas'\] is fixed"):
        opt.param_groups[0].update(betas=(0.0, 0.0))
    with pytest.raises(ValueError, match=r"Adam: lr must be a finite number >= 0"):
        opt.param_groups[0].update(lr=-1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\] cannot be removed"):
        opt.param_groups[0].pop("lr")
    assert opt.lr == 0.25


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: ReLU(inplace=True), r"ReLU: inplace=True is not supported \(only False"),
        (lambda: LeakyReLU(0.1, True), r"LeakyReLU: inplace=True is not supported"),
        (lambda: ELU(1.0, inplace=True), r"ELU: inplace=True"),
        (lambda: MaxPool2d(2, ceil_mode=True), r"MaxPool2d: ceil_mode=True is not supported"),
        (lambda: MaxPool2d(2, dilation=2), r"MaxPool2d: dilation=2 is not supported \(only 1"),
        (lambda: MaxPool2d(2, return_indices=True), r"MaxPool2d: return_indices=True"),
        (lambda: AvgPool2d(2, count_include_pad=False), r"AvgPool2d: count_include_pad=False"),
        (lambda: AvgPool2d(2, divisor_override=3), r"AvgPool2d: divisor_override=3 is not"),
        (lambda: BatchNorm2d(4, affine=False), r"BatchNorm2d: affine=False is not supported"),
        (lambda: BatchNorm2d(4, track_running_stats=False), r"track_running_stats=False"),
        (lambda: Dropout(0.5, True), r"Dropout: inplace=True is not supported \(only False"),
    ],
)
def test_torch_arguments_other_than_their_defaults_are_refused_by_name(make, pattern):
    """Student code passes torch.nn's other arguments (ReLU(inplace=True), MaxPool2d(...,
    ceil_mode=...)): these were a bare TypeError; an ignored one would be a wrong result."""
    with pytest.raises(ValueError, match=pattern):
        make()


def test_torch_arguments_at_their_defaults_build_the_same_blocks():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    pairs = [
        (ReLU(inplace=False), torch.nn.ReLU()),
        (LeakyReLU(0.2, inplace=False), torch.nn.LeakyReLU(0.2)),
        (MaxPool2d(2, None, 0, (1, 1), False, False), torch.nn.MaxPool2d(2)),
        (AvgPool2d(3, 1, 1, False, True, None), torch.nn.AvgPool2d(3, 1, 1)),
    ]
    for ours, theirs in pairs:
        assert torch.equal(ours(x), theirs(x))
    bn = BatchNorm2d(4, affine=True, track_running_stats=True, dtype=torch.float64)
    assert bn.weight.dtype == bn.running_mean.dtype == torch.float64
    torch.testing.assert_close(bn(x), torch.nn.BatchNorm2d(4).double()(x))


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: nf.Linear(3, 0), r"^Linear: dense\(out_features=0, bias=True\): out_features"),
        (lambda: nf.Conv2d(3, 4, 0), r"^Conv2d: conv2d\(.*kernel_size must be >= 1"),
        (lambda: nf.TransposeConv2d(3, 4, 3, output_padding=5), r"^TransposeConv2d: conv_tr"),
        (lambda: nf.MaxPool2d(0), r"^MaxPool2d: max_pool2d\(kernel_size=0"),
        (lambda: nf.Dropout(2), r"^Dropout: dropout: p must be"),
        (lambda: nf.LeakyReLU(float("nan")), r"^LeakyReLU: leaky_relu\(negative_slope=nan\)"),
        (lambda: nf.BatchNorm2d(0), r"^BatchNorm2d: num_features"),  # named once, not twice
    ],
)
def test_a_blocks_constructor_errors_start_with_the_blocks_name(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


class _Residual(Module):
    """A block of the course's kind: its own forward, backward(*grad) and param()."""

    def __init__(self):
        super().__init__(nf.identity(), {})
        self.inner = Linear(3, 3, generator=torch.Generator().manual_seed(5))

    def forward(self, x):
        return x + self.inner(x)

    def backward(self, *grad):
        return grad[0] + self.inner.backward(grad[0])

    def param(self):
        return self.inner.param()


def test_a_block_of_your_own_inside_sequential_is_trained_and_zeroed():
    """Its param() was not in the Sequential's (never trained, no error), and its
    backward(*grad) got an input_grad keyword it does not take."""
    res, head = _Residual(), Linear(3, 1, generator=torch.Generator().manual_seed(6))
    seq = Sequential(res, head)
    assert [p for p, _ in seq.param()] == [p for p, _ in res.param() + head.param()]
    x = torch.randn(4, 3)
    before = res.inner.weight.clone()
    opt = SGD(seq.param(), lr=0.1)
    y = seq(x)
    seq.backward(torch.randn_like(y))
    assert float(res.inner.param()[0][1].abs().sum()) > 0
    opt.step()
    assert not torch.equal(res.inner.weight, before)
    seq.zero_grad()
    assert all(float(g.abs().sum()) == 0 for _, g in res.param() + head.param())


def test_a_block_of_your_own_is_moved_saved_and_switched_like_a_torch_module():
    """Its sub-blocks (attributes) were trained through param() but not moved by to(),
    saved by state_dict() or switched by eval()."""
    seq = Sequential(_Residual(), Linear(3, 1))
    inner = seq[0].inner
    assert inner in list(seq.modules())
    seq.double()
    assert inner.weight.dtype == torch.float64
    y = seq(torch.randn(2, 3, dtype=torch.float64))
    assert y.dtype == torch.float64
    keys = list(seq.state_dict())
    assert keys == ["0.inner.weight", "0.inner.bias", "1.weight", "1.bias"]
    other = Sequential(_Residual(), Linear(3, 1)).double()
    other.load_state_dict(seq.state_dict())
    assert torch.equal(other[0].inner.weight, inner.weight)
    seq.eval()
    assert not inner.training

    class Plain(_Residual):  # without a param() of its own: its sub-blocks' are found too
        param = Module.param

    plain = Plain()
    assert [p for p, _ in plain.param()] == [p for p, _ in plain.inner.param()]


def test_a_course_style_backward_with_a_required_input_grad_still_works():
    class Double(Module):
        def __init__(self):
            super().__init__(nf.identity(), {})

        def forward(self, x):
            return x * 2

        def backward(self, g, input_grad):  # no default: it was always passed
            return g * 2

    seq = Sequential(Linear(3, 3), Double())
    y = seq(torch.randn(2, 3))
    assert seq.backward(torch.ones_like(y)).shape == (2, 3)


def test_a_bug_in_a_blocks_constructor_keeps_its_traceback():
    import traceback

    class Broken(Module):
        def __init__(self):
            super().__init__(nf.identity(), {})
            missing = None
            missing(3)  # the line the traceback must show

    with pytest.raises(TypeError, match="^Broken: 'NoneType' object is not callable") as info:
        Broken()
    assert "missing(3)" in "".join(traceback.format_tb(info.value.__traceback__))


def test_parameters_that_require_grad_keep_a_block_free_of_autograd():
    """A torch.nn state_dict(keep_vars=True) loaded, or an nn.Parameter assigned, had made
    the weights non-leaves and every forward record a graph (deepcopy then failed)."""
    import copy

    twin, ours = torch.nn.Linear(3, 2), Linear(3, 2)
    ours.load_state_dict(dict(twin.named_parameters()))
    assert ours.weight.is_leaf and not ours.weight.requires_grad
    assert torch.equal(ours.weight, twin.weight.detach())
    copy.deepcopy(ours)
    ours.weight = torch.nn.Parameter(torch.randn(2, 3))
    with torch.enable_grad():
        y = ours(torch.randn(4, 3))
    assert not y.requires_grad
    with torch.no_grad():  # an in-place change between forward and backward is still seen
        ours.weight.mul_(2)
    with pytest.raises(RuntimeError, match="changed in place"):
        ours.backward(torch.randn(4, 2))


def test_to_takes_torchs_forms_and_refuses_a_non_float_dtype():
    block = Conv2d(3, 4, 3)
    assert block.to(torch.float64).weight.dtype == torch.float64
    assert block.float().weight.dtype == torch.float32
    assert block.double().bias.dtype == torch.float64
    assert block.to(torch.zeros(1, dtype=torch.float32)).weight.dtype == torch.float32
    assert block.to("cpu", torch.float64).cpu().weight.dtype == torch.float64
    seq = Sequential(Conv2d(3, 4, 3), ReLU())
    assert seq.to(torch.float64)[0].weight.dtype == torch.float64
    assert block.to(torch.float32, False).to(memory_format=torch.channels_last) is block
    assert block.weight.dtype == torch.float32  # (non_blocking positional, a memory format)
    block.double()
    with pytest.raises(TypeError, match=r"Conv2d.to: the dtype must be a floating-point one"):
        block.to(dtype=torch.int64)
    assert block.weight.dtype == torch.float64  # nothing moved


def test_sequential_slices_modules_and_repr_as_torch():
    inner = Sequential(Conv2d(3, 4, 3), ReLU())
    seq = Sequential(inner, NearestUpsampling(2), Sigmoid())
    head = seq[0:2]
    assert isinstance(head, Sequential) and len(head) == 2 and head[0] is inner
    x = torch.randn(1, 3, 6, 6)
    assert torch.equal(head(x), F.interpolate(inner(x), scale_factor=2))
    assert [type(m).__name__ for m in seq.modules()] == [
        "Sequential",
        "Sequential",
        "Conv2d",
        "ReLU",
        "NearestUpsampling",
        "Sigmoid",
    ]
    lines = repr(seq).splitlines()
    assert lines[1] == "  Sequential(" and lines[2].startswith("    Conv2d(") and lines[4] == "  ),"
    assert "NearestUpsampling(scale_factor=2)" in repr(seq)
    assert repr(MSE()) == "MSE()" and repr(SGD(seq, lr=0.5)).startswith("SGD(2 parameters, lr=0.5")


def test_torchs_zero_grad_and_strict_keywords():
    block = Linear(3, 2)
    block.zero_grad(set_to_none=True)
    SGD(block, lr=0.1).zero_grad(set_to_none=False)
    assert all(isinstance(g, torch.Tensor) for _, g in block.param())
    twin = torch.nn.Linear(3, 2)
    keys = block.load_state_dict({"weight": twin.weight, "extra": torch.zeros(1)}, strict=False)
    assert keys.missing_keys == ["bias"] and keys.unexpected_keys == ["extra"]
    assert torch.equal(block.weight, twin.weight.detach())
    assert block.load_state_dict(twin.state_dict()) == ([], [])
    with pytest.raises(KeyError, match="missing keys"):
        block.load_state_dict({"weight": twin.weight})
    for bad in ({"weight": twin.weight}, {"weight": twin.weight, "bias": torch.zeros(5)}):
        with pytest.raises(RuntimeError, match="load_state_dict"):  # as torch's, for a grader
            block.load_state_dict(bad)
    with pytest.raises(TypeError, match="strict must be True or False"):
        block.load_state_dict(twin.state_dict(), strict="no")


def test_param_groups_cannot_be_changed_behind_the_optimizers_back():
    opt = SGD(Linear(3, 2), lr=0.1)
    group = opt.param_groups[0]
    with pytest.raises(ValueError, match=r"\['momentum'\] is fixed at construction"):
        group |= {"lr": 0.5, "momentum": 0.7}
    assert opt.param_groups[0]["lr"] == 0.1  # nothing set when one entry is refused
    group |= {"lr": 0.05}
    assert opt.param_groups[0]["lr"] == 0.05
    for change in (group.clear, group.popitem):
        with pytest.raises(ValueError, match="cannot be removed"):
            change()
    assert group.setdefault("initial_lr", 0.05) == 0.05  # what torch's schedulers do
    assert group.setdefault("lr", 1.0) == 0.05


@pytest.mark.parametrize(
    "ours,theirs,options",
    [
        (
            lambda: nf.Conv2d(3, 4, (3, 2), stride=2, padding=1),
            lambda: torch.nn.Conv2d(3, 4, (3, 2), stride=2, padding=1),
            ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"],
        ),
        (
            lambda: nf.Conv2d(3, 4, 3, padding="same"),
            lambda: torch.nn.Conv2d(3, 4, 3, padding="same"),
            ["kernel_size", "padding"],
        ),
        (
            lambda: nf.TransposeConv2d(3, 4, 4, stride=2, padding=1, output_padding=1),
            lambda: torch.nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1, output_padding=1),
            ["in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding"],
        ),
        (lambda: nf.Linear(5, 2), lambda: torch.nn.Linear(5, 2), ["in_features", "out_features"]),
        (lambda: nf.MaxPool2d(3), lambda: torch.nn.MaxPool2d(3), ["kernel_size", "stride"]),
        (lambda: nf.AvgPool2d(2, 1, 1), lambda: torch.nn.AvgPool2d(2, 1, 1), ["stride", "padding"]),
        (lambda: nf.Dropout(0.3), lambda: torch.nn.Dropout(0.3), ["p"]),
        (
            lambda: nf.BatchNorm2d(3, eps=1e-3, momentum=None),
            lambda: torch.nn.BatchNorm2d(3, eps=1e-3, momentum=None),
            ["num_features", "eps", "momentum"],
        ),
        (lambda: nf.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2), ["negative_slope"]),
        (
            lambda: nf.Softplus(2.0, 10.0),
            lambda: torch.nn.Softplus(2.0, 10.0),
            ["beta", "threshold"],
        ),
        (lambda: nf.Softmax(1), lambda: torch.nn.Softmax(1), ["dim"]),
        (
            lambda: nf.NearestUpsampling(size=(4, 6)),
            lambda: torch.nn.UpsamplingNearest2d(size=(4, 6)),
            ["size", "scale_factor"],
        ),
    ],
)
def test_options_read_as_torch_nn_and_an_assignment_is_refused(ours, theirs, options):
    """A block's options read as torch.nn's; assigning one, which torch.nn would honour but
    the block's layer (built from them) would ignore, is refused by name."""
    block, ref = ours(), theirs()
    for option in options:
        assert getattr(block, option) == getattr(ref, option), option
        with pytest.raises(AttributeError, match=rf"{type(block).__name__}: {option} is fixed"):
            setattr(block, option, 0)
        assert getattr(block, option) == getattr(ref, option), option
    block.note = "a user's own attribute"  # other names stay free
    assert block.note == "a user's own attribute"
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        _ = block.nothing_here


def test_a_subclass_may_set_an_option_to_the_value_it_has():
    """torch-style subclasses set their options again in __init__ (``self.p = p``); the same
    value is no change, another is refused naming the library block it builds on."""

    class MyDropout(nf.Dropout):
        def __init__(self, p):
            super().__init__(p)
            self.p = p

    class MyConv(nf.Conv2d):
        def __init__(self):
            super().__init__(3, 4, 3, stride=2, padding=1)
            self.stride, self.padding = 2, (1, 1)

    assert MyDropout(0.3).p == 0.3 and MyConv().stride == (2, 2)
    with pytest.raises(
        AttributeError, match=r"MyDropout: p is fixed .* build a new Dropout with p=0.5 \(or call"
    ):
        MyDropout(0.3).p = 0.5
    assert not hasattr(nf.Upsampling(3, 4, 3), "stride")  # (it has none to build with)
    d = nf.Dropout(0.5)
    d.train()(torch.ones(8))
    d.rng = d.rng  # given back as it was: masks still drawn from torch's global generator
    torch.manual_seed(9)
    a = d(torch.ones(64))
    torch.manual_seed(9)
    assert torch.equal(d(torch.ones(64)), a)


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 20, 9, 8)])  # im2col copy; batch-1 order
def test_a_blocks_input_changed_in_place_before_backward_is_refused(shape):
    """As the functional pullback and autograd: the block watches the caller's own input,
    not a detached stand-in that dies when the engine keeps a copy of what it needs."""
    block = Conv2d(shape[1], 4, 3, padding=1)
    x = torch.randn(shape)
    y = block(x)
    x.mul_(2)
    with pytest.raises(RuntimeError, match=r"its input \(shape"):
        block.backward(torch.randn_like(y))


def test_loss_and_flatten_blocks_take_torchs_arguments_in_its_order():
    """HuberLoss took delta first (torch: reduction, delta); BCEWithLogitsLoss(None),
    CrossEntropyLoss(ignore_index=-100) and Flatten(1), torch's defaults, were refused by
    Python with unexpected-argument errors."""
    pred, target = torch.randn(4, 3), torch.randn(4, 3)
    ours = nf.HuberLoss("mean", 0.5).forward(pred, target)
    assert torch.allclose(ours, torch.nn.HuberLoss("mean", 0.5)(pred, target))
    with pytest.raises(TypeError, match=r"delta is the second argument.*HuberLoss\(delta=0.5\)"):
        nf.HuberLoss(0.5)
    with pytest.raises(ValueError, match=r"HuberLoss: reduction='sum' is not supported"):
        nf.HuberLoss("sum")
    nf.BCEWithLogitsLoss(None, pos_weight=None)
    nf.CrossEntropyLoss(None, ignore_index=-100)
    assert nf.Flatten(1, -1).forward(torch.randn(2, 3, 4, 5)).shape == (2, 60)
    for call, said in (
        (lambda: nf.BCEWithLogitsLoss(pos_weight=torch.ones(3)), "pos_weight=tensor"),
        (lambda: nf.BCEWithLogitsLoss(torch.ones(3)), "weight=tensor"),
        (lambda: nf.CrossEntropyLoss(ignore_index=0), "ignore_index=0 is not supported"),
        (lambda: nf.Flatten(0), "start_dim=0 is not supported"),
        (lambda: nf.Flatten(end_dim=2), "end_dim=2 is not supported"),
    ):
        with pytest.raises(ValueError, match=said):
            call()


def test_unet_block_takes_the_functional_unets_channels_and_a_keyword_generator():
    g = torch.Generator().manual_seed(0)
    block = nf.UNet(2, (8, 8, 8, 8), 1, 2, generator=g)
    assert block.forward(torch.rand(1, 1, 9, 9)).shape == (1, 2, 9, 9)
    assert repr(block) == "UNet(depth=2, widths=(8, 8, 8, 8), in_channels=1, out_channels=2)"
    _, params = nf.unet(2, (8, 8, 8, 8), 1, 2).init(
        torch.Generator().manual_seed(0), (-1, 1, -1, -1)
    )
    assert all(
        torch.equal(a, b) for a, b in zip(nf.tree.leaves(params), nf.tree.leaves(block.params))
    )
    with pytest.raises(TypeError, match="in_channels must be a positive int"):
        nf.UNet(2, (8, 8, 8, 8), torch.Generator())  # the generator is keyword-only


def test_adaptive_avg_pool_only_to_one_pixel():
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: only output_size=1 is provided"):
        nf.AdaptiveAvgPool2d(2)
    assert repr(nf.AdaptiveAvgPool2d(1)) == repr(torch.nn.AdaptiveAvgPool2d(1))


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"scale_factor": 2, "mode": "bicubic"}, r"Upsample: mode='bicubic' is not provided"),
        ({}, r"Upsample: give size or scale_factor"),
        ({"scale_factor": 2, "align_corners": True}, r"align_corners can only be set"),
        ({"scale_factor": 2, "recompute_scale_factor": True}, r"recompute_scale_factor=True"),
    ],
)
def test_upsample_refuses_what_it_does_not_provide(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        nf.Upsample(**kwargs)


def test_upsample_and_adaptive_pool_refuse_values_torch_refuses():
    for bad in ("False", "no", 0.0):
        with pytest.raises(TypeError, match=r"align_corners must be True or False"):
            nf.Upsample(scale_factor=2, mode="bilinear", align_corners=bad)
    for bad, error in (((1.0, 1), TypeError), ((True, 1), TypeError), ("1", TypeError)):
        with pytest.raises(error, match=r"AdaptiveAvgPool2d: only output_size=1"):
            nf.AdaptiveAvgPool2d(bad)
    for bad in ((1, 1, 1), 2, (2, 1)):  # ints of other values: ValueError
        with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d: only output_size=1"):
            nf.AdaptiveAvgPool2d(bad)
    with pytest.raises(TypeError, match=r"gelu: approximate must be 'none' or 'tanh'"):
        nf.GELU(approximate=True)
    assert repr(nf.SiLU()) == repr(torch.nn.SiLU()) and repr(nf.ReLU()) == "ReLU()"
    assert repr(nf.MSELoss(None, None, "mean")) == "MSELoss()"  # torch's positional form
    with pytest.raises(ValueError, match=r"L1Loss: size_average=True is not supported"):
        nf.L1Loss(True)
    with pytest.raises(ValueError, match=r"x\.unsqueeze\(0\) makes it a batch of one"):
        nf.PixelShuffle(2).forward(torch.randn(8, 4, 4))
    assert nf.Upsample(scale_factor=2, recompute_scale_factor=False).mode == "nearest"
    for kw in ({"scale_factor": 2}, {"scale_factor": (2, 3), "mode": "bilinear"}, {"size": 5}):
        assert repr(nf.Upsample(**kw)) == repr(torch.nn.Upsample(**kw))
        assert nf.Upsample(**kw).scale_factor == torch.nn.Upsample(**kw).scale_factor


def test_torch_names_for_ported_code():
    """ConvTranspose2d and MSELoss are the exercise's TransposeConv2d and MSE under torch's
    names: torch's weights load into them and they compute what torch's do."""
    torch.manual_seed(0)
    ours = nf.ConvTranspose2d(4, 6, 3, 2, 1, 1)
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose2d(4, 6, 3, 2, 1, 1)
    assert isinstance(ours, nf.TransposeConv2d) and torch.equal(ours.weight, theirs.weight)
    x, y = torch.randn(2, 4, 5, 5), torch.randn(2, 6, 10, 10)
    loss, loss_ref = nf.MSELoss(), torch.nn.MSELoss()
    xr = x.clone().requires_grad_()
    with torch.enable_grad():
        value_ref = loss_ref(theirs(xr), y)
        value_ref.backward()
    value = loss.forward(ours.forward(x), y)
    dx = ours.backward(loss.backward())
    assert rel_err(value, value_ref.detach()) < 1e-6 and rel_err(dx, xr.grad) < 1e-5
    assert repr(loss) == repr(loss_ref) == "MSELoss()"


def test_sequential_keeps_its_blocks_gradients_in_one_vector():
    """Made, a Sequential moves its blocks' gradient buffers into one vector (the same
    tensors and values), so that an optimizer's update runs once on it; the parameters stay
    where they are, and the blocks compute as before."""
    torch.manual_seed(0)
    blocks = [Conv2d(3, 4, 3, padding=1), ReLU(), Conv2d(4, 2, 3, padding=1)]
    before = [(p, p.clone(), g) for b in blocks for p, g in b.param()]
    x = torch.randn(2, 3, 5, 5)
    y_apart = blocks[2].forward(blocks[1].forward(blocks[0].forward(x)))
    net = Sequential(*blocks)
    pairs = net.param()
    assert [p for p, _ in pairs] == [p for p, _, _ in before]  # the same objects
    assert all(g is g0 for (_, g), (_, _, g0) in zip(pairs, before))
    assert all(torch.equal(p, value) for p, value, _ in before)
    assert tree.raveled([g for _, g in pairs]) is not None
    assert torch.equal(net.forward(x), y_apart)
    shared = Conv2d(4, 4, 1)  # a block used twice: param() lists its pairs once
    twice = Sequential(Conv2d(3, 4, 1), shared, shared)
    assert tree.raveled([g for _, g in twice.param()]) is not None
    with torch.inference_mode():  # gradient buffers that set_ refuses: left where they are
        made_there = Conv2d(3, 4, 1)
    assert tree.raveled([g for _, g in Sequential(made_there, Conv2d(4, 2, 1)).param()]) is None
