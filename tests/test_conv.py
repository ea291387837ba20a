"""Convolution layers against torch.nn.functional + autograd, over a grid of geometries,
and against finite differences (check_vjp) on small shapes."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, init64, randn, rel_err, set_in_kernels, spy_in_kernels

import n2nfunc as nf
from n2nfunc import kernels as K
from n2nfunc.layers.upsampling import STRIDED_BACKWARD_PIXELS

TOL64, TOL32 = 1e-10, 1e-5


def _compare(layer, ref, params, x, tol):
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, dtype=y.dtype)  # random, not all-ones
    names = list(params)
    y_ref, grads = autograd_vjp(
        lambda x_, *ps: ref(x_, dict(zip(names, ps))), [x] + [params[k] for k in names], ct
    )
    assert y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= tol
    assert rel_err(layer.apply(params, x), y_ref) <= tol  # apply keeps nothing: its own path
    ct_params, ct_x = pullback(ct)
    assert rel_err(ct_x, grads[0]) <= tol
    for k, g in zip(names, grads[1:]):
        assert ct_params[k].shape == params[k].shape
        assert rel_err(ct_params[k], g) <= tol, k
    # the parameters' gradients alone (a network's first layer), where some engines take
    # another path
    alone, none = nf.pull(layer.vjp, pullback, ct, input_grad=False)
    assert none is None
    for k, g in zip(names, grads[1:]):
        assert rel_err(alone[k], g) <= tol, f"{k} without the input gradient"


CONV_GRID = [
    c
    for c in itertools.product(
        [1, 2, 3, 4, 5], [1, 2, 3], [0, 1, 2], [1, 2], [(7, 9), (8, 8)], [1, 3]
    )
    if min(c[4]) + 2 * c[2] >= c[3] * (c[0] - 1) + 1
]


@pytest.mark.parametrize("k,s,p,d,hw,n", CONV_GRID)
def test_conv2d_matches_torch_float64(k, s, p, d, hw, n):
    layer = nf.conv2d(4, k, stride=s, padding=p, dilation=d)
    params = init64(layer, (n, 3) + hw)
    _compare(
        layer,
        lambda x, q: F.conv2d(x, q["weight"], q["bias"], s, p, d),
        params,
        randn(n, 3, *hw),
        TOL64,
    )


def test_pair_taps_of_equally_many_weights_keep_apart(monkeypatch):
    """Two layers on pairs of columns whose weights hold as many numbers in other shapes (12
    x 24 x 3 x 4 and 12 x 32 x 3 x 3): each gets its own gather of the pair taps (one index
    cached by element count alone gave the second layer the first one's: wrong outputs)."""
    for bound in ("KERNEL_TAPS_PIXELS", "KERNEL_TAPS_WIDTH", "KERNEL_TAPS_CHANNELS"):
        set_in_kernels(monkeypatch, bound, 0)
    taken = spy_in_kernels(monkeypatch, "pair_taps_forward", lambda x, w, *a: tuple(w.shape))
    for k, c, w in [((3, 4), 24, 9), (3, 32, 8), ((3, 4), 24, 9)]:
        layer = nf.conv2d(12, k, padding=1)
        params = init64(layer, (2, c, 5, w))
        x = randn(2, c, 5, w)
        ref = F.conv2d(x, params["weight"], params["bias"], 1, 1)
        assert rel_err(layer.apply(params, x), ref) <= TOL64
    assert taken == [(12, 24, 3, 4), (12, 32, 3, 3), (12, 24, 3, 4)]


@pytest.mark.parametrize("o", [2, 8, 20])  # thin outputs (transposed taps) and a wide one
@pytest.mark.parametrize(
    "k,p,d",
    [(3, 1, 1), (2, 0, 1), (5, 2, 1), (3, 2, 2), ((3, 5), (2, 1), 1), (3, 3, 1), (1, 0, 1)]
    + [((1, 3), (0, 1), 1), ((3, 1), (1, 0), 1)],
)
@pytest.mark.parametrize("hw,n", [((7, 9), 1), ((8, 5), 2), ((6, 10), 2)])
@pytest.mark.parametrize("forward", ["row taps", "kernel taps", "pair taps"])
def test_wide_stride_1_conv2d_matches_torch_float64(monkeypatch, o, k, p, d, hw, n, forward):
    """Stride-1 convolutions with >= WIDE_TAPS input channels run as row taps -- their
    forward pass, on large images (kernels.kernel_taps_pay; here on any, or never, by
    ``forward``), for an output of >= THIN_TAPS channels as kh x kw shifted-view taps of the
    padded input, and for a narrow one of an even width as taps on pairs of columns
    (kernels.pair_taps_pay; ``forward`` picks which of the two may run); their input
    gradient, when the output has >= WIDE_TAPS channels and the padding is below the kernel,
    as row taps of the output gradient with the flipped kernel, else (a thin output, or a
    kernel one row high) as im2col blocks on the flipped kernel; a padding of 3 for a 3 x 3
    kernel takes the polyphase engine. Where both backward passes are row taps they share the
    unrolled output gradient (the weight gradient read from it and x); for a thin output
    whose im2col matrix is no wider than x unrolled (kernels.thin_output_pays) both come
    from that matrix; without the input gradient the weight gradient unrolls x as in the
    forward pass."""
    for bound in ("KERNEL_TAPS_PIXELS", "KERNEL_TAPS_WIDTH", "KERNEL_TAPS_CHANNELS"):
        set_in_kernels(monkeypatch, bound, 10**9 if forward == "row taps" else 0)
    set_in_kernels(monkeypatch, "PAIR_WIDTH", 10**9 if forward == "pair taps" else 0)
    channels = lambda x, *a: x.shape[3]  # noqa: E731
    unrolled = spy_in_kernels(monkeypatch, "_row_taps", channels)  # inputs row taps unrolled
    paired = spy_in_kernels(monkeypatch, "pair_taps_forward", channels)  # on pairs of columns
    thin = spy_in_kernels(monkeypatch, "_thin_output_grads", channels)  # both grads, one im2col
    layer = nf.conv2d(o, k, padding=p, dilation=d)
    params = init64(layer, (n, 17) + hw)
    x = randn(n, 17, *hw)
    ref = lambda x, q: F.conv2d(x, q["weight"], q["bias"], 1, p, d)  # noqa: E731
    _compare(layer, ref, params, x, TOL64)
    rows = K.rows_applies(x.permute(0, 2, 3, 1), _pair(k), (1, 1), _pair(d))
    even = ref(x, params).shape[3] % 2 == 0
    pairs = rows and forward == "pair taps" and even
    assert (17 in paired) == pairs
    kernel_taps = forward != "row taps" and o >= K.s2d.THIN_TAPS
    assert (17 in unrolled) == (rows and not pairs and not kernel_taps)
    kernel, pads = _pair(k), _pair(p)
    shared = K.shares_row_taps(x.permute(0, 2, 3, 1), params["weight"], (1, 1), pads, (d, d))
    below = all(pi < ki for pi, ki in zip(pads, kernel))
    assert shared == (o >= K.s2d.WIDE_TAPS and kernel[0] > 1 and d == 1 and below)
    (kh, kw), (ph, pw), (h, w) = kernel, pads, hw  # g's im2col no larger than x unrolled
    small = h * w * kh * o <= (h + 2 * ph) * (w + 2 * pw - kw + 1) * 17
    assert bool(thin) == (rows and o < K.s2d.WIDE_TAPS and small and below)
    y, pullback = layer.vjp(params, x)
    ct = randn(*y.shape, seed=5)
    ct_params, ct_x = pullback(ct, input_grad=False)
    _, grads = autograd_vjp(
        lambda x_, w_, b_: ref(x_, {"weight": w_, "bias": b_}),
        [x, params["weight"], params["bias"]],
        ct,
    )
    assert ct_x is None and rel_err(ct_params["weight"], grads[1]) <= TOL64


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "o,c,k,p,hw,n", [(3, 24, 3, 1, (9, 11), 1), (1, 16, (3, 5), (1, 2), (6, 8), 3)]
)
def test_thin_output_gradients_from_one_matrix_in_either_layout(
    monkeypatch, channels_last, o, c, k, p, hw, n
):
    """A thin output's two gradients from one im2col of the output gradient
    (kernels.thin_output_pays): the weight gradient reads the input where it lies, as rows
    of channels-last memory (or of one image), else image by image from channels-first
    memory."""
    taken = spy_in_kernels(monkeypatch, "_thin_output_grads", lambda x, *a: x.is_contiguous())
    layer = nf.conv2d(o, k, padding=p)
    params = init64(layer, (n, c) + hw)
    x = randn(n, c, *hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = lambda x, q: F.conv2d(x, q["weight"], q["bias"], 1, p)  # noqa: E731
    _compare(layer, ref, params, x, TOL64)
    assert taken == [channels_last]  # the pullback with the input gradient only


@pytest.mark.parametrize("o", [4, 20])
@pytest.mark.parametrize(
    "k,s,p,hw,n,lined_up",
    [
        (4, 2, 1, (16, 16), 2, True),  # the default network's geometry
        (4, 2, 1, (7, 9), 1, True),  # odd sizes
        (2, 2, 0, (6, 5), 2, False),
        (4, 2, 0, (9, 8), 1, False),
        (4, 2, 2, (8, 8), 1, False),
        (6, 3, 2, (11, 10), 1, True),
        ((4, 2), (2, 1), (1, 0), (8, 7), 2, True),  # strided along one dim only
    ],
)
def test_strided_implicit_gemm_conv2d_matches_torch_float64(
    monkeypatch, o, k, s, p, hw, n, lined_up
):
    """Strided convolutions of the implicit-GEMM engine (8 input channels); where the input
    gradient's windows line up with the space-to-depth grid, both gradients come from one
    im2col matrix of g (kernels.strided._phase_grads) -- the default network's geometry does."""
    taken = []
    phase_grads = K.strided._phase_grads

    def spy(*args):
        out = phase_grads(*args)
        taken.append(out is not None)
        return out

    set_in_kernels(monkeypatch, "_phase_grads", spy)
    layer = nf.conv2d(o, k, stride=s, padding=p)
    params = init64(layer, (n, 8) + hw)
    ref = lambda x, q: F.conv2d(x, q["weight"], q["bias"], s, p)  # noqa: E731
    _compare(layer, ref, params, randn(n, 8, *hw), TOL64)
    assert taken == [lined_up]  # the implicit-GEMM engine ran, sharing g's copy where it can


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


TCONV_GRID = [
    c
    for c in itertools.product(
        [1, 2, 3, 4], [1, 2, 3], [0, 1, 2], [0, 1], [1, 2], [(5, 6), (4, 4)], [1, 2]
    )
    if c[3] < max(c[1], c[4]) and (min(c[5]) - 1) * c[1] - 2 * c[2] + c[4] * (c[0] - 1) + c[3] >= 0
]


@pytest.mark.parametrize("k,s,p,op,d,hw,n", TCONV_GRID)
def test_conv_transpose2d_matches_torch_float64(k, s, p, op, d, hw, n):
    layer = nf.conv_transpose2d(4, k, stride=s, padding=p, output_padding=op, dilation=d)
    params = init64(layer, (n, 3) + hw)
    _compare(
        layer,
        lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], s, p, op, 1, d),
        params,
        randn(n, 3, *hw),
        TOL64,
    )


