"""The --noise grammar and Noise2Noise pairs: zero-mean unclipped targets, independent draws,
blind levels, determinism, photo crops."""

import re

import pytest
import torch

from n2nfunc import argtypes
from n2nfunc.data.noise import (
    NoiseSpec,
    add_noise,
    clean_for,
    noisy_pair,
    parse_noise,
    photo_levels,
    photo_noise_pairs,
    random_crops,
)
from n2nfunc.data.photos import mixed_factor_pairs
from n2nfunc.data.synthetic import make_pairs


@pytest.mark.parametrize(
    "text, spec",
    [
        ("gaussian:25", NoiseSpec("gaussian", 25, 25)),
        ("gaussian:0-50", NoiseSpec("gaussian", 0, 50)),
        ("gaussian:12.5-12.5", NoiseSpec("gaussian", 12.5, 12.5)),
        ("poisson:30", NoiseSpec("poisson", 30, 30)),
        ("poisson:5-50", NoiseSpec("poisson", 5, 50)),
        ("downsample", NoiseSpec("downsample", 4, 4)),
        ("downsample:8", NoiseSpec("downsample", 8, 8)),
    ],
)
def test_grammar_accepts(text, spec):
    assert parse_noise(text) == spec
    assert parse_noise(str(spec)) == spec  # str() round-trips


@pytest.mark.parametrize(
    "text, why",
    [
        ("gauss:25", "unknown kind"),
        ("gaussian", "needs a level"),
        ("gaussian:", "needs a level"),
        ("gaussian:abc", "not a number"),
        ("gaussian:50-10", "empty"),
        ("gaussian:0", "not all zero"),
        ("gaussian:-5", "sigma must be in"),
        ("poisson:-5", "peak must be from 0.1 to 1e\\+06"),
        ("gaussian:-", "'-' is not a number or a range"),  # (it had blamed sigma's range)
        ("poisson:-x", "'-x' is not a number or a range"),
        ("gaussian:300", "sigma"),
        ("gaussian:nan", "finite"),
        ("gaussian:1-inf", "finite"),
        ("poisson:0", "peak must be from 0.1 to 1e\\+06"),
        ("poisson:0-30", "peak must be from 0.1 to 1e\\+06"),
        ("downsample:1", "integer from 2 to 16"),
        ("downsample:2.5", "integer from 2 to 16"),
        ("downsample:1000", "integer from 2 to 16"),  # rendered 1000x larger: terabytes
        ("downsample:\u00b2", "integer from 2 to 16"),  # a superscript two is isdigit()
        ("poisson:1e20", "peak must be from"),  # past torch.poisson's range: black images
        ("poisson:5-1e7", "peak must be from"),
        ("", "unknown kind"),
    ],
)
def test_grammar_rejects_with_the_text(text, why):
    with pytest.raises(ValueError, match=why) as e:
        parse_noise(text)
    assert repr(text) in str(e.value) and "gaussian:SIGMA" in str(e.value)


def test_levels_in_exponent_notation():
    """(the "-" of an exponent is not the range's)"""
    assert parse_noise("gaussian:1e-1") == ("gaussian", 0.1, 0.1)
    assert parse_noise("gaussian:1e-1-2.5e1") == ("gaussian", 0.1, 25.0)
    assert parse_noise("poisson:.5-1E3") == ("poisson", 0.5, 1000.0)


def test_low_poisson_peaks_keep_builtin_targets_unbiased():
    """A built-in target is int16 on the 0-255 scale: at the lowest peak no photon count
    that occurs overflows it (at 0.001, the old floor, targets averaged 0.06 for 0.43)."""
    parse_noise("poisson:0.1")
    with pytest.raises(ValueError, match="peak must be from 0.1"):
        parse_noise("poisson:0.05")
    noisy, clean = make_pairs(200, "val", "poisson:0.1", seed=1)
    _, target = make_pairs(200, "train", "poisson:0.1", seed=1)
    assert int(target.max()) < 32767
    assert abs(float(target.float().mean()) - float(clean.float().mean())) < 0.05 * 255


