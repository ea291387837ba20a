"""Mixed precision (bfloat16 compute, float32 outside): the functional wrapper and Model."""

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err, set_in_kernels

import n2nfunc as nf
from n2nfunc import checkpoint, hardware
from n2nfunc.data import make_pairs
from n2nfunc.model import DEFAULT_CONFIG, Model, build_network

BF16_TOL = 3e-2  # a few bfloat16 ulps (2^-8) after sums of hundreds of products


def norm_err(a, b):
    """||a - b|| / ||b||: through a whole network a ReLU whose input is within rounding of 0
    may switch, so single elements can differ a lot while the gradient as a whole agrees."""
    return float((a - b).norm() / b.norm())


def default_net(widths=(16, 16)):
    """The default architecture (stride-2 convs, stride-2 transposed convs, kernel 4)."""
    return build_network({**DEFAULT_CONFIG, "widths": widths}, torch.Generator().manual_seed(0))


def torch_twin(net, k=4):
    """The same network in torch.nn with the same weights (default architecture)."""
    (w1, c), w2 = net[0].weight.shape[:2], net[2].weight.shape[0]
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(c, w1, k, 2, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(w1, w2, k, 2, 1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(w2, w1, k, 2, 1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(w1, c, k, 2, 1),
        torch.nn.Sigmoid(),
    )
    for p, v in zip(twin.parameters(), net.state_dict().values()):
        p.copy_(v)
    return twin


def test_whole_network_errors_are_those_of_torch_autocast():
    """bfloat16 vs float32 on the default network: our error is the size of torch.autocast's
    (same policy), and params are left untouched."""
    net = default_net()
    layer, params = net.layer, net.params
    before = [p.clone() for p in nf.tree.leaves(params)]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 20, 12, generator=g)
    ct = torch.randn(3, 3, 20, 12, generator=g)
    y32, pb32 = layer.vjp(params, x)
    grads32, dx32 = pb32(ct)
    mp = nf.mixed_precision(layer, "bfloat16")
    y16, pb16 = mp.vjp(params, x)
    grads16, dx16 = pb16(ct)
    y_ac, dx_ac, *grads_ac = autocast_vjp(torch_twin(net), x, ct)
    pairs = [(y16, y_ac, y32), (dx16, dx_ac, dx32)]
    pairs += list(zip(nf.tree.leaves(grads16), grads_ac, nf.tree.leaves(grads32)))
    for ours, theirs, exact in pairs:
        assert ours.dtype == torch.float32 and ours.shape == exact.shape
        assert norm_err(ours, exact) <= 1.5 * norm_err(theirs, exact) + 2e-3
        assert norm_err(ours, exact) < 0.1
    for p, b in zip(nf.tree.leaves(params), before):
        assert p.dtype == torch.float32 and torch.equal(p, b)
    assert torch.equal(mp.apply(params, x), y16)


def autocast_vjp(twin, x, ct):
    """Output and gradients wrt the input and every parameter of ``twin`` under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    with torch.enable_grad():
        xr = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = twin(xr).float()
        return (y.detach(), *torch.autograd.grad(y, [xr, *twin.parameters()], ct))


def test_skipping_the_input_gradient_passes_through():
    net = default_net((8, 8))
    mp = nf.mixed_precision(net.layer)
    x = torch.rand(2, 3, 8, 8)
    _, pb = mp.vjp(net.params, x)
    grads, dx = nf.pull(mp.vjp, pb, torch.randn(2, 3, 8, 8), input_grad=False)
    assert dx is None and all(g.dtype == torch.float32 for g in nf.tree.leaves(grads))


LAYER_CASES = {
    # the default network's convolutions: few channels, the im2col matrix kept
    "conv k4 s2": (
        nf.conv2d(6, 4, stride=2, padding=1),
        5,
        lambda x, w, b: F.conv2d(x, w, b, 2, 1),
    ),
    "transposed k4 s2": (
        nf.conv_transpose2d(6, 4, stride=2, padding=1),
        5,
        lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1),
    ),
    "transposed to 1 channel": (  # 4 phases x 1 channel: a thin matmul, run transposed
        nf.conv_transpose2d(1, 4, stride=2, padding=1),
        5,
        lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1),
    ),
    # U-Net convolutions: wide (shifted-view weight gradient: row taps when O >= C, else one
    # tap per kernel element), thin output, dilated (im2col)
    "conv 3x3 wide": (nf.conv2d(17, 3, padding=1), 16, lambda x, w, b: F.conv2d(x, w, b, 1, 1)),
    "conv 3x3 wide in": (nf.conv2d(9, 3, padding=1), 20, lambda x, w, b: F.conv2d(x, w, b, 1, 1)),
    "conv 3x3 thin": (nf.conv2d(3, 3, padding=1), 24, lambda x, w, b: F.conv2d(x, w, b, 1, 1)),
    "conv 1x3": (
        nf.conv2d(9, (1, 3), padding=(0, 1)),
        12,
        lambda x, w, b: F.conv2d(x, w, b, 1, (0, 1)),
    ),
    "conv 1x1": (nf.conv2d(20, 1), 12, lambda x, w, b: F.conv2d(x, w, b)),
    "conv dilated": (
        nf.conv2d(16, 3, padding=2, dilation=2),
        16,
        lambda x, w, b: F.conv2d(x, w, b, 1, 2, 2),
    ),
    "upsample": (  # bfloat16: the transposed convolution of the combined kernel
        nf.upsample(5, 3, 2, padding=1),
        4,
        lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=2), w, b, 1, 1),
    ),
    "upsample dilated, two scales": (
        nf.upsample(5, 3, (2, 3), padding=(1, 0), dilation=(1, 2)),
        4,
        lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=(2, 3)), w, b, 1, (1, 0), (1, 2)),
    ),
    "upsample padded past its kernel": (  # padding 3 > k - 1: the polyphase backward
        nf.upsample(5, 3, 2, padding=3),
        4,
        lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=2), w, b, 1, 3),
    ),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_conv_layers_agree_with_torch_autocast(case):
    """Same policy as torch.autocast on the CPU: bfloat16 operands, float32 accumulation."""
    layer, channels, ref = LAYER_CASES[case]
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, channels, 11, 9, generator=g)
    _, params = layer.init(g, x.shape)
    y, pb = nf.mixed_precision(layer).vjp(params, x)
    ct = torch.randn(y.shape, generator=g)
    grads, dx = pb(ct)

    def autocast_ref(x, w, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ref(x, w, b).float()

    y_ref, (dx_ref, dw_ref, db_ref) = autograd_vjp(
        autocast_ref, [x, params["weight"], params["bias"]], ct
    )
    assert rel_err(y, y_ref) < BF16_TOL
    assert rel_err(nf.mixed_precision(layer).apply(params, x), y_ref) < BF16_TOL  # blocked
    assert rel_err(dx, dx_ref) < BF16_TOL
    assert rel_err(grads["weight"], dw_ref) < BF16_TOL
    assert rel_err(grads["bias"], db_ref) < BF16_TOL


def test_float64_and_unknown_precisions_are_refused():
    net = default_net((8, 8))
    mp = nf.mixed_precision(net.layer, "bfloat16")
    with pytest.raises(
        TypeError, match=r"mixed_precision\(bfloat16\): input must be float32.*float64"
    ):
        mp.apply(net.params, torch.rand(1, 3, 8, 8, dtype=torch.float64))
    params64 = nf.tree.map(lambda t: t.double(), net.params)
    with pytest.raises(TypeError, match="params must be float32"):
        mp.vjp(params64, torch.rand(1, 3, 8, 8))
    params16 = nf.tree.map(lambda t: t.bfloat16(), net.params)
    with pytest.raises(TypeError, match="got torch.bfloat16 .*keep the float32 master copy"):
        mp.apply(params16, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="precision must be one of"):
        nf.mixed_precision(net.layer, "float16")
    with pytest.raises(ValueError, match=r"\(or those torch dtypes\), got torch.float16"):
        nf.mixed_precision(net.layer, torch.float16)
    assert nf.mixed_precision(net.layer, torch.float32) is net.layer  # a dtype names it too
    x = torch.rand(1, 3, 8, 8)
    by_dtype = nf.mixed_precision(net.layer, torch.bfloat16).apply(net.params, x)
    assert torch.equal(by_dtype, nf.mixed_precision(net.layer, "bfloat16").apply(net.params, x))
    with pytest.raises(TypeError, match="expected a Layer"):
        nf.mixed_precision(net, "bfloat16")
    assert nf.mixed_precision(net.layer, "float32") is net.layer


def test_model_trains_in_bfloat16_with_float32_weights(tmp_path):
    xt, yt = make_pairs(128, "train", seed=0)
    config = {"widths": (8, 8), "batch_size": 16, "warmup_steps": 2, "precision": "bfloat16"}
    m16, m32 = Model(config), Model({**config, "precision": "float32"})
    losses16 = m16.train(xt, yt, num_epochs=2)
    losses32 = m32.train(xt, yt, num_epochs=2)
    assert all(p.dtype == torch.float32 for p in m16.net.state_dict().values())
    assert all(
        s.dtype == torch.float32
        for s in nf.tree.leaves(m16.optimizer.state)
        if isinstance(s, torch.Tensor)
    )
    assert abs(losses16[-1] - losses32[-1]) < 0.05 * losses32[-1]
    assert losses16[-1] < losses16[0]
    y = m16.predict(xt[:4])
    assert y.dtype == torch.float32 and y.shape == xt[:4].shape
    assert rel_err(y, m16.net.layer.apply(m16.net.params, xt[:4].float() / 255) * 255) < BF16_TOL
    m16.save(tmp_path / "m.pth")
    payload = checkpoint.load(tmp_path / "m.pth")
    assert payload["config"]["precision"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in payload["params"].values())
    fresh = Model({"widths": (8, 8)})  # a float32 model loads bfloat16-trained weights
    fresh.load_pretrained_model(tmp_path / "m.pth")
    assert torch.equal(fresh.net.state_dict()["0.weight"], m16.net.state_dict()["0.weight"])


def test_model_precision_errors():
    with pytest.raises(ValueError, match="Model: precision must be one of"):
        Model({"precision": "fp8"})
    m = Model({"widths": (8, 8), "precision": "bfloat16"})
    with pytest.raises(ValueError, match="precision 'bfloat16'.*float64"):
        m.predict(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    assert Model().config["precision"] == "float32"


def test_wrappers_never_switch_precision():
    conv = nf.Conv2d(3, 4, 3)
    assert conv.forward(torch.rand(1, 3, 5, 5)).dtype == torch.float32


def test_hardware_report():
    assert isinstance(hardware.native_bfloat16("cpu"), bool)
    problem = hardware.bfloat16_problem("cpu")
    assert (problem is None) == hardware.native_bfloat16("cpu")
    assert hardware.describe().startswith("CPU ")


@pytest.mark.parametrize(
    "kernel,scale,padding,n,hw,bias",
    [
        (3, 2, 1, 2, (7, 5), True),
        (1, (1, 2), 0, 1, (4, 3), False),  # kernel 1, scale 1 along y, batch 1, no bias
        (3, 3, 2, 1, (5, 6), True),
    ],
)
def test_bfloat16_upsample_is_one_transposed_convolution(
    monkeypatch, kernel, scale, padding, n, hw, bias
):
    """In bfloat16 ``upsample``'s backward pass is the strided convolution adjoint to one
    transposed convolution (no col2im of rounded products): same gradients as float64 within
    bfloat16 rounding, with or without the input gradient."""

    def refuse(*args, **kwargs):
        raise AssertionError("polyphase_backward used in bfloat16")

    layer = nf.upsample(6, kernel, scale, padding=padding, bias=bias)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(n, 4, *hw, generator=g, dtype=torch.float64)
    _, params = layer.init(g, x.shape)
    params = {k: v.double() for k, v in params.items()}
    y64, pb64 = layer.vjp(params, x)
    ct = torch.randn(y64.shape, generator=g, dtype=torch.float64)
    grads64, dx64 = pb64(ct)
    set_in_kernels(monkeypatch, "polyphase_backward", refuse)
    low = {k: v.to(torch.bfloat16) for k, v in params.items()}
    y, pb = layer.vjp(low, x.to(torch.bfloat16))
    grads, dx = pb(ct.to(torch.bfloat16))
    assert rel_err(y.double(), y64) < BF16_TOL and rel_err(dx.double(), dx64) < BF16_TOL
    for key in grads64:
        assert rel_err(grads[key].double(), grads64[key]) < BF16_TOL
    grads_only, none = layer.vjp(low, x.to(torch.bfloat16))[1](ct.to(torch.bfloat16), False)
    assert none is None and torch.equal(grads_only["weight"], grads["weight"])


def test_bfloat16_upsample_padded_past_its_kernel_sums_dx_in_float32():
    """Padding above ``d (k - 1)`` takes ``polyphase_backward`` in bfloat16 too: its input
    gradient's column products and col2im sums run in float32 on the exactly combined kernel,
    rounded once. Summed rounded bfloat16 products had lost a third of dx where the window
    offsets' terms cancel (a zero-sum kernel and a smooth cotangent: 0.33 of max |dx| against
    autocast's 0.002)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 4, 3, 3, generator=g)
    w -= w.mean((2, 3), keepdim=True)  # an edge detector: its taps cancel on smooth inputs
    x = torch.randn(2, 4, 12, 12, generator=g)
    y, pb = nf.mixed_precision(nf.upsample(4, 3, 2, padding=3, bias=False)).vjp({"weight": w}, x)
    ct = torch.randn(2, 4, 1, 1, generator=g) + 0.01 * torch.randn(y.shape, generator=g)
    dx = pb(ct)[1]

    def dx_of(x, w, ct, autocast):
        x = x.clone().requires_grad_()
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = F.conv2d(F.interpolate(x, scale_factor=2), w, None, 1, 3)
            return torch.autograd.grad(y, x, ct)[0].double()

    rounded = [t.bfloat16().double() for t in (x, w, ct)]
    exact = dx_of(*rounded, autocast=False)  # float64 on the bfloat16 operands

    def err(d):
        return float((d - exact).abs().max() / exact.abs().max())

    assert err(dx.double()) < 3 * err(dx_of(x, w, ct.bfloat16(), autocast=True)) + 2e-3


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("padding", [1, 3])  # the strided route and polyphase_backward's
def test_16_bit_upsample_rounds_its_weight_gradient_once(dtype, padding):
    """Each tap's gradient is one float32-summing matmul of the cotangent's box sums
    (kernels.nearest_grad). The combined kernel's rounded 16-bit gradient, summed onto the
    layer's taps, had lost the result where the output phases' terms cancel, a cotangent
    alternating in sign between them: here 0.049 (bfloat16, padding 1) and 0.35 (padding 3)
    of max |dW|, against autocast's 0.0012 and 0.0020; float16 0.0054 and 0.032."""
    g = torch.Generator().manual_seed(0)
    low = getattr(torch, dtype)
    w = torch.randn(4, 4, 3, 3, generator=g)
    x = torch.randn(2, 4, 12, 12, generator=g)
    layer = nf.upsample(4, 3, 2, padding=padding, bias=False)
    if dtype == "bfloat16":
        y, pb = nf.mixed_precision(layer).vjp({"weight": w}, x)
    else:
        y, pb = layer.vjp({"weight": w.to(low)}, x.to(low))
    i, j = torch.arange(y.shape[2])[:, None], torch.arange(y.shape[3])
    checker = ((i + j) % 2 * 2 - 1).float()
    ct = torch.randn(2, 4, 1, 1, generator=g) * checker + 0.01 * torch.randn(y.shape, generator=g)
    ct = ct.to(low)
    dw = pb(ct.to(y.dtype))[0]["weight"].double()
    xd, wd = (t.to(low).double().requires_grad_() for t in (x, w))
    with torch.enable_grad():
        y = F.conv2d(F.interpolate(xd, scale_factor=2), wd, None, 1, padding)
        exact = torch.autograd.grad(y, wd, ct.double())[0]
    err = float((dw - exact).abs().max() / exact.abs().max())
    assert err < 2 * torch.finfo(low).eps, err  # the result's rounding, twice over


def test_mixed_precision_names_what_it_cannot_take():
    conv = nf.conv2d(4, 3, padding=1)
    mixed = nf.mixed_precision(conv, "bfloat16")
    with pytest.raises(ValueError, match="already computes in bfloat16 .*wrap the float32 layer"):
        nf.mixed_precision(mixed, "bfloat16")
    for holder in (
        nf.serial(mixed, nf.relu()),
        nf.residual(nf.serial(nf.relu(), mixed)),
        nf.padded_to_multiple(mixed, 4),
    ):
        with pytest.raises(ValueError, match="already computes in bfloat16 .it is, or holds"):
            nf.mixed_precision(holder, "bfloat16")
    net = nf.serial(conv, nf.batch_norm2d(), nf.relu())
    _, _, state = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    held = nf.stateful.fixed(net, state, train=False)
    for holder in (held, nf.serial(nf.relu(), held), nf.padded_to_multiple(held, 4)):
        with pytest.raises(TypeError, match="holds a stateful one .batch norm, dropout"):
            nf.mixed_precision(holder, "bfloat16")
    with pytest.raises(TypeError, match="StatefulLayer .a stateful one: batch norm and dropout"):
        nf.mixed_precision(nf.batch_norm2d(), "bfloat16")
    with pytest.raises(ValueError, match=r"precision must be one of .*, got \['bfloat16'\]"):
        nf.mixed_precision(conv, ["bfloat16"])
    assert nf.mixed_precision(mixed, "float32") is mixed
