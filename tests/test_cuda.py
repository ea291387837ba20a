"""Every layer family on a CUDA device computes what it computes on the CPU.

The CPU results are the ones the oracle tests check against torch autograd and finite
differences; here the same float64 call (same parameters, input and random cotangent) runs
on the GPU, and the output, the input gradient and every parameter gradient must agree to
rounding. On the GPU convolutions run on the device engine (:mod:`n2nfunc.device_conv`), on
the CPU on its own engines (im2col blocks, implicit GEMM on the space-to-depth grid, row taps,
polyphase transposed convolutions, nearest upsampling folded into the kernel): the geometries
cover odd and non-square sizes, stride > 1, padding, output padding, dilation and batch 1.

Skipped without a GPU. ``N2NFUNC_TEST_DEVICE=cpu`` runs the same comparisons CPU against CPU
(a dry run of this file on a machine without one)."""

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err
from test_precision import default_net, norm_err, torch_twin

import n2nfunc as nf
from n2nfunc import device_conv
from n2nfunc.model import Model
from n2nfunc.stateful import fixed
from n2nfunc.testing import check_vjp
from n2nfunc.tiling import footprint, least_tile

DEVICE = os.environ.get("N2NFUNC_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.cuda if DEVICE.startswith("cuda") else []
TOL = 1e-10  # float64 on both sides: only the order of the sums differs

CASES = {  # id -> (layer, input shape)
    "conv k3 s1 p1 odd": (nf.conv2d(5, 3, padding=1), (2, 3, 7, 9)),
    "conv k1": (nf.conv2d(4, 1), (1, 6, 5, 4)),
    "conv k4 s2 p1 (default net)": (nf.conv2d(48, 4, 2, 1), (2, 48, 16, 16)),
    "conv k4 s2 p1 first layer": (nf.conv2d(48, 4, 2, 1), (3, 3, 32, 32)),
    "conv k4 s2 p1 odd": (nf.conv2d(8, 4, 2, 1), (1, 8, 7, 9)),
    "conv k6 s3 p2": (nf.conv2d(6, 6, 3, 2), (1, 8, 11, 10)),
    "conv (4,2) s(2,1) p(1,0)": (nf.conv2d(5, (4, 2), (2, 1), (1, 0)), (2, 8, 8, 7)),
    "conv k3 d2 p2": (nf.conv2d(4, 3, padding=2, dilation=2), (1, 3, 9, 8)),
    "conv wide row taps": (nf.conv2d(24, 3, padding=1), (2, 20, 12, 11)),
    "conv no bias": (nf.conv2d(4, 3, 2, 1, bias=False), (1, 5, 8, 6)),
    "tconv k4 s2 p1 (default net)": (nf.conv_transpose2d(48, 4, 2, 1), (2, 48, 4, 4)),
    "tconv k4 s2 p1 to 3": (nf.conv_transpose2d(3, 4, 2, 1), (2, 48, 8, 8)),
    "tconv k3 s2 p1 op1": (nf.conv_transpose2d(4, 3, 2, 1, 1), (1, 5, 5, 6)),
    "tconv k5 s3 p2 d2": (nf.conv_transpose2d(3, 5, 3, 2, 0, 2), (2, 4, 4, 3)),
    "tconv k2 s1": (nf.conv_transpose2d(3, 2), (1, 2, 3, 5)),
    "tconv k3 s1 op1 d2": (nf.conv_transpose2d(3, 3, 1, 0, 1, 2), (2, 3, 4, 5)),
    "upsample k3 x2 p1": (nf.upsample(5, 3, 2, 1), (2, 4, 5, 7)),
    "upsample k4 x2 p1": (nf.upsample(3, 4, 2, 1), (1, 6, 6, 6)),
    "upsample k3 x3 d2": (nf.upsample(4, 3, 3, 2, 2), (1, 3, 4, 5)),
    "nearest x2": (nf.nearest_upsample(2), (2, 3, 5, 7)),
    "nearest x3": (nf.nearest_upsample(3), (1, 2, 4, 3)),
    "max pool 2": (nf.max_pool2d(2), (2, 3, 8, 6)),
    "max pool 3 s2 p1": (nf.max_pool2d(3, 2, 1), (1, 4, 9, 7)),
    "avg pool 2": (nf.avg_pool2d(2), (2, 3, 6, 8)),
    "avg pool 3 s2 p1": (nf.avg_pool2d(3, 2, 1), (1, 4, 7, 9)),
    "global avg pool": (nf.global_avg_pool(), (2, 5, 3, 4)),
    "relu": (nf.relu(), (2, 3, 4, 5)),
    "leaky relu 0.1": (nf.leaky_relu(0.1), (2, 3, 4, 5)),
    "sigmoid": (nf.sigmoid(), (2, 3, 4, 5)),
    "tanh": (nf.tanh(), (2, 3, 4, 5)),
    "elu": (nf.elu(), (2, 3, 4, 5)),
    "gelu": (nf.gelu(), (2, 3, 4, 5)),
    "silu": (nf.silu(), (2, 3, 4, 5)),
    "pixel shuffle": (nf.pixel_shuffle(2), (2, 8, 3, 5)),
    "pixel unshuffle": (nf.pixel_unshuffle(2), (2, 3, 4, 6)),
    "softplus": (nf.softplus(), (2, 3, 4, 5)),
    "softmax": (nf.softmax(), (2, 5, 3, 2)),
    "log softmax": (nf.log_softmax(), (2, 5, 3, 2)),
    "flatten dense": (nf.serial(nf.flatten(), nf.dense(7)), (3, 2, 4, 5)),
    "residual fanout concat": (
        nf.serial(
            nf.conv2d(4, 3, padding=1),
            nf.residual(nf.serial(nf.conv2d(4, 3, padding=1), nf.relu())),
            nf.fanout(2),
            nf.fanin_concat(),
        ),
        (1, 3, 6, 5),
    ),
    "tiny unet": (nf.unet(2, (3, 4, 3, 2)), (2, 3, 11, 7)),
    "unet row taps": (nf.unet(2, (16, 20, 17, 16)), (1, 3, 20, 17)),
}


def _to(tree_, device):
    return nf.tree.map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree_)


