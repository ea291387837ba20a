"""Both convolution engines (im2col and the implicit-GEMM space-to-depth one) agree in
float64, on the forward pass and on the weight gradient."""

import pytest
import torch
from helpers import randn, rel_err, set_in_kernels

import n2nfunc as nf
from n2nfunc import kernels as K

TOL64 = 1e-12


@pytest.mark.parametrize(
    "k,s,p,hw,n",
    [
        ((4, 4), (2, 2), (1, 1), (16, 16), 3),  # the default network's convolutions
        ((4, 4), (2, 2), (1, 1), (7, 9), 1),  # odd sizes: the last input row/column unused
        ((2, 2), (2, 2), (0, 0), (5, 6), 2),  # one tap
        ((6, 3), (3, 3), (2, 0), (11, 8), 2),  # non-square taps, stride 3
        ((4, 2), (2, 1), (0, 1), (9, 5), 1),  # stride 1 along one dim
    ],
)
def test_implicit_gemm_engine_matches_im2col_float64(k, s, p, hw, n):
    c, o = 8, 4  # each tap's K = c*sy*sx >= WIDE_TAPS
    x = randn(n, *hw, c, seed=0)  # NHWC
    weight = randn(o, c, *k, seed=1)
    bias = randn(o, seed=2)
    out_hw = tuple((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(hw, k, s, p))
    assert K.s2d_applies(x, k, s, (1, 1))
    y_ref, cols = K.conv_forward(x, K.conv_matrix(weight), bias, k, s, p, (1, 1), out_hw)
    plan = K.s2d_plan(n, hw, k, s, p, out_hw)
    y, z = K.s2d_conv_forward(x, K.s2d_weights(weight, plan), bias, plan)
    assert y.shape == y_ref.shape and rel_err(y, y_ref) < TOL64
    g = randn(*y.shape, seed=3)
    dw_ref = K.weight_grad(K.rows(g), cols, k)
    dw = K.s2d_weight_grad_to_conv(K.s2d_conv_weight_grad(z, g, plan), plan, weight.shape)
    assert dw.shape == weight.shape and rel_err(dw, dw_ref) < TOL64
    # the dispatcher picks this engine and gives the same weight gradient
    y2, weight_grad = K.conv_and_weight_grad(x, weight, bias, k, s, p, (1, 1), out_hw)
    assert torch.equal(y2, y) and torch.equal(weight_grad(g), dw)


@pytest.mark.parametrize("c", [5, 12])  # phase by phase, and every phase in one copy
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "hw,k,s,p",
    [
        ((16, 16), (4, 4), (2, 2), (1, 1)),
        ((15, 16), (4, 4), (2, 2), (1, 1)),  # odd rows: the phases hold unequal counts
        ((12, 9), (3, 3), (3, 3), (0, 0)),  # stride 3, no padding: all phases in one copy
        ((9, 7), (4, 4), (2, 2), (0, 1)),  # the grid ends before the input: crops, no padding
        ((11, 8), (6, 3), (3, 3), (2, 0)),  # stride 3, padding on one side only
        ((5, 6), (2, 2), (2, 2), (1, 0)),
        ((7, 5), (3, 3), (1, 1), (1, 1)),  # stride 1: just the padded input
    ],
)
def test_space_to_depth_is_the_padded_input_rearranged(hw, k, s, p, dtype, c):
    """z[(n, my, mx), (ry, rx, c)] = xp[n, s*my + ry, s*mx + rx, c], written in one pass."""
    n = 2
    x = randn(n, *hw, c, seed=0).to(dtype)
    out_hw = tuple((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(hw, k, s, p))
    plan = K.s2d_plan(n, hw, k, s, p, out_hw)
    (mh, mw), (sy, sx) = plan.grid, plan.stride
    top, bottom, left, right = plan.pads
    xp = torch.zeros(n, hw[0] + top + max(bottom, 0), hw[1] + left + max(right, 0), c, dtype=dtype)
    xp[:, top : top + hw[0], left : left + hw[1]] = x
    xp = xp[:, : sy * mh, : sx * mw]
    expected = xp.reshape(n, mh, sy, mw, sx, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, sy * sx * c)
    in_nchw_memory = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # strided reads
    for source in (x, in_nchw_memory):
        torch.full(expected.shape, float("nan"), dtype=dtype)  # freed NaNs where z will land:
        assert torch.equal(K.space_to_depth(source, plan), expected)  # every padding zeroed


def test_implicit_gemm_engine_is_not_used_where_taps_would_round_or_be_thin():
    x = randn(1, 8, 8, 4).to(torch.bfloat16)
    assert not K.s2d_applies(x, (4, 4), (2, 2), (1, 1))  # bfloat16: one float32 accumulation
    x = randn(1, 8, 8, 3)
    assert not K.s2d_applies(x, (4, 4), (2, 2), (1, 1))  # taps with K = 12 < WIDE_TAPS
    x = randn(1, 8, 8, 4)
    assert K.s2d_applies(x, (4, 4), (2, 2), (1, 1))  # K = 16
    assert not K.s2d_applies(x, (3, 3), (2, 2), (1, 1))  # k not a multiple of s
    assert not K.s2d_applies(x, (4, 4), (2, 2), (2, 1))  # dilation
    assert not K.s2d_applies(x, (3, 3), (1, 1), (1, 1))  # stride 1: im2col is one matmul


# one row a block, 2 + 2 + 1 or 3 + 2 rows of an image, 2 + 1 images, all at once
@pytest.mark.parametrize("blocks", ["row", "rows", "images", "all"])
@pytest.mark.parametrize("o", [3, 9])  # below THIN: computed channels-first
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the bias in the sum
def test_im2col_by_blocks_matches_one_matmul(monkeypatch, blocks, o, bias, dtype):
    n, hw, c, k, s = 3, (9, 7), 5, (3, 2), (2, 1)
    out_hw = (5, 8)
    image = out_hw[0] * out_hw[1] * k[0] * k[1] * c * torch.empty((), dtype=dtype).element_size()
    block_bytes = {"row": 1, "rows": 3500, "images": 2 * image, "all": 1 << 21}[blocks]
    set_in_kernels(monkeypatch, "BLOCK_BYTES", block_bytes)
    x = randn(n, *hw, c, seed=0, dtype=dtype)
    wmat = randn(k[0] * k[1] * c, o, seed=1, dtype=dtype)
    b = randn(o, seed=2, dtype=dtype) if bias else None
    y_ref = torch.nn.functional.conv2d(
        x.permute(0, 3, 1, 2).double(),
        wmat.view(*k, c, o).permute(3, 2, 0, 1).double(),
        None if b is None else b.double(),
        s,
        1,
    )[:, :, : out_hw[0], : out_hw[1]].permute(0, 2, 3, 1)
    y, none = K.conv_forward(x, wmat, b, k, s, (1, 1), (1, 1), out_hw, keep_cols=False)
    tol = TOL64 if dtype == torch.float64 else 1e-6
    assert none is None and y.shape == y_ref.shape and rel_err(y.double(), y_ref) < tol


def test_im2col_blocks_are_cache_sized():
    """A U-Net layer's im2col (batch 8, 128 x 128 outputs, 3 x 3 x 32 bfloat16 columns):
    72 MiB, in blocks of at most 4 MiB on the CPU (3 per image). (Off the CPU convolutions
    run on n2nfunc.device_conv, whose blocks tests/test_device_conv.py checks.)"""
    assert len(list(K.direct._output_blocks(8, 128, 128 * 288 * 2))) == 24


@pytest.mark.parametrize("o,c", [(2, 16), (20, 17), (50, 16), (5, 3)])
def test_tap_sums_match_im2col_for_thin_matrices(o, c):
    """Narrow outputs (below THIN_TAPS channels) take every tap in one matmul, forward and weight
    gradient; the weight gradient's smaller side is computed transposed; below WIDE_TAPS
    input channels im2col is used: the same numbers as one im2col matmul either way."""
    x, weight, bias = randn(2, 6, 5, c, seed=0), randn(o, c, 3, 3, seed=1), randn(o, seed=2)
    args = ((3, 3), (1, 1), (1, 1), (1, 1), (6, 5))
    assert K.rows_applies(x, (3, 3), (1, 1), (1, 1)) == (c >= K.s2d.WIDE_TAPS)
    y_ref, cols = K.conv_forward(x, K.conv_matrix(weight), bias, *args)
    y, weight_grad = K.conv_and_weight_grad(x, weight, bias, *args)
    g = randn(*y.shape, seed=3)
    assert rel_err(y, y_ref) < TOL64
    assert rel_err(weight_grad(g), K.weight_grad(K.rows(g), cols, (3, 3))) < TOL64
    plan = K.s2d_plan(2, (6, 5), (3, 3), (1, 1), (1, 1), (6, 5))
    y3, z = K.s2d_conv_forward(x, K.s2d_weights(weight, plan), bias, plan)
    assert rel_err(y3, y_ref) < TOL64
    dw = K.s2d_weight_grad_to_conv(K.s2d_conv_weight_grad(z, g, plan), plan, weight.shape)
    assert rel_err(dw, K.weight_grad(K.rows(g), cols, (3, 3))) < TOL64


@pytest.mark.parametrize("o", [3, 12, 16])  # below THIN_TAPS (one matmul for all taps), at it
@pytest.mark.parametrize("bias", [False, True])
def test_strided_taps_match_im2col_thin_and_wide(o, bias):
    """Stride-2 kernel-4 convolution by space-to-depth taps (4 taps on a 2x2 grid), odd
    sizes, batch 3: output and weight gradient equal one im2col matmul's."""
    n, hw, c, k, s, p, out_hw = 3, (9, 7), 5, (4, 4), (2, 2), (1, 2), (4, 4)
    x, weight = randn(n, *hw, c, seed=0), randn(o, c, *k, seed=1)
    b = randn(o, seed=2) if bias else None
    y_ref, cols = K.conv_forward(x, K.conv_matrix(weight), b, k, s, p, (1, 1), out_hw)
    plan = K.s2d_plan(n, hw, k, s, p, out_hw)
    y, z = K.s2d_conv_forward(x, K.s2d_weights(weight, plan), b, plan)
    g = randn(*y.shape, seed=3)
    assert rel_err(y, y_ref) < TOL64
    dw = K.s2d_weight_grad_to_conv(K.s2d_conv_weight_grad(z, g, plan), plan, weight.shape)
    assert rel_err(dw, K.weight_grad(K.rows(g), cols, k)) < TOL64


@pytest.mark.parametrize(
    "shape",
    [(4, 8, 8, 3), (3, 5, 7, 3), (2, 4, 4, 48), (1, 1, 1, 5), (6, 16, 16, 200), (9, 33, 17, 48)],
)  # narrow, odd row count, wide, one row, wider than 128, reduced in two steps (SUM_IN_TWO)
def test_channel_sums_match_a_float64_sum(shape):
    x = randn(*shape, seed=4)
    ref = x.reshape(-1, shape[-1]).sum(0)
    assert rel_err(K.channel_sums(x), ref) < TOL64
    assert rel_err(K.channel_sums(x.float()).double(), ref) < 1e-6
    assert rel_err(K.channel_sums(x.permute(0, 2, 1, 3)), ref) < TOL64  # a strided view
    in_nchw_memory = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # a loss's gradient
    assert rel_err(K.channel_sums(in_nchw_memory), ref) < TOL64
    assert rel_err(K.channel_sums(in_nchw_memory.float()).double(), ref) < 1e-6
    low = x.to(torch.bfloat16)
    once = (
        low.float().reshape(-1, shape[-1]).sum(0).to(torch.bfloat16)
    )  # float32 sums, rounded once
    # (a sum rounded to bfloat16 twice, as a two-step sum would be without float32 between
    # its steps, is 1.6e-3-3.8e-3 away at these shapes)
    assert rel_err(K.channel_sums(low).double(), once.double()) < 1e-3
    assert rel_err(K.channel_sums(low).double(), ref) < 2e-2


@pytest.mark.parametrize("o", [3, 20])  # thin (taps side by side) and wide (channels-first G^T)
@pytest.mark.parametrize("k,s,p", [((3, 3), (1, 1), (1, 1)), ((4, 4), (2, 2), (1, 1))])
def test_tap_weight_gradient_in_bfloat16_matches_float64(o, k, s, p):
    n, hw, c = 2, (9, 7), 17
    x = randn(n, *hw, c, seed=5)
    out_hw = tuple((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(hw, k, s, p))
    plan = K.s2d_plan(n, hw, k, s, p, out_hw)
    g = randn(n, *out_hw, o, seed=6)
    nchw = (0, 3, 1, 2)  # torch's own weight gradient as the reference
    ref = torch.nn.grad.conv2d_weight(x.permute(nchw), (o, c) + k, g.permute(nchw), s, p)
    low = K.s2d_conv_weight_grad(
        K.space_to_depth(x.to(torch.bfloat16), plan), g.to(torch.bfloat16), plan
    )
    low = K.s2d_weight_grad_to_conv(low, plan, ref.shape)
    assert low.shape == ref.shape and rel_err(low.double(), ref) < 2e-2


@pytest.mark.parametrize(
    "c,o,k,s",
    [
        (8, 3, (4, 4), (2, 2)),  # thin: stacked
        (16, 16, (4, 4), (2, 2)),  # 4 taps x 16 outputs, K = 64 = 4 O: stacked
        (16, 24, (4, 4), (2, 2)),  # K = 64 < 4 O: a matmul per tap
        (17, 20, (3, 3), (1, 1)),  # K = 17 < 4 O: a matmul per tap
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_every_tap_weight_gradient_path_matches_torch(c, o, k, s, dtype):
    n, hw, p = 2, (9, 8), (1, 1)
    out_hw = tuple((size + 2 * pp - kk) // ss + 1 for size, kk, ss, pp in zip(hw, k, s, p))
    x, g = randn(n, *hw, c, seed=7), randn(n, *out_hw, o, seed=8)
    nchw = (0, 3, 1, 2)  # torch's own weight gradient as the reference, not ours
    ref = torch.nn.grad.conv2d_weight(x.permute(nchw), (o, c) + k, g.permute(nchw), s, p)
    plan = K.s2d_plan(n, hw, k, s, p, out_hw)
    z = K.space_to_depth(x.to(dtype), plan)
    d = K.s2d_weight_grad_to_conv(K.s2d_conv_weight_grad(z, g.to(dtype), plan), plan, ref.shape)
    assert rel_err(d.double(), ref) < (TOL64 if dtype == torch.float64 else 2e-2)


@pytest.mark.parametrize("r", [401, 400, 7])  # a remainder block, none, too short to split
@pytest.mark.parametrize("m", [9, 16])  # 16 x 5 in float32: computed transposed (fast_width)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reduce_matmul_splits_long_sums_exactly(r, m, dtype):
    z, g = randn(r + 3, m, seed=9, dtype=dtype), randn(r, 5, seed=10, dtype=dtype)
    tol = TOL64 if dtype == torch.float64 else 1e-5
    lhs = z[2 : 2 + r].t()  # a transposed, offset view, as the weight gradients pass it
    assert rel_err(K.reduce_matmul(lhs, g).double(), lhs.double().matmul(g.double())) < tol
    frame = randn(m, r + 5, seed=11, dtype=dtype)[:, :r]  # row-major with a longer stride
    assert rel_err(K.reduce_matmul(frame, g).double(), frame.double().matmul(g.double())) < tol
    assert K.reduce_matmul(lhs, g).is_contiguous()


@pytest.mark.parametrize("n", [1, 3, 9, 16, 24, 27, 40])
def test_widened_weights_give_the_same_product_at_a_fast_width(n):
    z, w = randn(50, 7, seed=15, dtype=torch.float32), randn(7, n, seed=16, dtype=torch.float32)
    wide = K.widened(w)
    assert wide.shape == (7, K.fast_width(n)) and K.fast_width(n) >= n
    assert K.fast_width(n) == n or (K.fast_width(n) % 8 == 0 and K.fast_width(n) >= 16)
    assert torch.equal(wide[:, :n], w) and not wide[:, n:].any()
    assert rel_err(z.matmul(wide)[:, :n].double(), z.double().matmul(w.double())) < 1e-5
    for other in (torch.float64, torch.bfloat16):  # not MKL's float32 kernels: as they are
        assert K.widened(w.to(other)).shape == (7, n)


@pytest.mark.parametrize(
    "k,s,d,p",
    [
        ((3, 3), (2, 2), (1, 1), (1, 1)),
        ((3, 2), (2, 3), (1, 2), (0, 2)),
        ((5, 5), (3, 3), (2, 2), (4, 1)),
        ((1, 1), (2, 1), (1, 1), (0, 0)),  # kernel 1, scale 1 along x
    ],
)
def test_nearest_upsampling_then_conv_is_one_transposed_conv(k, s, d, p):
    import torch.nn.functional as F

    w, x = randn(4, 3, *k, seed=12), randn(2, 3, 5, 6, seed=13)
    ref = F.conv2d(F.interpolate(x, scale_factor=s, mode="nearest"), w, padding=p, dilation=d)
    kc = K.nearest_conv_kernel(w, s, d)
    p2 = tuple(dd * (kk - 1) - pp for dd, kk, pp in zip(d, k, p))
    assert rel_err(F.conv_transpose2d(x, kc, stride=s, padding=p2), ref) < TOL64
    v = randn(*kc.shape, seed=14)  # the adjoint: <A w, v> = <w, A^T v>
    lhs = float((kc * v).sum())
    rhs = float((w * K.nearest_conv_kernel_grad(v, s, d, w.shape)).sum())
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize(
    "k,s,d,p,n,hw",
    [
        ((3, 3), (2, 2), (1, 1), (1, 1), 2, (5, 6)),  # the U-Net's and reference network's
        ((3, 3), (2, 2), (1, 1), (3, 0), 1, (4, 7)),  # padding above d (k - 1); none
        ((3, 2), (2, 3), (1, 2), (0, 2), 2, (5, 4)),
        ((5, 5), (3, 3), (2, 2), (4, 1), 1, (3, 5)),
        ((1, 1), (2, 1), (1, 1), (0, 0), 2, (1, 3)),  # kernel 1, scale 1 along x, one row
        ((3, 3), (1, 1), (1, 1), (2, 1), 1, (3, 3)),  # scale 1: the convolution alone
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_nearest_conv_weight_grad_from_box_sums_matches_autograd(k, s, d, p, n, hw, dtype):
    """upsample's 16-bit weight gradient (kernels.nearest_grad): exact in float64; in 16
    bits within two roundings of the result of the rounded operands, also for a cotangent
    whose terms cancel between the output phases (in one box), and for a near-constant one
    against a zero-mean input, whose terms cancel between cells: box sums rounded to
    bfloat16 had lost that up to 0.37 of max |dW|."""
    import torch.nn.functional as F

    c, o = 3, 4
    x, w = randn(n, c, *hw, seed=15), randn(o, c, *k, seed=16)
    x = (x - x.mean((0, 2, 3), keepdim=True)).to(dtype)  # zero-mean channels
    with torch.enable_grad():
        xd, wd = x.double(), w.requires_grad_()
        y = F.conv2d(F.interpolate(xd, scale_factor=s, mode="nearest"), wd, None, 1, p, d)
        i, j = torch.arange(y.shape[2])[:, None], torch.arange(y.shape[3])
        checker = (i + j) % 2 * 2 - 1
        near_one = 1 + 0.01 * randn(*y.shape, seed=19)
        for ct in (randn(*y.shape, seed=17), checker + 0.01 * randn(*y.shape, seed=18), near_one):
            ct = ct.to(dtype)
            exact = torch.autograd.grad(y, wd, ct.double(), retain_graph=True)[0]
            g = ct.permute(0, 2, 3, 1)  # NHWC views, as the layers hold them
            dw = K.nearest_conv_weight_grad(g, x.permute(0, 2, 3, 1), k, s, p, d)
            assert dw.dtype == dtype and dw.shape == w.shape
            tol = TOL64 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps
            assert rel_err(dw.double(), exact) < tol


def test_nearest_conv_weight_grad_in_float16_does_not_overflow_its_box_sums():
    """A box sums s * s cotangent values: 4 x 30000 leaves float16's range (inf, then NaN
    against zero input pixels) though dW is about 1900; float16 multiplies them in float32."""
    g = torch.full((1, 6, 6, 1), 30000.0, dtype=torch.float16)
    x = torch.zeros(1, 3, 3, 1, dtype=torch.float16)
    x[0, 1, 1] = 1e-3
    dw = K.nearest_conv_weight_grad(g, x, (3, 3), (2, 2), (1, 1), (1, 1))
    exact = 4 * 30000.0 * float(x[0, 1, 1])  # every tap's box holds 4 values of g
    assert dw.dtype == torch.float16 and torch.allclose(
        dw.float(), torch.full_like(dw, exact).float(), rtol=2e-3
    )


def test_channel_sums_of_an_expanded_tensor_equal_those_of_a_contiguous_one():
    """An expanded cotangent (what autograd makes of ``.sum()``, stride 0) is summed as its
    contiguous copy would be (a matrix-vector product on it once was ~50x less accurate)."""
    for g in (
        torch.tensor(0.01).expand(100, 16, 16, 3),
        torch.rand(1, 1, 1, 8).expand(16, 64, 64, 8),
    ):
        assert torch.equal(K.channel_sums(g), K.channel_sums(g.contiguous()))


@pytest.mark.parametrize(
    "c, o, k, s",
    [
        (8, 16, (4, 4), (2, 2)),  # implicit GEMM, by blocks
        (8, 4, (4, 4), (2, 2)),  # implicit GEMM, z kept whole (O < THIN_TAPS)
        (3, 9, (4, 4), (2, 2)),  # im2col, by blocks
        (3, 4, (3, 3), (2, 2)),  # im2col kept whole (O < THIN)
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_with_its_weight_gradient_at_once_matches_the_two_apart(monkeypatch, c, o, k, s, bias):
    """``grad_for`` (a transposed convolution's pullback) gives the output and the weight
    gradient together, in blocks of one image, as the forward pass and the gradient apart."""
    n, hw, p = 3, (9, 7), (1, 1)
    x, weight = randn(n, *hw, c, seed=0), randn(o, c, *k, seed=1)
    b = randn(o, seed=2) if bias else None
    out_hw = tuple((h + 2 * q - kk) // ss + 1 for h, q, kk, ss in zip(hw, p, k, s))
    a = randn(n, *out_hw, o, seed=3)
    geometry = (k, s, p, (1, 1), out_hw)
    y_ref, weight_grad = K.conv_and_weight_grad(x, weight, b, *geometry, like_torch=False)
    dw_ref = weight_grad(a)
    set_in_kernels(monkeypatch, "GRAD_BLOCK_BYTES", 1)
    y, dw = K.conv_and_weight_grad(x, weight, b, *geometry, like_torch=False, grad_for=a)
    assert rel_err(y, y_ref) < TOL64 and rel_err(dw, dw_ref) < TOL64


def test_constants_cached_under_inference_mode_serve_autograd_later():
    """The first call of a shape inside torch.inference_mode (a predict) had cached inference
    tensors, which autograd refuses to save: every later call of that shape with parameters
    that require grad failed, until the process restarted."""
    from n2nfunc import kernels

    for layer, shape in [
        (nf.upsample(8, 3, 2, 1), (2, 8, 4, 5)),
        (nf.conv_transpose2d(4, 4, stride=2), (2, 3, 5, 6)),
    ]:
        for cached in (
            kernels.polyphase._phase_matrix,
            kernels.polyphase._phase_kron,
            kernels.polyphase._nearest_matrix,
        ):
            cached.cache_clear()
        _, params = layer.init(torch.Generator().manual_seed(0), shape)
        x = torch.randn(shape)
        with torch.inference_mode():
            expected = layer.apply(params, x)
        tracked = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
        with torch.enable_grad():
            y = layer.apply(tracked, x)
            y.sum().backward()
        assert torch.allclose(y.detach(), expected, atol=1e-5)
        assert all(p.grad is not None for p in tracked.values())


def test_gather_indices_and_slopes_made_under_inference_mode_serve_autograd_later():
    """The weight relayouts' cached gather indices and LeakyReLU's cached prelu weight, first
    made inside torch.inference_mode (a pullback or a predict there), had broken every later
    call that autograd records, until the process restarted."""
    from n2nfunc.kernels import relayout

    relayout._INDEX.clear()
    layer = nf.serial(nf.conv2d(16, 4, stride=2, padding=1), nf.leaky_relu(0.2))
    _, params = layer.init(torch.Generator().manual_seed(0), (2, 8, 16, 16))
    x = torch.randn(2, 8, 16, 16)
    with torch.inference_mode():
        y, pullback = layer.vjp(params, x)
        grads, _ = pullback(torch.ones_like(y))
    tracked = nf.tree.map(lambda v: torch.nn.Parameter(v.clone()), params)
    with torch.enable_grad():
        y2, pullback = layer.vjp(tracked, x.clone().requires_grad_())
        grads2, _ = pullback(torch.ones_like(y2))
        layer.apply(tracked, x).sum().backward()
    assert torch.allclose(y2.detach(), y) and all(
        torch.allclose(a.detach(), b) for a, b in zip(nf.tree.leaves(grads2), nf.tree.leaves(grads))
    )
    assert all(p.grad is not None for p in nf.tree.leaves(tracked))


def test_engine_constants_live_in_one_module(monkeypatch):
    """Each block size and threshold is bound only in the submodule that defines it (no
    ``from .s2d import WIDE_TAPS`` copies, which a change in s2d would not reach), and a value
    set there steers the engines."""
    from types import ModuleType

    modules = {n: m for n, m in vars(K).items() if isinstance(m, ModuleType)}
    constants = {}
    for name, module in modules.items():
        for key, value in vars(module).items():
            if key.isupper() and isinstance(value, int) and not isinstance(value, bool):
                constants.setdefault(key, []).append(name)
    assert {"THIN", "WIDE_TAPS", "THIN_TAPS", "GRAD_BLOCK_BYTES"} <= set(constants)
    shared = {key: names for key, names in constants.items() if len(names) > 1}
    assert not shared, f"constants bound in several kernel modules: {shared}"
    assert not any(key in vars(K) for key in constants), "the package copies a constant"
    x = torch.zeros(1, 8, 8, 32)
    assert K.rows_applies(x, (3, 3), (1, 1), (1, 1))
    monkeypatch.setattr(K.s2d, "WIDE_TAPS", 10**9)
    assert not K.rows_applies(x, (3, 3), (1, 1), (1, 1))


def test_relaid_gathers_what_the_arrangement_copies():
    """Weight relayouts by a cached gather: the same numbers as the arrangement's own copy,
    for flips and permutations, non-contiguous inputs, several dtypes under one cached index,
    and above the size limit (a plain copy)."""
    from n2nfunc.kernels import relayout

    def arrange(v):
        return v.permute(3, 1, 0, 2).flip(2, 3)

    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        d = torch.randn(3, 5, 3, 7).to(dtype)
        for t in (d, d.transpose(0, 2).contiguous().transpose(0, 2)):  # (a strided input)
            out = relayout.relaid(t, (3, 5, 3, 7), arrange, "test")
            assert out.is_contiguous() and torch.equal(out, arrange(t).contiguous())
    assert sum(k[0] == "test" for k in relayout._INDEX) == 1  # one index for all of them
    big = torch.randn(relayout.GATHER_LIMIT + 1)
    out = relayout.relaid(big, (big.numel(), 1), lambda v: v.t(), "big")
    assert torch.equal(out, big.view(1, -1)) and ("big", (big.numel(), 1), big.device) not in (
        relayout._INDEX
    )
    for i in range(relayout.INDEX_LIMIT + 1):  # a bounded cache: dropped, then made again
        relayout.relaid(d, (3, 5, 3, 7), arrange, ("sweep", i))
    assert 1 <= len(relayout._INDEX) <= relayout.INDEX_LIMIT
