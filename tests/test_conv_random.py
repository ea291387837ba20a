"""Seeded random convolutions, each aimed at one of the CPU's engines, against
torch.nn.functional + autograd in float64.

The dispatcher (:mod:`n2nfunc.kernels.dispatch`) picks an engine by stride, kernel, channel
counts, image size and memory layout. The float64 grid of ``test_conv.py`` runs small images
over every geometry, and each engine has tests of its own at a few shapes; here each case
draws a configuration in one engine's region (channels, sizes, paddings, memory layout at
random, from a fixed seed), checks the output and every gradient with a random cotangent
(:func:`helpers.assert_conv_matches`), and the test counts the engines that ran: it fails if
a region stops reaching its engine, so that a moved threshold cannot leave an engine
unchecked here. A randomized run of some 90,000 such cases (2026-12-07) found no
disagreement beyond float64 round-off.
"""

import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_conv_matches, params_in, set_in_kernels

import n2nfunc as nf
from n2nfunc.kernels import direct, dispatch, polyphase, row_taps, s2d, strided

TOL = 1e-10
CASES = 40  # per region

# name -> the entry function of each engine, counted wherever n2nfunc.kernels binds it
# (helpers.set_in_kernels)
ENGINES = {
    "row taps": row_taps.row_taps_conv,
    "row-tap gradients from one unrolled g": dispatch._row_tap_grads,
    "thin output: both gradients from one im2col of g": dispatch._thin_output_grads,
    "pairs of columns": row_taps.pair_taps_forward,
    "space-to-depth": s2d.s2d_conv_forward,
    "space-to-depth, both gradients from one matrix": strided._phase_grads,
    "polyphase": polyphase.polyphase_forward,
    "im2col by blocks": direct.cols_products,
}


def _pads(rng, k):
    return tuple(rng.randint(0, kk - 1) for kk in k)


def _stride_one(rng, c_choices, o_choices, hw_range, n_max):
    kh = rng.randint(2, 5)
    k = (kh, rng.choice([kh, rng.randint(1, 5)]))
    h, w = (rng.randint(*hw_range), rng.randint(*hw_range))
    return dict(
        c=rng.choice(c_choices), o=rng.choice(o_choices), k=k, s=(1, 1), p=_pads(rng, k),
        hw=(h, w), n=rng.randint(1, n_max),
    )  # fmt: skip


def _large(rng, o_choices):
    """A stride-1 case past the kernel-taps bounds (row_taps.KERNEL_TAPS_*): at least 2,048
    output pixels and 48 columns, 24 or more input channels."""
    k = (3, 3)
    h, w = rng.randint(44, 54), 2 * rng.randint(26, 30)  # (an even width: pairs)
    return dict(
        c=rng.choice([24, 32]), o=rng.choice(o_choices), k=k, s=(1, 1), p=(1, 1),
        hw=(h, w + 2), n=rng.randint(1, 2),
    )  # fmt: skip


def _strided(rng):
    s = rng.choice([2, 3])
    k = (s * rng.choice([1, 2]), s * rng.choice([1, 2]))
    return dict(
        c=rng.choice([4, 8, 16, 24]), o=rng.choice([3, 16, 24, 32]), k=k, s=(s, s),
        p=_pads(rng, k), hw=(rng.randint(6, 40), rng.randint(6, 40)), n=rng.randint(1, 5),
    )  # fmt: skip


def _im2col(rng):
    """Large strided kernels on a few channels: the im2col matrix, formed again by blocks for
    the weight gradient (more than direct.GRAD_BLOCK_BYTES)."""
    return dict(
        c=rng.choice([1, 3]), o=rng.choice([8, 16, 48]), k=(5, 5), s=(2, 2), p=(2, 2),
        hw=(rng.randint(100, 130), rng.randint(100, 130)), n=rng.randint(3, 4),
    )  # fmt: skip