def _draw(shape, seed):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _vjp_on(layer, params, x, ct, device):
    y, pullback = layer.vjp(_to(params, device), x.to(device))
    grads, dx = pullback(ct.to(device))
    assert y.device.type == torch.device(device).type
    return y.cpu(), dx.cpu(), _to(grads, "cpu")


def _same(a, b, tol=TOL):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert rel_err(a, b) < tol, rel_err(a, b)


@pytest.mark.parametrize("case", list(CASES))
def test_layer_on_the_device_matches_the_cpu_float64(case):
    layer, shape = CASES[case]
    _, params = layer.init(torch.Generator().manual_seed(0), shape)
    params = nf.tree.map(lambda t: t.double(), params)
    x = _draw(shape, 1)
    ct = _draw(layer.apply(params, x).shape, 2)  # random cotangent, not ones
    y, dx, grads = _vjp_on(layer, params, x, ct, "cpu")
    y2, dx2, grads2 = _vjp_on(layer, params, x, ct, DEVICE)
    _same(y2, y)
    _same(dx2, dx)
    assert [p for p, _ in nf.tree.flatten(grads2)] == [p for p, _ in nf.tree.flatten(grads)]
    for a, b in zip(nf.tree.leaves(grads2), nf.tree.leaves(grads), strict=True):
        _same(a, b)


def test_convolutions_on_the_device_run_on_the_device_engine():
    x = torch.zeros(1, 3, 4, 4, device=DEVICE)
    for dtype in [torch.float64, torch.float32, torch.bfloat16]:
        assert device_conv.applies(x.to(dtype)) == (x.device.type != "cpu")


def test_max_pool_ties_on_the_device_go_where_they_go_on_the_cpu():
    """Integer inputs full of ties, integer cotangents: exact equality."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (2, 3, 9, 8), generator=gen).double()
    layer = nf.max_pool2d(3, 2, 1)
    ct = torch.randint(-9, 10, layer.apply({}, x).shape, generator=gen).double()
    _, dx, _ = _vjp_on(layer, {}, x, ct, "cpu")
    _, dx2, _ = _vjp_on(layer, {}, x, ct, DEVICE)
    assert torch.equal(dx2, dx)


@pytest.mark.parametrize("case", ["conv k4 s2 p1 odd", "tconv k3 s2 p1 op1", "tiny unet"])
def test_check_vjp_runs_on_the_device(case):
    layer, shape = CASES[case]
    _, params = layer.init(torch.Generator(device=DEVICE).manual_seed(0), shape)
    params = nf.tree.map(lambda t: t.double(), params)
    assert nf.tree.leaves(params)[0].device.type == torch.device(DEVICE).type
    check_vjp(layer, params, _draw(shape, 1).to(DEVICE), full_jacobian_max=0)


def test_conv_matches_torch_autograd_on_the_device():
    """The device's own oracle too (cuDNN in float64), for the default network's layers."""
    x, w, b = _draw((2, 48, 16, 16), 0), _draw((48, 48, 4, 4), 1), _draw((48,), 2)
    layer, params = nf.conv2d(48, 4, 2, 1), {"weight": w, "bias": b}
    ct = _draw((2, 48, 8, 8), 3)
    d = lambda t: t.to(DEVICE)  # noqa: E731
    y, (dx, dw, db) = autograd_vjp(
        lambda x, w, b: F.conv2d(x, w, b, 2, 1), [d(x), d(w), d(b)], d(ct)
    )
    ours, pullback = layer.vjp(_to(params, DEVICE), d(x))
    grads, dx2 = pullback(d(ct))
    for a, b_ in [(ours, y), (dx2, dx), (grads["weight"], dw), (grads["bias"], db)]:
        _same(a.cpu(), b_.cpu(), 1e-12)


def test_batch_norm_and_dropout_on_the_device():
    """Batch norm in training mode (batch statistics, new running statistics) and dropout
    with a mask from a device generator: the pullback is the CPU's for the same mask."""
    bn = nf.batch_norm2d()
    _, params, state = bn.init(None, (2, 3, 4, 5))
    params, state = (nf.tree.map(lambda t: t.double(), p) for p in (params, state))
    x, ct = _draw((2, 3, 4, 5), 0), _draw((2, 3, 4, 5), 1)
    out = {}
    for device in ("cpu", DEVICE):
        p, s = _to(params, device), _to(state, device)
        y, new_state, pullback = bn.vjp(p, s, x.to(device), train=True)
        grads, dx = pullback(ct.to(device))
        out[device] = [y, dx, *nf.tree.leaves(grads), *nf.tree.leaves(new_state)]
    for a, b in zip(out[DEVICE], out["cpu"], strict=True):
        if a.is_floating_point():
            _same(a.cpu(), b)
        else:
            assert torch.equal(a.cpu(), b)
    rng = torch.Generator(device=DEVICE).manual_seed(0)
    drop = fixed(nf.dropout(0.5), {}, train=True, rng=rng)
    y, pullback = drop.vjp({}, x.to(DEVICE))
    _, dx = pullback(ct.to(DEVICE))
    keep = y != 0
    assert y.is_cuda or DEVICE == "cpu"
    assert 0.3 < float(keep.double().mean()) < 0.7
    _same(dx.cpu(), (ct.to(DEVICE) * keep * 2).cpu())