# Wide layers (8 channels and more take the one-copy phase interleave) whose dilation makes
# the phases' offsets fall as the phase index grows (stride 2, dilation 3): the interleave
# then cannot be one view and goes phase by phase.
STRIDE_DILATION = [(2, 2, 3), (4, 2, 3), (2, 2, 5), (3, 3, 4), (2, 4, 5), (3, 2, 3), (2, 2, 2)]


@pytest.mark.parametrize("k,s,d", STRIDE_DILATION)
@pytest.mark.parametrize("p", [0, 1])
def test_strided_dilated_wide_layers_match_torch_float64(k, s, d, p):
    conv = nf.conv2d(8, k, stride=s, padding=p, dilation=d)
    ref = lambda x, q: F.conv2d(x, q["weight"], q["bias"], s, p, d)  # noqa: E731
    _compare(conv, ref, init64(conv, (2, 9, 11, 13)), randn(2, 9, 11, 13), TOL64)
    tconv = nf.conv_transpose2d(9, k, stride=s, padding=p, dilation=d)
    tref = lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], s, p, 0, 1, d)  # noqa: E731
    _compare(tconv, tref, init64(tconv, (2, 3, 5, 6)), randn(2, 3, 5, 6), TOL64)


UP_GRID = [
    c
    for c in itertools.product(
        [1, 2, 3, 4, 5], [1, 2, 3], [0, 1, 2], [1, 2], [(4, 5), (3, 3)], [1, 2]
    )
    if min(c[4]) * c[1] + 2 * c[2] - c[3] * (c[0] - 1) >= 1
]