# name -> (draw a configuration, the engines its cases must reach)
REGIONS = {
    "row taps": (
        lambda rng: _stride_one(rng, [16, 24, 32, 48], [16, 24, 32, 48], (5, 20), 4),
        {"row taps", "row-tap gradients from one unrolled g"},
    ),
    "thin outputs": (
        lambda rng: _stride_one(rng, [16, 24, 48], [1, 2, 3, 5, 8], (5, 24), 4),
        {"row taps", "thin output: both gradients from one im2col of g"},
    ),
    "large images": (lambda rng: _large(rng, [16, 32]), {"kernel taps"}),
    "large images, narrow outputs": (lambda rng: _large(rng, [3, 8, 24]), {"pairs of columns"}),
    "strided": (_strided, {"space-to-depth", "space-to-depth, both gradients from one matrix"}),
    "im2col": (_im2col, {"im2col by blocks"}),
}


def _layout(x, rng):
    """``x`` as it is, channels-last, or a strided view into a larger tensor (the same
    values)."""
    kind = rng.choice(["contiguous", "channels_last", "view"])
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "view":
        n, c, h, w = x.shape
        big = torch.zeros(n, c + 1, h + 2, 2 * w, dtype=x.dtype)
        view = big[:, 1:, 1 : h + 1, ::2]
        view.copy_(x)
        return view
    return x


def _counting(monkeypatch, counts):
    """Counts into ``counts`` each call of an engine of ENGINES, and each time the row taps'
    forward pass takes kernel taps (``kernel_taps_pay`` true)."""
    pays = row_taps.kernel_taps_pay

    def kernel_taps_pay(*args):
        taken = pays(*args)
        counts["kernel taps"] += taken
        return taken

    set_in_kernels(monkeypatch, "kernel_taps_pay", kernel_taps_pay)
    for name, engine in ENGINES.items():

        def counted(*args, _engine=engine, _name=name, **kwargs):
            counts[_name] += 1
            return _engine(*args, **kwargs)

        set_in_kernels(monkeypatch, engine.__name__, counted)


def _conv_case(cfg, seed, transposed):
    """The layer, its float64 params, input and torch reference for one configuration."""
    c, o, k, s, p, (h, w), n = (cfg[key] for key in ("c", "o", "k", "s", "p", "hw", "n"))
    if transposed:
        out_pad = tuple(random.Random(seed).randint(0, ss - 1) for ss in s)
        layer = nf.conv_transpose2d(o, k, stride=s, padding=p, output_padding=out_pad)

        def reference(x, wt, b):
            return F.conv_transpose2d(x, wt, b, stride=s, padding=p, output_padding=out_pad)

    else:
        layer = nf.conv2d(o, k, stride=s, padding=p)

        def reference(x, wt, b):
            return F.conv2d(x, wt, b, stride=s, padding=p)

    shape = (n, c, h, w)
    params = params_in(layer, shape, torch.float64, seed=seed)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return layer, params, x, reference


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_random_convolutions_match_torch_in_float64(monkeypatch, region):
    draw, engines = REGIONS[region]
    rng = random.Random(f"conv {region}")
    counts: Counter = Counter()
    _counting(monkeypatch, counts)
    for _ in range(CASES):
        cfg, seed = draw(rng), rng.randrange(1 << 30)
        layer, params, x, reference = _conv_case(cfg, seed, transposed=False)
        assert_conv_matches(layer, params, _layout(x, rng), reference, TOL, False)
    missing = [name for name in sorted(engines) if not counts[name]]
    assert not missing, f"{region}: engines not reached: {missing} (counts: {dict(counts)})"


def test_random_transposed_convolutions_match_torch_in_float64(monkeypatch):
    rng = random.Random("conv_transpose")
    counts: Counter = Counter()
    _counting(monkeypatch, counts)
    for _ in range(2 * CASES):
        kh = rng.randint(1, 5)
        k = (kh, rng.choice([kh, rng.randint(1, 5)]))
        cfg = dict(
            c=rng.choice([3, 16, 32]), o=rng.choice([1, 3, 16, 48]), k=k,
            s=(rng.randint(1, 3), rng.randint(1, 3)), p=_pads(rng, k),
            hw=(rng.randint(2, 24), rng.randint(2, 24)), n=rng.randint(1, 4),
        )  # fmt: skip
        seed = rng.randrange(1 << 30)
        layer, params, x, reference = _conv_case(cfg, seed, transposed=True)
        assert_conv_matches(layer, params, _layout(x, rng), reference, TOL, False)
    assert counts["polyphase"], dict(counts)
