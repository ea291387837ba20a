"""The U-Net: exact gradients (check_vjp, torch autograd twin), any image size, bad input."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err, set_in_kernels

import n2nfunc as nf
import n2nfunc.kernels as K
from n2nfunc.testing import check_vjp
from n2nfunc.unet import (
    PAPER_ARCHITECTURE,
    _edge_pad_adjoint,
    check_architecture,
    conv_list,
    from_conv_list,
    load_params,
    padded_to_multiple,
    skip_block,
    unet,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from unet_twin import TorchUNet  # noqa: E402

TINY = {"depth": 2, "widths": (3, 4, 3, 2)}


def _init(arch, shape, seed=0, dtype=torch.float64, device="cpu"):
    layer = unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(seed), shape)
    return layer, nf.tree.map(lambda t: t.to(device=device, dtype=dtype), params)


@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (2, 3, 8, 8), (1, 3, 1, 2)])
def test_check_vjp_tiny_unet(shape):
    """Random directions for every parameter and the input (the full Jacobian is the slow
    test below)."""
    layer, params = _init(TINY, shape)
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    check_vjp(layer, params, x, full_jacobian_max=0)


@pytest.mark.slow
def test_check_vjp_tiny_unet_full_jacobian():
    layer, params = _init(TINY, (1, 3, 7, 5))
    x = torch.rand(1, 3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    check_vjp(layer, params, x)


@pytest.mark.parametrize(
    "arch, shape",
    [
        (TINY, (2, 3, 11, 7)),
        ({"depth": 3, "widths": (4, 6, 5, 3)}, (1, 3, 9, 20)),
        ({"depth": 1, "widths": (3, 4, 3, 2), "out_channels": 2}, (1, 3, 6, 5)),
        ({"depth": 3, "widths": (4, 6, 5, 3), "in_channels": 1, "out_channels": 1}, (3, 1, 16, 8)),
        # widths >= 16: the 3 x 3 layers run as row taps, both gradients from one unrolled g
        ({"depth": 2, "widths": (16, 20, 17, 16)}, (1, 3, 20, 17)),
        # and on an image this large (kernels.row_taps.KERNEL_TAPS_PIXELS) their forward passes
        # at full resolution as kernel taps (32 channels) or on pairs of columns (24, 3),
        # whose strided outputs the next layers read
        ({"depth": 2, "widths": (32, 20, 24, 24)}, (1, 3, 50, 70)),
    ],
)
def test_forward_and_vjp_match_torch_twin(monkeypatch, arch, shape):
    taken = []  # which 3 x 3 forward passes ran as kernel taps or on pairs of columns

    def spy(name):
        pays = getattr(K.row_taps, name)

        def noted(*args):
            if pays(*args):
                taken.append(name)
                return True
            return False

        return noted

    for name in ("kernel_taps_pay", "pair_taps_pay"):
        set_in_kernels(monkeypatch, name, spy(name))
    layer, params = _init(arch, shape)
    twin = TorchUNet(**arch).double().load_n2nfunc(params)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(shape, dtype=torch.float64, generator=g)
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, dtype=torch.float64, generator=g)
    grads, cx = pullback(ct)
    weights = [p for c in twin.execution_order() for p in (c.weight, c.bias)]

    def fn(x_, *ws):
        with torch.no_grad():
            for p, w in zip(weights, ws):
                p.copy_(w)
        # run the twin functionally with ws as leaves
        names = [n for n, _ in twin.named_parameters()]
        by_id = {id(p): w for p, w in zip(weights, ws)}
        values = {n: by_id[id(p)] for n, p in twin.named_parameters()}
        assert len(values) == len(names)
        return torch.func.functional_call(twin, values, (x_,))

    y_ref, (cx_ref, *g_ref) = autograd_vjp(fn, [x] + [w.detach().clone() for w in weights], ct)
    assert y.shape == x.shape[:1] + (arch.get("out_channels", 3),) + x.shape[2:]
    assert rel_err(y, y_ref) < 1e-10
    assert rel_err(cx, cx_ref) < 1e-10
    leaves = [t for pair in conv_list(grads) for t in pair]  # as the twin's merged convs
    assert len(leaves) == len(g_ref)
    for ours, ref in zip(leaves, g_ref):
        assert rel_err(ours, ref) < 1e-10
    large = shape[2] * shape[3] >= K.row_taps.KERNEL_TAPS_PIXELS
    assert set(taken) == ({"kernel_taps_pay", "pair_taps_pay"} if large else set())


def test_float32_matches_twin():
    layer, params = _init(TINY, (1, 3, 13, 10), dtype=torch.float32)
    twin = TorchUNet(**TINY).load_n2nfunc(params)
    x = torch.rand(1, 3, 13, 10)
    assert rel_err(layer.apply(params, x), twin(x)) < 1e-5


FUSED_CASES = [
    (TINY, (2, 3, 13, 10)),  # small: the thin engines
    (TINY, (1, 3, 13, 10)),  # one small image: PyTorch's order in float32
    ({"depth": 2, "widths": (24, 20, 24, 24)}, (1, 3, 50, 70)),  # kernel taps
    ({"depth": 1, "widths": (16, 16, 16, 16)}, (2, 3, 70, 130)),  # wide phase taps
]


def _composed(monkeypatch):
    """From here on the skip blocks run as their composed networks (``fanout``, ``parallel``,
    ``fanin_sum``): what the fused ``apply`` and ``vjp`` must equal."""
    monkeypatch.setattr(sys.modules["n2nfunc.unet"], "_skip_block_parts", lambda params: None)


@pytest.mark.parametrize("arch, shape", FUSED_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_skip_blocks_match_their_composed_network_bit_for_bit(
    monkeypatch, arch, shape, dtype
):
    """A skip block's ``apply`` and ``vjp`` add the upsampled part into the skip conv's
    output in place (``upsample``'s ``add_into``) where its composed network forms both and
    their sum: the same outputs bit for bit, and the same gradients -- with and without the
    input gradient, and with ``release=True`` -- up to the rounding of sums taken in another
    order (a bias gradient's channel sums over a cotangent laid out as the skip conv's
    output rather than as the sum's)."""
    layer, params = _init(arch, shape, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, dtype=dtype, generator=g)
    ct = torch.randn(shape, dtype=dtype, generator=g)
    added, forward = [], K.polyphase_forward  # whether each polyphase pass added in place

    def spy(*args, **kwargs):
        added.append(args[8] if len(args) > 8 else kwargs.get("add", False))
        return forward(*args, **kwargs)

    taps, pays = [], K.phase_taps_pay
    set_in_kernels(monkeypatch, "polyphase_forward", spy)
    set_in_kernels(monkeypatch, "phase_taps_pay", lambda *a: taps.append(pays(*a)) or taps[-1])
    y = layer.apply(params, x)
    if shape[0] > 1 or dtype == torch.float64:  # (else PyTorch's order, add_into adds y)
        assert added.count(True) == arch["depth"]  # one skip block a level
    if arch["depth"] == 1:
        assert any(taps)
    y_vjp, pullback = layer.vjp(params, x)
    fused = [pullback(ct), pullback(ct, input_grad=False), pullback(ct, release=True)]
    with pytest.raises(nf.ReleasedError):
        pullback(ct)
    _composed(monkeypatch)
    y_ref, pullback_ref = layer.vjp(params, x)
    assert torch.equal(y, y_ref) and torch.equal(y_vjp, y_ref)
    assert torch.equal(layer.apply(params, x), y_ref)
    for (grads, dx), input_grad in zip(fused, (True, False, True)):
        grads_ref, dx_ref = pullback_ref(ct, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert dx is None or rel_err(dx, dx_ref) <= tol
        pairs = list(zip(nf.tree.flatten(grads), nf.tree.flatten(grads_ref)))
        assert len(pairs) == len(nf.tree.flatten(params))
        assert all(p == q and rel_err(a, b) <= tol for (p, a), (q, b) in pairs)


def test_fused_skip_blocks_name_a_bad_parameter_as_the_composed_network_does(monkeypatch):
    """Every parameter of the U-Net replaced by one of the wrong shape: ``apply`` and ``vjp``
    (whose skip blocks call their parts directly) raise what the composed network raises,
    naming the same layer path."""
    layer, params = _init(TINY, (1, 3, 12, 8))
    x = torch.rand(1, 3, 12, 8, dtype=torch.float64)
    paths = [path for path, _ in nf.tree.flatten(params)]
    assert len(paths) == 20  # 9 convolutions' weights and biases, 2 upsampled parts' weights

    def errors():
        out = []
        for path in paths:
            bad = nf.tree.unflatten(
                params, {p: (t[..., :1] if p == path else t) for p, t in nf.tree.flatten(params)}
            )
            out += [_value_error(run, bad, x) for run in (layer.apply, layer.vjp)]
        return out

    fused = errors()
    _composed(monkeypatch)
    assert fused == errors()
    assert all("in layer " in e for e in fused)


def _value_error(fn, *args) -> str:
    """The message of the ValueError that ``fn(*args)`` raises."""
    with pytest.raises(ValueError) as e:
        fn(*args)
    return str(e.value)


def test_a_skip_block_alone_fails_as_its_composed_network_does(monkeypatch):
    """A skip block on its own: a cotangent of the wrong shape, and branches whose sizes
    differ (an odd height, which the deeper path's pooling rounds down), raise what the
    composed network raises."""
    deeper = nf.serial(nf.max_pool2d(2), nf.conv2d(5, 3, padding=1), nf.leaky_relu(0.1))
    block = skip_block(deeper, 4)
    _, params = block.init(torch.Generator().manual_seed(0), (2, 3, 8, 6))
    params = nf.tree.map(lambda t: t.double(), params)
    x, odd = torch.rand(2, 3, 8, 6, dtype=torch.float64), torch.rand(2, 3, 7, 6).double()

    def errors():
        bad_ct = torch.zeros(2, 4, 8, 5, dtype=torch.float64)
        out = [_value_error(block.vjp(params, x)[1], bad_ct)]
        return out + [_value_error(run, params, odd) for run in (block.apply, block.vjp)]

    fused = errors()
    assert "output gradient" in fused[0] and "fanin_sum" in fused[1]
    _composed(monkeypatch)
    assert fused == errors()


def test_paper_shape_and_init():
    layer = unet(**PAPER_ARCHITECTURE)
    shape, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, -1, -1))
    assert shape == (-1, 3, -1, -1)
    convs = [w for w, _ in conv_list(params)]
    # 2 + 4 encoder convs + bottleneck, 2 per decoder level 5..2, then 64, 32, 3
    assert [tuple(w.shape[:2]) for w in convs] == [
        (48, 3),
        (48, 48),
        (48, 48),
        (48, 48),
        (48, 48),
        (48, 48),
        (48, 48),
        (96, 96),
        (96, 96),
        (96, 144),
        (96, 96),
        (96, 144),
        (96, 96),
        (96, 144),
        (96, 96),
        (64, 99),
        (32, 64),
        (3, 32),
    ]
    # He normal: std sqrt(2 / fan_in), zero bias
    w = convs[8]
    assert abs(float(w.std()) / (2 / (96 * 9)) ** 0.5 - 1) < 0.05
    assert all(float(t.abs().max()) == 0 for p, t in nf.tree.flatten(params) if "bias" in p)


@pytest.mark.parametrize("h, w", [(1, 1), (5, 33), (32, 32), (31, 64)])
def test_any_size_keeps_shape_and_is_the_twin_on_the_edge_padded_image(h, w):
    arch = {"depth": 4, "widths": (4, 6, 5, 3)}
    layer, params = _init(arch, (1, 3, h, w))
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    y = layer.apply(params, x)
    assert y.shape == (2, 3, h, w)
    twin = TorchUNet(**arch).double().load_n2nfunc(params)
    padded = F.pad(x, (0, -w % 16, 0, -h % 16), mode="replicate")
    assert rel_err(y, twin(padded)[:, :, :h, :w]) < 1e-10


def test_edge_padding_and_its_adjoint():
    """Around the identity, padded_to_multiple is the identity; the padding it applies is
    F.pad(mode="replicate") on the bottom and right, and its pullback that pad's adjoint."""
    ident = padded_to_multiple(nf.identity(), 4)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    y, pb = ident.vjp({}, x)
    ct = torch.randn(y.shape, dtype=torch.float64)
    assert torch.equal(y, x) and torch.equal(pb(ct)[1], ct)

    seen = {}

    def vjp(params, xp):
        seen["x"] = xp
        return xp, lambda ct: ({}, ct)

    spy = padded_to_multiple(nf.Layer(lambda g, s: (s, {}), lambda p, x: x, vjp), 4)
    spy.vjp({}, x)
    assert torch.equal(seen["x"], F.pad(x, (0, 2, 0, 3), mode="replicate"))
    g = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    _, (ref,) = autograd_vjp(lambda t: F.pad(t, (0, 2, 0, 3), mode="replicate"), [x], g)
    assert rel_err(_edge_pad_adjoint(g, 5, 6), ref) < 1e-15


@pytest.mark.parametrize("shape", [(1, 2, 5, 6), (2, 2, 1, 3)])
def test_check_vjp_padded_conv(shape):
    inner = nf.conv2d(3, 3, padding=1)
    _, p = inner.init(torch.Generator().manual_seed(0), shape)
    p = nf.tree.map(lambda t: t.double(), p)
    x = torch.randn(shape, dtype=torch.float64)
    check_vjp(padded_to_multiple(inner, 4), p, x)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="widths"):
        unet(widths=(48, 96))
    with pytest.raises(ValueError, match="depth"):
        unet(depth=0)
    layer, params = _init(TINY, (1, 3, 8, 8))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        layer.init(None, (1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"^unet: .*\(N, 3, H, W\), got \(3, 8, 8\)"):
        layer.apply(params, torch.rand(3, 8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="^unet: input dtype"):
        layer.apply(params, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"^unet: .*\(N, 3, H, W\), got \(1, 4, 8, 8\)"):
        layer.apply(params, torch.rand(1, 4, 8, 8, dtype=torch.float64))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    layer, params = _init(TINY, (1, 3, 9, 14), dtype=torch.float32)
    x = torch.rand(1, 3, 9, 14)
    y = layer.apply(params, x)
    cuda = nf.tree.map(lambda t: t.cuda(), params)
    assert rel_err(layer.apply(cuda, x.cuda()).cpu(), y) < 1e-5


def test_adam_training_matches_the_torch_twin():
    """Three Adam steps of Noise2Noise training give the same network as torch.nn + autograd
    + torch.optim.Adam from the same weights and batches (float64)."""
    arch = {"depth": 2, "widths": (4, 6, 5, 3)}
    layer, params = _init(arch, (2, 3, 12, 10))
    twin = TorchUNet(**arch).double().load_n2nfunc(params)
    opt = nf.adam(1e-2, betas=(0.9, 0.99))
    step = nf.make_train_step(layer, nf.mse, opt)
    state = opt.init(params)
    topt = torch.optim.Adam(twin.parameters(), lr=1e-2, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.rand(2, 3, 12, 10, dtype=torch.float64, generator=g)
        y = torch.rand(2, 3, 12, 10, dtype=torch.float64, generator=g)
        params, state, value = step(params, state, x, y)
        with torch.enable_grad():
            topt.zero_grad()
            loss = F.mse_loss(twin(x), y)
            loss.backward()
            topt.step()
        assert abs(float(value) - float(loss)) < 1e-12
    ours = [t for pair in conv_list(params) for t in pair]
    theirs = [p.detach() for c in twin.execution_order() for p in (c.weight, c.bias)]
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < 1e-10


def _earlier_layout_unet(depth, widths):
    """The U-Net as composed before skip_block: nearest_upsample, fanin_concat, conv."""

    def conv(c, act=True):
        c = nf.conv2d(c, 3, padding=1, init="he_normal")
        return nf.serial(c, nf.leaky_relu(0.1)) if act else c

    def skip(deeper):
        return nf.serial(nf.fanout(2), nf.parallel(deeper, nf.identity()), nf.fanin_concat(1))

    enc, dec, a, b = widths

    def level(k):
        if k == depth:
            return conv(enc)
        deeper = nf.serial(conv(enc), nf.max_pool2d(2), level(k + 1), nf.nearest_upsample(2))
        return nf.serial(skip(deeper), conv(dec), conv(dec))

    top = nf.serial(conv(enc), conv(enc), nf.max_pool2d(2), level(1), nf.nearest_upsample(2))
    net = nf.serial(skip(top), conv(a), conv(b), conv(3, False))
    return padded_to_multiple(net, 2**depth)


@pytest.mark.parametrize("depth", [1, 3])
def test_earlier_layout_loads_and_computes_the_same_function(depth):
    """Checkpoints of the earlier layout (one conv after an explicit concatenation) load into
    today's network, which computes the same function; the same seed draws the same weights."""
    arch = {"depth": depth, "widths": (4, 6, 5, 3), "in_channels": 3, "out_channels": 3}
    old = _earlier_layout_unet(depth, arch["widths"])
    _, old_params = old.init(torch.Generator().manual_seed(4), (-1, 3, -1, -1))
    old_params = nf.tree.map(lambda t: t.double().add_(torch.randn_like(t.double())), old_params)
    layer, fresh = _init(arch, (1, 3, 8, 8), seed=4)
    for (w0, b0), (w1, b1) in zip(
        conv_list(old.init(torch.Generator().manual_seed(4), (-1, 3, -1, -1))[1]), conv_list(fresh)
    ):
        assert torch.equal(w0.double(), w1) and torch.equal(b0.double(), b1)
    params = load_params(arch, old_params)
    assert [p for p, _ in nf.tree.flatten(params)] == [p for p, _ in nf.tree.flatten(fresh)]
    x = torch.rand(2, 3, 9, 14, dtype=torch.float64)
    assert rel_err(layer.apply(params, x), old.apply(old_params, x)) < 1e-12
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            [t for c in conv_list(params) for t in c], [t for c in conv_list(old_params) for t in c]
        )
    )
    again = from_conv_list(fresh, conv_list(params))  # today's layout round-trips exactly
    assert all(
        torch.equal(a, b) for (_, a), (_, b) in zip(nf.tree.flatten(again), nf.tree.flatten(params))
    )


def test_todays_layout_loads_by_path_whatever_order_a_file_lists_its_keys():
    """A file of today's layout whose dicts list their keys in another order loads each
    tensor at its own path (matched by position first, equal-shaped layers were swapped)."""
    arch = {"depth": 2, "widths": (4, 4, 4, 4), "in_channels": 3, "out_channels": 3}
    _, params = _init(arch, (1, 3, 8, 8))
    params = nf.tree.map(lambda t: torch.randn_like(t), params)

    def dict_paths(node, path=()):
        if isinstance(node, dict):
            yield path
            for k, v in node.items():
                yield from dict_paths(v, (*path, k))

    def reversed_at(node, where, path=()):  # the keys of the dict at ``where`` reversed
        if not isinstance(node, dict):
            return node
        keys = list(node)[::-1] if path == where else list(node)
        return {k: reversed_at(node[k], where, (*path, k)) for k in keys}

    want = dict(nf.tree.flatten(params))
    for where in dict_paths(params):
        loaded = dict(nf.tree.flatten(load_params(arch, reversed_at(params, where))))
        assert loaded.keys() == want.keys()
        assert all(torch.equal(loaded[p], want[p]) for p in want), where


def test_load_params_names_what_does_not_fit():
    arch = {"depth": 2, "widths": (4, 6, 5, 3), "in_channels": 3, "out_channels": 3}
    _, params = _init(arch, (1, 3, 8, 8))
    leaves = nf.tree.flatten(params)
    with pytest.raises(ValueError, match=r"my\.pth: parameters do not fit"):
        load_params(arch, dict(leaves[:-2]), "my.pth")  # a conv short
    with pytest.raises(ValueError, match=r"my\.pth: parameters do not fit"):
        load_params({**arch, "widths": (4, 6, 5, 4)}, params, "my.pth")
    with pytest.raises(ValueError, match="not a tree of tensors"):
        load_params(arch, {"0": "weights"}, "my.pth")


def test_skipping_the_input_gradient_keeps_the_parameter_gradients():
    layer, params = _init(TINY, (2, 3, 9, 7))
    y, pullback = layer.vjp(params, torch.rand(2, 3, 9, 7, dtype=torch.float64))
    ct = torch.randn_like(y)
    full, dx = pullback(ct)
    skipped, none = nf.pull(layer.vjp, pullback, ct, input_grad=False)
    assert none is None and dx is not None
    assert all(
        torch.equal(a, b) for (_, a), (_, b) in zip(nf.tree.flatten(full), nf.tree.flatten(skipped))
    )


def test_numpy_integer_sizes_are_taken_and_recorded_as_ints():
    np = pytest.importorskip("numpy")
    layer = nf.unet(np.int64(2), tuple(np.array([4, 6, 5, 4])))
    assert layer.init(torch.Generator().manual_seed(0), (1, 3, 16, 16))[0] == (1, 3, 16, 16)
    arch = check_architecture(np.int64(2), tuple(np.array([4, 6, 5, 4])))
    assert all(type(v) is int for v in (arch["depth"], *arch["widths"]))