@pytest.mark.parametrize("o", [4, 9])  # a thin output (strided backward pass) and a wider one
@pytest.mark.parametrize("k,sc,p,d,hw,n", UP_GRID)
def test_upsample_matches_nearest_then_conv_float64(o, k, sc, p, d, hw, n):
    layer = nf.upsample(o, k, scale_factor=sc, padding=p, dilation=d)
    params = init64(layer, (n, 3) + hw)

    def ref(x, q):
        up = F.interpolate(x, scale_factor=sc, mode="nearest")
        return F.conv2d(up, q["weight"], q["bias"], 1, p, d)

    _compare(layer, ref, params, randn(n, 3, *hw), TOL64)


PHASE_TAPS_CASES = [  # layer, its torch twin; 17 input channels (>= WIDE_TAPS), 9 outputs
    (nf.upsample(9, 3, 2, padding=1), lambda x, q: _up_conv(x, q, 2, 1, 1)),
    (nf.upsample(9, 2, 3), lambda x, q: _up_conv(x, q, 3, 0, 1)),
    (nf.upsample(9, 3, 2, padding=2, dilation=2), lambda x, q: _up_conv(x, q, 2, 2, 2)),
    (nf.conv_transpose2d(9, 4, 2, 1), lambda x, q: _tconv(x, q, 2, 1, 0, 1)),
    (nf.conv_transpose2d(9, 3, 2, 1, 1), lambda x, q: _tconv(x, q, 2, 1, 1, 1)),
    (nf.conv_transpose2d(9, (3, 5), (3, 2), (1, 2)), lambda x, q: _tconv(x, q, (3, 2), (1, 2))),
    (nf.conv_transpose2d(9, 3, 2, 2, dilation=2), lambda x, q: _tconv(x, q, 2, 2, 0, 2)),
]


def _up_conv(x, q, sc, p, d):
    up = F.interpolate(x, scale_factor=sc, mode="nearest")
    return F.conv2d(up, q["weight"], q["bias"], 1, p, d)