def test_the_command_line_keeps_the_stripped_text():
    """(" downsample" named the data differently from "downsample": --photos then took
    factor 4 alone instead of the mixed factors)"""
    assert argtypes.noise(" downsample ") == "downsample"
    assert argtypes.noise("gaussian:25 ") == "gaussian:25"


def test_fewer_mixed_factor_pairs_than_factors():
    photo = torch.randint(0, 256, (3, 400, 400), dtype=torch.uint8)
    for n in (1, 3):
        a, b = mixed_factor_pairs([photo], n, "train")
        assert a.shape == b.shape == (n, 3, 32, 32)
    with pytest.raises(ValueError, match="need at least one pair, got n=0"):
        mixed_factor_pairs([photo], 0, "train")


def test_not_a_string():
    with pytest.raises(TypeError, match="noise must be a string"):
        parse_noise(25)


def _gray(n=4, size=64, value=0.5):
    return torch.full((n, 3, size, size), value)


@pytest.mark.parametrize("text", ["gaussian:40", "poisson:10"])
def test_targets_are_zero_mean_and_unclipped_inputs_clipped(text):
    g = torch.Generator().manual_seed(0)
    for value in (0.02, 0.5, 0.98):  # near black and white, clipping would bias the mean
        clean = _gray(value=value)
        inp, target = noisy_pair(clean, text, g)
        assert float(inp.min()) >= 0 and float(inp.max()) <= 1
        assert abs(float((target - clean).mean())) < 0.004
        if value > 0.9:
            assert float(target.max()) > 1  # not clipped
    inp, target = noisy_pair(_gray(value=0.02), "gaussian:40", g)
    assert float(target.min()) < 0


def test_gaussian_sigma_and_blind_levels_per_image():
    g = torch.Generator().manual_seed(1)
    clean = _gray(n=64)
    _, target = noisy_pair(clean, "gaussian:25", g)
    assert abs(float((target - clean).std()) * 255 / 25 - 1) < 0.01
    _, target = noisy_pair(clean, "gaussian:0-50", g)
    sigmas = (target - clean).flatten(1).std(1) * 255
    assert float(sigmas.min()) < 10 and float(sigmas.max()) > 40  # uniform over the range
    assert len(set((sigmas / 0.5).round().tolist())) > 30  # one level per image


def test_pair_shares_the_level_but_draws_independently():
    g = torch.Generator().manual_seed(2)
    clean = _gray(n=32)
    a, b = noisy_pair(clean, "gaussian:0-50", g)
    na, nb = (a - clean).flatten(1), (b - clean).flatten(1)
    assert torch.allclose(na.std(1), nb.std(1), rtol=0.1, atol=2e-3)  # same level
    corr = float((na * nb).mean() / (na.std() * nb.std()))
    assert abs(corr) < 0.01  # independent draws
    assert not torch.equal(a, b)


def test_poisson_variance():
    g = torch.Generator().manual_seed(3)
    clean = _gray(n=16, value=0.4)
    _, t = noisy_pair(clean, "poisson:30", g)
    assert abs(float(t.var()) / (0.4 / 30) - 1) < 0.03  # Var = x / peak


def test_downsample_pairs_and_their_clean_image():
    g = torch.Generator().manual_seed(4)
    clean = torch.rand(2, 3, 64, 48, generator=g)
    a, b = noisy_pair(clean, "downsample:8", g)
    assert a.shape == b.shape == (2, 3, 8, 6) == clean_for(clean, "downsample:8").shape
    assert not torch.equal(a, b)
    assert clean_for(clean, "gaussian:5") is clean


def test_deterministic_per_seed():
    clean = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for text in ("gaussian:0-50", "poisson:5-50", "downsample:4"):
        one = noisy_pair(clean, text, torch.Generator().manual_seed(7))
        two = noisy_pair(clean, text, torch.Generator().manual_seed(7))
        other = noisy_pair(clean, text, torch.Generator().manual_seed(8))
        assert all(torch.equal(x, y) for x, y in zip(one, two))
        assert not torch.equal(one[0], other[0])


def test_add_noise_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        add_noise(torch.rand(3, 8, 8), "gaussian:5", torch.Generator())
    with pytest.raises(ValueError, match="at least 8x8"):
        add_noise(torch.rand(1, 3, 4, 4), "downsample:8", torch.Generator())