def test_mixed_precision_errors_on_the_device_are_those_of_torch_autocast():
    """bfloat16 operands on the device (the default network): the error against float32 is
    the size of ``torch.autocast``'s on the same device, and gradients come back float32."""
    net = default_net()
    layer, params = net.layer, _to(net.params, DEVICE)
    twin = torch_twin(net).to(DEVICE)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 20, 12, generator=g).to(DEVICE)
    ct = torch.randn(3, 3, 20, 12, generator=g).to(DEVICE)
    y32, pb32 = layer.vjp(params, x)
    grads32, dx32 = pb32(ct)
    y16, pb16 = nf.mixed_precision(layer, "bfloat16").vjp(params, x)
    grads16, dx16 = pb16(ct)
    with torch.enable_grad():
        xr = x.clone().requires_grad_()
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            y_ac = twin(xr).float()
        dx_ac, *grads_ac = torch.autograd.grad(y_ac, [xr, *twin.parameters()], ct)
    assert norm_err(y16, y32) > 1e-4  # bfloat16 operands did run
    pairs = [(y16, y_ac.detach(), y32), (dx16, dx_ac, dx32)]
    pairs += list(zip(nf.tree.leaves(grads16), grads_ac, nf.tree.leaves(grads32), strict=True))
    for ours, theirs, exact in pairs:
        assert ours.dtype == torch.float32 and ours.device == exact.device
        assert norm_err(ours, exact) <= 1.5 * norm_err(theirs, exact) + 2e-3
        assert norm_err(ours, exact) < 0.1


def test_training_steps_on_the_device_match_the_cpu():
    """Three Adam steps (make_train_step, clipping in the chain) in float64."""
    layer = nf.serial(
        nf.conv2d(8, 4, 2, 1), nf.relu(), nf.conv_transpose2d(3, 4, 2, 1), nf.sigmoid()
    )
    _, params = layer.init(torch.Generator().manual_seed(0), (4, 3, 8, 8))
    params = nf.tree.map(lambda t: t.double(), params)
    x, y = _draw((4, 3, 8, 8), 1).sigmoid(), _draw((4, 3, 8, 8), 2).sigmoid()
    opt = nf.chain(nf.clip_by_global_norm(0.05), nf.adam(1e-2))
    step = nf.make_train_step(layer, nf.mse, opt)
    out = {}
    for device in ("cpu", DEVICE):
        p, s = _to(params, device), _to(opt.init(params), device)
        for _ in range(3):
            p, s, loss = step(p, s, x.to(device), y.to(device))
        out[device] = (p, float(loss))
    assert abs(out[DEVICE][1] - out["cpu"][1]) < 1e-12
    for a, b in zip(nf.tree.leaves(out[DEVICE][0]), nf.tree.leaves(out["cpu"][0]), strict=True):
        _same(a.cpu(), b, 1e-9)


def test_tiled_denoising_and_model_predict_on_the_device():
    m = Model.from_pretrained("unet-gaussian")
    image = torch.randint(0, 256, (1, 3, 300, 230), generator=torch.Generator().manual_seed(0))
    on_cpu = m.predict(image.clone())
    on_device = m.predict(image.to(DEVICE))
    assert on_device.device.type == torch.device(DEVICE).type
    assert float((on_device.cpu().float() - on_cpu.float()).abs().max()) <= 1e-3 * 255
    layer, params = nf.pretrained("unet-gaussian")
    params = _to(params, DEVICE)
    img = (image[0].float() / 255).to(DEVICE)
    whole = nf.denoise_image(layer, params, img)
    fp = footprint(layer)
    tile = least_tile(fp.reach, max(32, fp.multiple))
    assert tile < 230  # several tiles along each axis
    tiled = nf.denoise_image(layer, params, img, tile=tile)
    assert tiled.device == img.device and rel_err(tiled, whole) < 1e-5