def _tconv(x, q, s, p, op=0, d=1):
    return F.conv_transpose2d(x, q["weight"], q["bias"], s, p, op, 1, d)


@pytest.mark.parametrize("case", range(len(PHASE_TAPS_CASES)))
@pytest.mark.parametrize("hw,n", [((5, 7), 2), ((4, 4), 1)])
@pytest.mark.parametrize("taps,block_bytes", [(False, None), (True, None), (True, 1)])
def test_wide_phase_taps_match_torch_float64(monkeypatch, case, hw, n, taps, block_bytes):
    """Upsampling and transposed convolutions with a wide output (THIN channels or more per
    phase) run their forward pass as shifted-view taps on large inputs
    (kernels.phase_taps_pay; here on any with ``taps``, else never), by blocks of images
    when a batch's copy is over GRAD_BLOCK_BYTES (here one image a block)."""
    layer, ref = PHASE_TAPS_CASES[case]
    bound = 0 if taps else 10**9
    set_in_kernels(monkeypatch, "PHASE_TAPS_WIDTH", bound)
    set_in_kernels(monkeypatch, "PHASE_TAPS_PIXELS", bound)
    if block_bytes is not None:
        set_in_kernels(monkeypatch, "GRAD_BLOCK_BYTES", block_bytes)
    taken, pays = [], K.phase_taps_pay  # whether each polyphase forward pass took taps
    set_in_kernels(monkeypatch, "phase_taps_pay", lambda *a: taken.append(pays(*a)) or taken[-1])
    params = init64(layer, (n, 17) + hw)
    _compare(layer, ref, params, randn(n, 17, *hw), TOL64)
    assert taken and all(t == taps for t in taken)


@pytest.mark.parametrize(
    "o, c, hw, n, dtype",
    [
        (4, 3, (5, 6), 1, torch.float32),  # one small float32 image: PyTorch's order
        (4, 3, (5, 6), 2, torch.float64),  # thin, few channels: im2col
        (4, 17, (9, 7), 2, torch.float64),  # thin: channels-first phases
        (9, 17, (9, 7), 2, torch.float64),  # wide: one interleaved view
        (9, 17, (33, 70), 2, torch.float64),  # wide, on a large input: shifted-view taps
    ],
)
@pytest.mark.parametrize("blocks", [False, True])  # True: one image a block of the taps
def test_upsample_add_into_adds_its_output_in_place(monkeypatch, o, c, hw, n, dtype, blocks):
    """``upsample``'s ``apply.add_into(params, x, out)`` adds what ``apply`` returns to
    ``out`` -- here a strided view into a larger buffer -- and nothing else of the buffer."""
    if blocks:
        set_in_kernels(monkeypatch, "GRAD_BLOCK_BYTES", 1)
    layer = nf.upsample(o, 3, 2, padding=1)
    params = {k: v.to(dtype) for k, v in init64(layer, (n, c) + hw).items()}
    x = randn(n, c, *hw).to(dtype)
    y = layer.apply(params, x)
    buf = randn(n, y.shape[2] + 1, y.shape[3] + 2, o, seed=7).to(dtype)  # NHWC, a margin
    before = buf.clone()
    out = buf[:, 1:, 2:].permute(0, 3, 1, 2)
    assert layer.apply.add_into(params, x, out) is out
    assert torch.equal(out, before[:, 1:, 2:].permute(0, 3, 1, 2) + y)
    assert torch.equal(buf[:, :1], before[:, :1]) and torch.equal(buf[:, :, :2], before[:, :, :2])
    with pytest.raises(ValueError, match=rf"cannot add an output of shape \({n}, {o}, "):
        layer.apply.add_into(params, x, out[:, :, 1:])
    with pytest.raises(ValueError, match="cannot add an output"):
        layer.apply.add_into(params, x, out.to(torch.float16))


@pytest.mark.parametrize("hw", [(5, 6), (40, 70)])  # the polyphase and the strided backward
def test_upsample_vjp_add_into_adds_its_output_and_pulls_back_as_vjp(hw):
    """``upsample``'s ``vjp.add_into(params, x, out)`` adds the vjp's output to ``out`` and
    returns its pullback, guarded as the vjp's: an input or weight changed in place since
    raises."""
    layer = nf.upsample(9, 3, 2, padding=1)
    params = init64(layer, (2, 17) + hw)
    x, out = randn(2, 17, *hw), randn(2, 9, 2 * hw[0], 2 * hw[1], seed=7)
    y, pullback = layer.vjp(params, x)
    before = out.clone()
    pullback_into = layer.vjp.add_into(params, x, out)
    assert torch.equal(out, before + y)
    ct = randn(*y.shape, seed=8)
    grads, dx = pullback(ct)
    grads_into, dx_into = pullback_into(ct)
    assert torch.equal(dx, dx_into) and torch.equal(grads["weight"], grads_into["weight"])
    assert pullback_into(ct, input_grad=False)[1] is None
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="input .* changed in place after the forward pass"):
        pullback_into(ct)