def _photos():
    g = torch.Generator().manual_seed(5)
    return [
        torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8, generator=g),
        torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8, generator=g),
    ]


def test_photo_pairs_crops_flips_turns_and_seed():
    photos = _photos()
    a, b = photo_noise_pairs(photos, 6, "gaussian:0-50", size=64, seed=3)
    assert a.shape == b.shape == (6, 3, 64, 64)
    a2, b2 = photo_noise_pairs(photos, 6, "gaussian:0-50", size=64, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    x, y = photo_noise_pairs(photos, 2, "downsample:2", size=64, seed=0)
    assert x.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="at least 64x64"):
        photo_noise_pairs(photos, 2, "gaussian:5", size=32)


def test_random_crops_are_pieces_of_the_image_up_to_a_symmetry():
    img = torch.arange(3 * 9 * 7, dtype=torch.float32).view(3, 9, 7)
    crops = random_crops([img], 20, 5, torch.Generator().manual_seed(0))
    for c in crops:
        found = False
        for k in range(4):
            for flip in (False, True):
                back = c.rot90(-k, (1, 2))
                back = back.flip(2) if flip else back
                v = int(back[0, 0, 0])
                y, x = divmod(v, 7)
                if y + 5 <= 9 and x + 5 <= 7 and torch.equal(back, img[:, y : y + 5, x : x + 5]):
                    found = True
        assert found
    with pytest.raises(ValueError, match="at least 10 pixels"):
        random_crops([img], 1, 10, torch.Generator())


def test_photo_levels_cut_the_crops_of_the_whole_downsampled_photo_without_holding_it():
    from n2nfunc.data.synthetic import box_downsample

    def pyramid(photo, scales):  # the whole photo at each scale, as float [0, 1]
        x = photo.float().div(255)[None]
        out = []
        for s in scales:
            h, w = x.shape[2] // s * s, x.shape[3] // s * s
            out.append(box_downsample(x[:, :, :h, :w], s)[0] if s > 1 else x[0])
        return out

    g = torch.Generator().manual_seed(0)
    photos = [torch.randint(0, 256, (3, 131, 203), dtype=torch.uint8, generator=g)]
    levels = photo_levels(photos, (1, 2, 3))
    assert all(level.photo is photos[0] for level in levels)  # no float copy of the photo
    for level, whole in zip(levels, pyramid(photos[0], (1, 2, 3))):
        assert level.shape == tuple(whole.shape)
        h, w = level.shape[1:]
        for y, x, size in [(0, 0, 20), (5, 9, 17), (h - 21, w - 21, 21)]:
            assert torch.equal(level.crop(y, x, size), whole[:, y : y + size, x : x + size])
    crops = random_crops(levels, 6, 40, torch.Generator().manual_seed(1))
    wholes = [img for p in photos for img in pyramid(p, (1, 2, 3))]
    assert torch.equal(crops, random_crops(wholes, 6, 40, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "spec, said",
    [
        (NoiseSpec("poisson", 0.0, 0.0), "the Poisson peak must be from"),  # (NaN images)
        (NoiseSpec("salt", 1.0, 1.0), "unknown kind 'salt'"),  # (taken as Poisson)
        (NoiseSpec("gaussian", -50.0, -50.0), "sigma must be in [0, 255]"),
        (NoiseSpec("downsample", 3.5, 3.5), "a downsampling factor is one whole number"),
        # not rounded by str's :g (it had read 0.1 and 255), nor an OverflowError or a
        # word about downsampling for a level of another type
        (NoiseSpec("poisson", 0.09999999, 0.09999999), "the Poisson peak must be from"),
        (NoiseSpec("gaussian", 255.0000001, 255.0000001), "sigma must be in [0, 255]"),
        (NoiseSpec("downsample", float("inf"), float("inf")), "must be finite numbers"),
        (NoiseSpec("gaussian", "25", "25"), "must be finite numbers"),
    ],
)
def test_a_noise_spec_made_by_hand_is_checked_as_its_text(spec, said):
    with pytest.raises(ValueError, match=re.escape(said)):
        parse_noise(spec)
    assert parse_noise(NoiseSpec("gaussian", 12.5, 20.0)) == NoiseSpec("gaussian", 12.5, 20.0)
