"""nhwc.pad zeroes exactly its border: checked against torch's F.pad on memory that held NaNs
before (a fresh allocation is often zero already, which would hide a border left unwritten)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from n2nfunc import nhwc


def dirty(numel: int, dtype=torch.float32) -> None:
    """Leave ``numel`` NaNs of ``dtype`` in freed memory, where the next allocation of that
    size lands."""
    junk = torch.full((numel,), float("nan"), dtype=dtype)
    del junk


def test_pad_matches_torch_on_dirty_memory():
    reused = 0
    shapes = [(1, 1, 1, 1), (2, 3, 5, 4), (1, 48, 4, 3), (3, 2, 2, 7), (0, 3, 2, 2), (2, 0, 3, 3)]
    for (n, c, h, w), layout in itertools.product(shapes, ("nchw", "channels_last")):
        x = torch.randn(n, c, h, w)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        for t, b, left, r in itertools.product(range(-1, 3), repeat=4):
            if h + t + b < 0 or w + left + r < 0:  # (empty results included: all border)
                continue
            numel = n * (h + t + b) * (w + left + r) * c
            dirty(numel)
            probe = torch.empty(numel)
            reused += bool(probe.isnan().any())
            del probe
            dirty(numel)
            got = nhwc.pad(nhwc.to_nhwc(x), t, b, left, r)
            assert got.is_contiguous()
            want = F.pad(x, (left, r, t, b))
            assert torch.equal(nhwc.to_nchw(got), want), (x.shape, layout, (t, b, left, r))
    if not reused:  # an allocator that hands freed memory out elsewhere (or poisons it)
        pytest.skip("freed memory did not come back to the next allocation of its size")
    assert reused > 100  # the freed NaNs did come back: the border's zeros were tested


def _inputs_of(n: int, c: int, h: int, w: int, dtype) -> dict:
    """An (N, C, H, W) input in several memory forms: NCHW and channels-last memory, a crop
    and a channel slice of larger tensors (nonzero storage offsets), every other column of a
    wider one."""
    g = torch.Generator().manual_seed(n * 1000 + c * 100 + h * 10 + w)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    big = torch.randn(n + 1, c + 3, h + 2, 2 * w + 1, generator=g).to(dtype)
    return {
        "nchw": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "crop": big[1:, 2 : 2 + c, 1 : 1 + h, 1 : 1 + w],
        "channel slice": big.contiguous(memory_format=torch.channels_last)[1:, 3:, 2:, 1 : 1 + w],
        "every other column": big[1:, :c, :h, : 2 * w : 2],
    }


def test_row_unrolled_matches_the_windows_of_the_padded_input_on_dirty_memory():
    """``row_unrolled`` writes the W-windows of a stride-1 convolution straight from the
    input: every tap of every column, and the padding's zeros, checked against the windows
    of torch's F.pad on memory that held NaNs (any place left unwritten would show), for
    kernel widths 1-5, padding and cropping on every side, images narrower than the kernel,
    inputs with storage offsets and strides of views, in float64 and bfloat16, and empty
    batches."""
    reused = cases = 0
    shapes = [(2, 3, 5, 6), (1, 4, 1, 3), (2, 1, 4, 1), (1, 2, 2, 2), (3, 5, 3, 7), (0, 2, 3, 3)]
    for (n, c, h, w), dtype in itertools.product(shapes, (torch.float64, torch.bfloat16)):
        for layout, x in _inputs_of(n, c, h, w, dtype).items():
            for kw, t, b, left, r in itertools.product(range(1, 6), *[range(-1, 3)] * 4):
                hp, wo = h + t + b, w + left + r - kw + 1
                if hp < 1 or wo < 1 or (dtype != torch.float64 and layout != "crop"):
                    continue  # (bfloat16: one layout is enough)
                numel = n * hp * wo * kw * c
                dirty(numel, dtype)
                probe = torch.empty(numel, dtype=dtype)
                reused += bool(probe.isnan().any())
                del probe
                dirty(numel, dtype)
                got = nhwc.row_unrolled(nhwc.to_nhwc(x), (t, b, left, r), hp, wo, kw)
                xp = nhwc.to_nhwc(F.pad(x, (left, r, t, b)))
                want = torch.stack([xp[:, :, j : j + wo] for j in range(kw)], dim=3)
                assert got.is_contiguous() and torch.equal(got, want), (
                    (n, c, h, w),
                    dtype,
                    layout,
                    kw,
                    (t, b, left, r),
                )
                cases += 1
    assert cases > 5000
    if not reused:
        pytest.skip("freed memory did not come back to the next allocation of its size")