@pytest.mark.parametrize("k,p,hw", [(3, 1, (64, 64)), (3, 1, (33, 130)), (5, 2, (64, 65))])
def test_upsample_on_large_inputs_matches_float64(k, p, hw):
    """From upsampling.STRIDED_BACKWARD_PIXELS input pixels the backward pass is the strided
    convolution of g (where the combined kernel allows) rather than polyphase_backward."""
    assert hw[0] * hw[1] >= STRIDED_BACKWARD_PIXELS
    layer = nf.upsample(9, k, scale_factor=2, padding=p)
    params = init64(layer, (1, 3) + hw)

    def ref(x, q):
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.conv2d(up, q["weight"], q["bias"], 1, p)

    _compare(layer, ref, params, randn(1, 3, *hw), TOL64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_windows_that_lie_wholly_in_the_padding(dtype):
    """Padding wider than any window reaches into the image (a 1 x 1 kernel, stride 6,
    padding 2 on 2 rows; the pullback of a transposed convolution with output_padding 4 on
    one row): the padded copy cropped more rows than the image has, and a strided view ran
    off its storage (RuntimeError), where torch gives the zero-padded result."""
    layer = nf.conv2d(2, 1, stride=(6, 1), padding=(2, 0))
    x = randn(3, 2, 2, 3).to(dtype)
    params = nf.tree.map(lambda t: t.to(dtype), init64(layer, (3, 2, 2, 3)))
    _compare(
        layer,
        lambda x, q: F.conv2d(x, q["weight"], q["bias"], (6, 1), (2, 0)),
        params,
        x,
        TOL64 if dtype == torch.float64 else 1e-5,
    )
    layer = nf.conv_transpose2d(2, 1, stride=(5, 1), padding=(2, 0), output_padding=(4, 0))
    x = randn(3, 2, 1, 3).to(dtype)
    params = nf.tree.map(lambda t: t.to(dtype), init64(layer, (3, 2, 1, 3)))
    _compare(
        layer,
        lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], (5, 1), (2, 0), (4, 0)),
        params,
        x,
        TOL64 if dtype == torch.float64 else 1e-5,
    )


def test_non_square_kernel_stride_padding():
    layer = nf.conv2d(5, (2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1))
    params = init64(layer, (2, 3, 7, 6))
    _compare(
        layer,
        lambda x, q: F.conv2d(x, q["weight"], q["bias"], (1, 2), (0, 1), (2, 1)),
        params,
        randn(2, 3, 7, 6),
        TOL64,
    )
    layer = nf.conv_transpose2d(5, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2))
    params = init64(layer, (2, 3, 4, 5))
    _compare(
        layer,
        lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], (2, 3), (1, 0), (1, 2)),
        params,
        randn(2, 3, 4, 5),
        TOL64,
    )
    layer = nf.upsample(2, (3, 1), scale_factor=(2, 3), padding=(1, 0))
    params = init64(layer, (1, 3, 3, 2))
    _compare(
        layer,
        lambda x, q: F.conv2d(
            F.interpolate(x, scale_factor=(2, 3), mode="nearest"), q["weight"], q["bias"], 1, (1, 0)
        ),
        params,
        randn(1, 3, 3, 2),
        TOL64,
    )


@pytest.mark.parametrize(
    "make,ref",
    [
        (lambda: nf.conv2d(8, 3, 2, 1), lambda x, q: F.conv2d(x, q["weight"], q["bias"], 2, 1)),
        (
            lambda: nf.conv_transpose2d(8, 3, 2, 1, 1),
            lambda x, q: F.conv_transpose2d(x, q["weight"], q["bias"], 2, 1, 1),
        ),
        (
            lambda: nf.upsample(8, 3, 2, 1),
            lambda x, q: F.conv2d(F.interpolate(x, scale_factor=2), q["weight"], q["bias"], 1, 1),
        ),
        (  # wide stride 1: row taps forward, weight and input gradients
            lambda: nf.conv2d(24, 3, 1, 1),
            lambda x, q: F.conv2d(x, q["weight"], q["bias"], 1, 1),
        ),
    ],
)
def test_float32_matches_torch(make, ref):
    layer = make()
    _, params = layer.init(torch.Generator().manual_seed(1), (3, 6, 10, 12))
    _compare(layer, ref, params, torch.randn(3, 6, 10, 12), TOL32)


def test_no_bias():
    layer = nf.conv2d(4, 3, padding=1, bias=False)
    params = init64(layer, (2, 3, 5, 5))
    assert set(params) == {"weight"}
    _compare(
        layer, lambda x, q: F.conv2d(x, q["weight"], None, 1, 1), params, randn(2, 3, 5, 5), TOL64
    )


@pytest.mark.parametrize(
    "layer,shape",
    [
        (nf.conv2d(2, 3, stride=2, padding=1), (2, 3, 5, 4)),
        (nf.conv2d(2, (1, 2), stride=(3, 1), dilation=(1, 2)), (1, 2, 7, 5)),
        (nf.conv_transpose2d(2, 3, stride=2, padding=1, output_padding=1), (1, 3, 3, 2)),
        (nf.conv_transpose2d(3, 2, stride=3, padding=0), (2, 2, 2, 3)),
        (nf.upsample(2, 3, scale_factor=2, padding=1), (2, 2, 3, 2)),
        (nf.upsample(2, 2, scale_factor=3), (1, 2, 2, 3)),
        # 9 outputs: the polyphase engine both ways, a non-square scale and dilation
        (nf.upsample(9, 3, (2, 3), padding=1, dilation=(1, 2)), (2, 3, 3, 4)),
        (
            nf.conv_transpose2d(3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
            (1, 2, 4, 5),
        ),
        (nf.nearest_upsample(2), (2, 2, 3, 2)),
        (nf.nearest_upsample((1, 3)), (1, 2, 2, 2)),
        (nf.nearest_upsample(size=(5, 7)), (2, 2, 3, 2)),
        (nf.nearest_upsample(size=(2, 3)), (1, 2, 3, 5)),
    ],
)
def test_check_vjp_finite_differences(layer, shape):
    _, params = layer.init(torch.Generator().manual_seed(0), shape)
    worst = nf.check_vjp(layer, params, torch.randn(shape, dtype=torch.float64))
    checked = {"input"} | {f"parameter {k!r}" for k in params}
    assert checked <= set(worst)  # every gradient was checked (check_vjp raises if one is off)


def test_nearest_upsample_matches_interpolate():
    layer = nf.nearest_upsample((2, 3))
    x = randn(2, 3, 4, 5)
    y, pullback = layer.vjp({}, x)
    ct = torch.randn_like(y)
    y_ref, (gx,) = autograd_vjp(
        lambda t: F.interpolate(t, scale_factor=(2, 3), mode="nearest"), [x], ct
    )
    assert torch.equal(y, y_ref)
    assert rel_err(pullback(ct)[1], gx) < TOL64


@pytest.mark.parametrize(
    "hw,size",
    [((3, 5), (7, 11)), ((4, 4), (8, 12)), ((5, 3), (2, 9)), ((1, 1), (3, 4)), ((6, 7), (6, 7))],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_upsample_to_a_size_matches_interpolate(hw, size, dtype):
    """Any output size, larger or smaller, whole factors or not: the pixels PyTorch's
    nearest mode picks (its float32 ratios), and their summed gradients."""
    layer = nf.nearest_upsample(size=size)
    x = randn(2, 3, *hw).to(dtype)
    y, pullback = layer.vjp({}, x)
    assert layer.init(None, x.shape)[0] == y.shape
    ct = torch.randn_like(y)
    y_ref, (gx,) = autograd_vjp(lambda t: F.interpolate(t, size=size, mode="nearest"), [x], ct)
    assert torch.equal(y, y_ref)
    assert rel_err(pullback(ct)[1], gx) < (TOL64 if dtype == torch.float64 else 1e-6)


def test_nearest_sources_match_pytorch_for_every_small_size():
    from n2nfunc.layers.upsampling import _nearest_sources

    for n_in in range(1, 40):
        x = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, 1, n_in)
        for n_out in range(1, 130):
            picked = F.interpolate(x, size=(1, n_out), mode="nearest").flatten().long()
            assert _nearest_sources(n_in, n_out) == tuple(picked.tolist()), (n_in, n_out)


def test_nearest_upsample_by_1_returns_a_new_tensor():
    x = randn(1, 2, 3, 4)
    for layer in (nf.nearest_upsample(size=(3, 4)), nf.nearest_upsample(1)):
        y = layer.apply({}, x)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_nearest_upsampling_block_takes_a_size():
    block = nf.NearestUpsampling(size=(5, 6))
    x = randn(1, 2, 3, 4)
    assert torch.equal(block(x), F.interpolate(x, size=(5, 6), mode="nearest"))
    assert "size=(5, 6)" in repr(block)
    assert "scale_factor=2" in repr(nf.NearestUpsampling())
    with pytest.raises(ValueError, match="give size or scale_factor, not both"):
        nf.NearestUpsampling(2, size=4)


def test_pytorch_default_init_is_reproduced():
    for torch_layer, ours in [
        (lambda: torch.nn.Conv2d(3, 7, 3), nf.conv2d(7, 3)),
        (lambda: torch.nn.ConvTranspose2d(3, 7, (2, 3)), nf.conv_transpose2d(7, (2, 3))),
    ]:
        torch.manual_seed(5)
        ref = torch_layer()
        _, params = ours.init(torch.Generator().manual_seed(5), (-1, 3, -1, -1))
        assert torch.equal(params["weight"], ref.weight)
        assert torch.equal(params["bias"], ref.bias)


def test_input_gradient_can_be_skipped():
    layer = nf.conv2d(4, 3, 2, 1)
    params = init64(layer, (2, 3, 8, 8))
    y, pullback = layer.vjp(params, randn(2, 3, 8, 8))
    ct = torch.randn_like(y)
    full, dx = pullback(ct)
    skipped, none = nf.pull(layer.vjp, pullback, ct, input_grad=False)
    assert none is None and dx is not None
    assert all(torch.equal(full[k], skipped[k]) for k in full)


def test_channels_last_and_non_contiguous_inputs():
    layer = nf.conv2d(4, 3, 2, 1)
    params = init64(layer, (2, 3, 8, 8))
    x = randn(2, 3, 8, 8)
    y = layer.apply(params, x)
    assert torch.allclose(layer.apply(params, x.contiguous(memory_format=torch.channels_last)), y)
    wide = randn(2, 3, 8, 16)[:, :, :, ::2]
    assert torch.allclose(layer.apply(params, wide), layer.apply(params, wide.contiguous()))


@pytest.mark.cuda
def test_conv_layers_on_cuda():
    for layer in [
        nf.conv2d(4, 3, 2, 1),
        nf.conv_transpose2d(4, 3, 2, 1, 1),
        nf.upsample(4, 3, 2, 1),
    ]:
        _, params = layer.init(torch.Generator().manual_seed(0), (2, 3, 8, 8))
        x = torch.randn(2, 3, 8, 8)
        y, pullback = layer.vjp(params, x)
        ct = torch.randn_like(y)
        grads, dx = pullback(ct)
        cuda = {k: v.cuda() for k, v in params.items()}
        y2, pb2 = layer.vjp(cuda, x.cuda())
        grads2, dx2 = pb2(ct.cuda())
        assert y2.is_cuda and rel_err(y2.cpu(), y) < 1e-5 and rel_err(dx2.cpu(), dx) < 1e-5
        assert all(rel_err(grads2[k].cpu(), grads[k]) < 1e-5 for k in grads)


# Layers whose float32 / float64 gradients run by blocks of images (kernels.image_blocks):
# name, layer, input channels, its torch twin -- each engine that forms its copies a block at
# a time.
def _twin(fn, s, p):
    return lambda x, q: fn(x, q["weight"], q["bias"], s, p)


BLOCKED = [
    ("strided im2col, formed again", nf.conv2d(6, 4, 2, 1), 3, _twin(F.conv2d, 2, 1)),
    ("implicit GEMM, both gradients", nf.conv2d(16, 4, 2, 1), 16, _twin(F.conv2d, 2, 1)),
    ("implicit GEMM, not lined up", nf.conv2d(16, 4, 2, 0), 16, _twin(F.conv2d, 2, 0)),
    (
        "transposed, implicit GEMM",
        nf.conv_transpose2d(16, 4, 2, 1),
        16,
        _twin(F.conv_transpose2d, 2, 1),
    ),
    ("transposed, few inputs", nf.conv_transpose2d(8, 4, 2, 1), 4, _twin(F.conv_transpose2d, 2, 1)),
    ("transposed, thin g", nf.conv_transpose2d(3, 4, 2, 1), 16, _twin(F.conv_transpose2d, 2, 1)),
    ("transposed, thin taps", nf.conv_transpose2d(3, 3, 1, 1), 16, _twin(F.conv_transpose2d, 1, 1)),
]


@pytest.mark.parametrize("block_bytes", [1, 3 * 4096])  # one image a block; uneven blocks
@pytest.mark.parametrize("name, layer, c, ref", BLOCKED, ids=[b[0] for b in BLOCKED])
def test_gradients_by_blocks_of_images_match_torch(monkeypatch, block_bytes, name, layer, c, ref):
    """Every block's share lands where it belongs: 5 images in blocks of one, or of two, two
    and one (non-square images), against autograd and against the whole batch at once."""
    n, hw = 5, (9, 7)
    params = init64(layer, (n, c) + hw)
    x = randn(n, c, *hw, seed=3)
    y, pullback = layer.vjp(params, x)
    ct = randn(*y.shape, seed=4)
    w_params, w_dx = pullback(ct)
    set_in_kernels(monkeypatch, "GRAD_BLOCK_BYTES", block_bytes)
    spans = []
    blocks = K.image_blocks
    set_in_kernels(
        monkeypatch, "image_blocks", lambda *a: spans.append(list(blocks(*a))) or blocks(*a)
    )
    y_b, pullback_b = layer.vjp(params, x)
    d_params, dx = pullback_b(ct)
    assert any(len(s) > 1 for s in spans), f"{name}: no blocks"
    names = list(params)
    y_ref, grads = autograd_vjp(
        lambda x_, *ps: ref(x_, dict(zip(names, ps))), [x] + [params[k] for k in names], ct
    )
    assert rel_err(y_b, y_ref) <= TOL64 and rel_err(y_b, y) <= TOL64
    assert rel_err(dx, grads[0]) <= TOL64 and rel_err(dx, w_dx) <= TOL64
    for k, g in zip(names, grads[1:]):
        assert rel_err(d_params[k], g) <= TOL64 and rel_err(d_params[k], w_params[k]) <= TOL64


@pytest.mark.parametrize(
    "n, per_image, limit", [(100, 62208, 1 << 22), (5, 1, 1), (7, 3, 6), (3, 10, 1)]
)
def test_image_blocks_cover_the_batch_in_near_equal_blocks(monkeypatch, n, per_image, limit):
    set_in_kernels(monkeypatch, "GRAD_BLOCK_BYTES", limit)
    blocks = list(K.image_blocks(n, per_image))
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [n1 - n0 for n0, n1 in blocks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert max(sizes) * per_image <= limit or max(sizes) == 1


def _b(q):
    return q.get("bias")


BIAS_FREE_AND_SAME_CASES = [  # layer, its torch twin
    (nf.conv2d(5, 3, 2, 1, bias=False), lambda x, q: F.conv2d(x, q["weight"], None, 2, 1)),
    (
        nf.conv2d(5, (3, 2), (2, 3), (1, 0), bias=False),
        lambda x, q: F.conv2d(x, q["weight"], None, (2, 3), (1, 0)),
    ),
    (nf.conv2d(20, 4, 2, 1, bias=False), lambda x, q: F.conv2d(x, q["weight"], None, 2, 1)),
    (nf.conv2d(20, 3, 1, 1, bias=False), lambda x, q: F.conv2d(x, q["weight"], None, 1, 1)),
    (
        nf.conv_transpose2d(5, 4, 2, 1, bias=False),
        lambda x, q: _tconv(x, {**q, "bias": None}, 2, 1),
    ),
    (
        nf.conv_transpose2d(20, 3, 2, 1, 1, bias=False),
        lambda x, q: _tconv(x, {**q, "bias": None}, 2, 1, 1),
    ),
    (
        nf.conv_transpose2d(4, 3, 1, 1, bias=False),
        lambda x, q: _tconv(x, {**q, "bias": None}, 1, 1),
    ),
    (nf.upsample(6, 3, 2, 1, bias=False), lambda x, q: _up_conv(x, {**q, "bias": None}, 2, 1, 1)),
    # "same" pads H and W by their own kernel sizes and dilations
    (
        nf.conv2d(4, (3, 5), padding="same"),
        lambda x, q: F.conv2d(x, q["weight"], _b(q), padding="same"),
    ),
    (
        nf.conv2d(20, (5, 3), padding="same", dilation=(1, 3)),
        lambda x, q: F.conv2d(x, q["weight"], _b(q), padding="same", dilation=(1, 3)),
    ),
    (
        nf.upsample(4, (3, 5), padding="same", bias=False),
        lambda x, q: F.conv2d(F.interpolate(x, scale_factor=2), q["weight"], None, padding="same"),
    ),
]


@pytest.mark.parametrize("case", range(len(BIAS_FREE_AND_SAME_CASES)))
@pytest.mark.parametrize("c,hw,n", [(3, (9, 7), 1), (24, (8, 11), 2)])
def test_bias_free_and_same_padded_layers_match_torch_float64(case, c, hw, n):
    layer, ref = BIAS_FREE_AND_SAME_CASES[case]
    params = init64(layer, (n, c) + hw)
    _compare(layer, ref, params, randn(n, c, *hw), TOL64)
    nf.check_vjp(layer, params, randn(n, c, *hw, seed=4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["conv_transpose2d", "dilated", "non-square", "upsample"])
def test_transposed_weight_gradient_alone_skips_the_convolution(monkeypatch, dtype, kind):
    """input_grad=False gives a transposed convolution's weight and bias gradients without
    the convolution of the output gradient that would be its input gradient."""
    import n2nfunc.layers.upsampling as upsampling

    monkeypatch.setattr(upsampling, "STRIDED_BACKWARD_PIXELS", 0)  # upsample: strided pullback
    layer = {
        "conv_transpose2d": nf.conv_transpose2d(5, 4, stride=2, padding=1),
        "dilated": nf.conv_transpose2d(5, 3, stride=2, padding=1, dilation=2),
        "non-square": nf.conv_transpose2d(
            5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)
        ),
        "upsample": nf.upsample(5, 3, 2, padding=1),
    }[kind]
    x = randn(3, 17, 5, 7).to(dtype)
    params = {k: v.to(dtype) for k, v in init64(layer, tuple(x.shape)).items()}
    y, pullback = layer.vjp(params, x)
    ct = randn(*y.shape, seed=4).to(dtype)
    full, dx = pullback(ct)
    calls = []
    spy = K.conv_and_weight_grad

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return spy(*args, **kwargs)

    set_in_kernels(monkeypatch, "conv_and_weight_grad", counting)  # wherever it is bound
    skipped, none = nf.pull(layer.vjp, pullback, ct, input_grad=False)
    assert none is None and dx is not None and not calls
    tol = {torch.float64: TOL64, torch.float32: TOL32, torch.bfloat16: 1e-2}[dtype]
    assert set(skipped) == set(full) == {"weight", "bias"}
    assert all(rel_err(skipped[k].double(), full[k].double()) < tol for k in full)
    assert all(skipped[k].dtype == dtype for k in full)
    ref = layer.vjp({k: v.double() for k, v in params.items()}, x.double())[1](ct.double())[0]
    assert all(rel_err(skipped[k].double(), ref[k]) < tol for k in full)  # not only each other
