import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from helpers import code_running_pickle

import n2nfunc as nf
from n2nfunc import checkpoint
from n2nfunc.data import (
    builtin_pairs,
    load_folder_pairs,
    load_pair_file,
    make_pairs,
    mixed_factor_pairs,
    photo_pairs,
    read_image,
    write_image,
)
from n2nfunc.data.synthetic import box_downsample, point_sample
from n2nfunc.metrics import psnr


def test_pairs_are_deterministic_and_shaped():
    a = make_pairs(40, "train", seed=3, chunk=16)
    b = make_pairs(40, "train", seed=3, chunk=16)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].shape == (40, 3, 32, 32) and a[0].dtype == torch.uint8
    assert not torch.equal(a[0], a[1])  # two different noisy views
    val = make_pairs(40, "val", seed=3)
    assert not torch.equal(val[0][:5], a[0][:5])  # disjoint streams


def test_downsample_noise_is_unbiased_and_course_like():
    g = torch.Generator().manual_seed(0)
    high = torch.rand(2, 3, 16, 16, generator=g)
    mean = torch.stack([point_sample(high, 4, g) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, box_downsample(high, 4), atol=0.02)
    noisy, clean = make_pairs(400, "val", seed=1)
    assert 19.5 < psnr(noisy.float(), clean.float(), 255.0) < 22.5  # course data: 20.7 dB


@pytest.mark.parametrize(
    "noise,low,high",
    [
        ("gaussian:25", 19.0, 21.5),
        ("poisson:30", 15.0, 25.0),
        ("gaussian:10-40", 18.0, 28.0),
        ("downsample:8", 17.0, 24.0),
    ],
)
def test_builtin_noise_models(noise, low, high):
    noisy, clean = make_pairs(50, "val", noise)
    assert low < psnr(noisy.float(), clean.float(), 255.0) < high


def test_builtin_blind_levels_vary_per_pair():
    a, b = make_pairs(200, "train", "gaussian:0-50", seed=2)
    spread = [(u.float() - v.float()).std().item() for u, v in zip(a, b)]
    assert max(spread) > 3 * min(spread)  # blind levels: pairs differ in noise strength


def test_builtin_pairs_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path))
    first = builtin_pairs(24, "train", seed=5)
    assert len(list(tmp_path.iterdir())) == 1
    again = builtin_pairs(24, "train", seed=5)
    assert torch.equal(first[0], again[0])
    next(tmp_path.iterdir()).write_bytes(b"garbage")  # a damaged cache is regenerated
    assert torch.equal(builtin_pairs(24, "train", seed=5)[1], first[1])
    cached = next(tmp_path.iterdir())  # an altered one (8 of the 24 pairs) too: it was used
    checkpoint.save(cached, {"first": first[0][:8], "second": first[1][:8]})
    assert torch.equal(builtin_pairs(24, "train", seed=5)[1], first[1])
    leftover = cached.with_name(f".{cached.name}.999999999.tmp")  # a writer killed (-9)
    leftover.write_bytes(b"partial")
    os.utime(leftover, (0, 0))  # long untouched
    assert torch.equal(builtin_pairs(24, "train", seed=5)[0], first[0])  # a cache hit ...
    assert not leftover.exists()  # ... clears it (none had saved since to sweep it)
    import n2nfunc.data as data_module

    def unreadable(path):  # a cache entry (or folder) this user may not read
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data_module.checkpoint, "load", unreadable)
    assert torch.equal(builtin_pairs(24, "train", seed=5)[1], first[1])  # made again
    monkeypatch.setenv("N2NFUNC_CACHE", str(cached))  # a file where the folder goes
    said = []
    assert torch.equal(builtin_pairs(24, "train", seed=5, announce=said.append)[0], first[0])
    assert said[-1].startswith(f"note: the pairs are not cached ({cached}")


def test_course_file_loader(tmp_path):
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    good = tmp_path / "train_data.pkl"
    torch.save((x, x.flip(0)), good)
    a, b = load_pair_file(good)
    assert torch.equal(a, x) and torch.equal(b, x.flip(0))
    cases = {
        "missing.pkl": (None, FileNotFoundError, "not found"),
        "empty.pkl": (b"", ValueError, "is empty"),
        "garbage.pkl": (
            b"not a torch file at all",
            ValueError,
            "garbage.pkl (was not loaded|is not a readable)",
        ),
        "float.pkl": (
            (x.float(), x.float()),
            ValueError,
            "dtype torch.float32, expected torch.uint8",
        ),
        "shape.pkl": ((x[:, :2], x[:, :2]), ValueError, r"shape \(5, 2, 32, 32\)"),
        "single.pkl": (x, ValueError, "expected a tuple of two tensors"),
        "mismatch.pkl": ((x, x[:3]), ValueError, "differ in shape"),
    }
    for name, (content, error, pattern) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            torch.save(content, path)
        with pytest.raises(error, match=pattern):
            load_pair_file(path)


def test_course_loader_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(code_running_pickle(marker))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning reaches the user either
        with pytest.raises(ValueError, match="nothing in it was executed"):
            load_pair_file(path)
    assert not marker.exists()


def test_images_and_folder_pairs(tmp_path):
    rgb = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    for sub in ("a", "b"):
        write_image(tmp_path / sub / "one.png", rgb)
    write_image(tmp_path / "a" / "only_in_a.png", rgb)
    a, b = load_folder_pairs(tmp_path)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)  # 1 x 2 tiles of 32
    back = read_image(tmp_path / "a" / "one.png")
    assert torch.equal(back.rgb, rgb) and back.alpha is None and not back.grey
    alpha = torch.full((1, 40, 70), 128, dtype=torch.uint8)
    write_image(tmp_path / "rgba.png", rgb, alpha)
    assert torch.equal(read_image(tmp_path / "rgba.png").alpha, alpha)
    for suffix in (".jpg", ".bmp"):  # (Pillow's own words had named neither file nor option)
        with pytest.raises(ValueError, match=rf"rgba\{suffix}: \{suffix} files have no transp"):
            write_image(tmp_path / f"rgba{suffix}", rgb, alpha)
        assert not (tmp_path / f"rgba{suffix}").exists()
    write_image(tmp_path / "grey.png", rgb, grey=True)
    grey = read_image(tmp_path / "grey.png")
    assert grey.grey and torch.equal(grey.rgb[0], grey.rgb[1])
    with pytest.raises(ValueError, match="no image file names common"):
        (tmp_path / "c" / "a").mkdir(parents=True)
        (tmp_path / "c" / "b").mkdir()
        load_folder_pairs(tmp_path / "c")
    write_image(tmp_path / "b" / "one.png", rgb[:, :36])  # width x height, as denoise says it
    with pytest.raises(ValueError, match="one.png is 70x40 in a/ but 70x36 in b/"):
        load_folder_pairs(tmp_path)


def test_folder_pairs_name_the_images_they_leave_out(tmp_path):
    rgb = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    for sub in ("a", "b"):
        write_image(tmp_path / sub / "one.png", rgb)
        write_image(tmp_path / sub / "tiny.png", rgb[:, :20, :])
    for i in range(5):
        write_image(tmp_path / "b" / f"only_b{i}.png", rgb)
    notes = []
    a, _ = load_folder_pairs(tmp_path, announce=notes.append)
    assert a.shape[0] == 1 and len(notes) == 1
    assert "5 without a partner" in notes[0] and "b/only_b0.png" in notes[0]
    assert "and 2 more" in notes[0] and "1 smaller than 32x32 (tiny.png)" in notes[0]
    for sub in ("a", "b"):
        shutil.rmtree(tmp_path / sub)
        write_image(tmp_path / sub / "one.png", rgb)
    notes.clear()
    load_folder_pairs(tmp_path, announce=notes.append)
    assert notes == []  # every image used: nothing to say
    for sub in ("a", "b"):  # macOS's AppleDouble files and a folder named like an image
        (tmp_path / sub / "._one.png").write_bytes(b"\0\5\x16\7 not an image")
        (tmp_path / sub / "folder.png").mkdir()
    write_image(tmp_path / "a" / "broken.png", rgb)
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG truncated")
    a, _ = load_folder_pairs(tmp_path, announce=notes.append)  # stopped the whole load
    assert a.shape[0] == 1 and notes == [
        f"note: {tmp_path}: left out 1 that cannot be read (broken.png)"
    ]


def test_photo_pairs_from_an_image():
    g = torch.Generator().manual_seed(0)
    photo = (torch.rand(3, 300, 260, generator=g) * 255).to(torch.uint8)
    a, b = photo_pairs([photo], 20, "train", factor=4, scales=(1, 2))
    assert a.shape == (20, 3, 32, 32) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="at least 512 pixels"):
        photo_pairs([photo], 5, "val", factor=16)


def test_read_image_refuses_a_decompression_bomb_in_one_line(tmp_path):
    """Pillow's guard raises DecompressionBombError, which is not an OSError."""
    from PIL import Image

    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match=r"bomb.png: it decodes to more pixels than Pillow's"):
        read_image(tmp_path / "bomb.png")


def test_a_dark_16_bit_image_is_scaled_as_16_bit(tmp_path):
    """16-bit by its mode, not by its brightest pixel: a dark frame is not read 257x too
    bright (and two frames either side of 255 keep one scale)."""
    np = pytest.importorskip("numpy")
    from PIL import Image

    dark = (np.arange(64 * 64).reshape(64, 64) % 200).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    picture = read_image(tmp_path / "dark16.png")
    assert picture.deep and picture.grey
    assert torch.equal(picture.rgb[0], torch.from_numpy((dark / 257).round().astype(np.uint8)))


def test_exif_orientation_is_applied(tmp_path):
    """A phone's portrait photo, stored landscape with Orientation = 6 (rotate 90 degrees),
    comes out upright."""
    from PIL import Image

    im = Image.new("RGB", (80, 40), (200, 10, 10))
    im.paste((10, 200, 10), (0, 0, 10, 40))  # a green band on the stored image's left edge
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    rgb = read_image(tmp_path / "portrait.jpg").rgb
    assert tuple(rgb.shape) == (3, 80, 40)  # displayed 40 wide, 80 high
    assert rgb[1, :5].float().mean() > 150 and rgb[0, :5].float().mean() < 60  # band on top


@pytest.mark.parametrize("noise", ["gaussian:50", "poisson:5"])
def test_builtin_training_targets_of_camera_noise_are_not_clipped(noise, tmp_path, monkeypatch):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path))
    first, second = builtin_pairs(300, "train", noise)
    assert first.dtype == torch.uint8 and second.dtype == torch.int16
    assert int(second.max()) > 255  # beyond white (and, for Gaussian noise, below black)
    assert int(second.min()) < 0 if noise.startswith("gaussian") else int(second.min()) == 0
    again = builtin_pairs(300, "train", noise)  # from the cache, as made
    assert torch.equal(again[1], second) and len(list(tmp_path.iterdir())) == 1
    _, clean = builtin_pairs(50, "val", noise)
    assert clean.dtype == torch.uint8
    aliasing = builtin_pairs(20, "train", "downsample:4")
    assert aliasing[0].dtype == aliasing[1].dtype == torch.uint8


def test_the_cache_tells_apart_levels_that_print_alike(tmp_path, monkeypatch):
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path))
    builtin_pairs(4, "val", "gaussian:12.3456")
    builtin_pairs(4, "val", "gaussian:12.34564")
    assert len(list(tmp_path.iterdir())) == 2


def test_transparency_of_palette_and_trns_images_is_kept(tmp_path):
    from PIL import Image

    pal = Image.new("P", (8, 6), 0)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.paste(1, (0, 0, 4, 6))
    pal.save(tmp_path / "pal.png", transparency=0)  # index 0 transparent
    pic = read_image(tmp_path / "pal.png")
    assert pic.alpha is not None and not pic.grey
    assert int(pic.alpha[0, 0, 0]) == 255 and int(pic.alpha[0, 0, 7]) == 0
    assert pic.rgb[:, 0, 0].tolist() == [200, 100, 50]
    grey = Image.new("L", (5, 5), 200)
    grey.putpixel((0, 0), 7)
    grey.save(tmp_path / "grey.png", transparency=7)  # a tRNS grey level
    pic = read_image(tmp_path / "grey.png")
    assert pic.grey and pic.alpha is not None
    assert int(pic.alpha[0, 0, 0]) == 0 and int(pic.alpha[0, 1, 1]) == 255


def test_an_interrupted_image_write_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    from PIL import Image

    rgb = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    write_image(tmp_path / "out.png", rgb)
    before = (tmp_path / "out.png").read_bytes()

    def interrupted(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", rgb.flip(1))
    assert (tmp_path / "out.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left


def test_lossy_images_are_written_at_high_quality(tmp_path):
    """A denoised photo written as JPEG or WebP keeps its quality (Pillow's defaults, JPEG
    quality 75 with colour at half resolution, gave 32 dB on this smooth image; now 43)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, 24, 32, generator=g)
    smooth = torch.nn.functional.interpolate(small, size=(192, 256), mode="bilinear")[0]
    rgb = (smooth * 255).round().to(torch.uint8)
    for ext, floor in ((".jpg", 40), (".webp", 35)):
        write_image(tmp_path / f"out{ext}", rgb)
        back = read_image(tmp_path / f"out{ext}").rgb
        assert psnr(back[None].float(), rgb[None].float(), 255) > floor, ext
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.layer[0][1:3] == im.layer[1][1:3] == (1, 1)  # colour at full resolution


def test_a_large_image_below_pillows_hard_limit_reads_without_a_raw_warning(tmp_path, monkeypatch):
    from PIL import Image

    write_image(tmp_path / "big.png", torch.zeros(3, 12, 12, dtype=torch.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 pixels: warned, not refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "big.png").rgb.shape == (3, 12, 12)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # beyond twice the limit: refused
    with pytest.raises(ValueError, match="more pixels than Pillow's safety limit"):
        read_image(tmp_path / "big.png")


def test_large_downsampling_factors_are_made_in_bounded_memory():
    """Images are rendered at FACTOR x 32 pixels: at factor 16, 300 of them at once took
    about 3 GB more than the process's size after its imports (1,000: 10 GB); in chunks,
    0.8-1.1 GB (factor 4: 0.2 GB). Measured from the size after the imports, which is 0.2 GB
    with torch's CPU build and 0.5 GB with its CUDA build."""
    import subprocess
    import sys

    script = (
        "import resource\n"
        "from n2nfunc.data.synthetic import make_pairs\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "a, b = make_pairs(300, 'train', 'downsample:16')\n"
        "assert a.shape == b.shape == (300, 3, 32, 32)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 1_600_000  # KiB


def test_cache_versions_change_only_where_the_data_did():
    from n2nfunc.data import generator_version, parse_noise

    versions = {t: generator_version(parse_noise(t)) for t in ("downsample", "downsample:4")}
    assert versions == {"downsample": 1, "downsample:4": 1}  # the default cache stays valid
    assert generator_version(parse_noise("downsample:8")) == 2
    assert generator_version(parse_noise("gaussian:25")) == 2


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_an_animation_is_refused_and_a_tiffs_first_page_is_read(tmp_path, suffix):
    """An animated GIF, PNG or WebP was read as its first frame without a word; a
    multi-page TIFF is read as its first page and a camera JPEG with a preview (MPO) as its
    main picture."""
    from PIL import Image

    from n2nfunc.data.files import read_image

    frames = [Image.new("RGB", (9, 7), (40 * i, 200 - 40 * i, 3)) for i in range(3)]
    for name, extra in (("still", []), ("anim", frames[1:])):
        frames[0].save(tmp_path / f"{name}{suffix}", save_all=True, append_images=extra)
    assert read_image(tmp_path / f"still{suffix}").rgb.shape == (3, 7, 9)
    with pytest.raises(ValueError, match=r"anim\.\w+: an animation of 3 frames; .*still images"):
        read_image(tmp_path / f"anim{suffix}")
    frames[1].save(tmp_path / "pages.tiff", save_all=True, append_images=[frames[0], frames[2]])
    assert read_image(tmp_path / "pages.tiff").rgb[:, 0, 0].tolist() == [40, 160, 3]
    big = Image.new("RGB", (40, 30), (200, 100, 50))  # a camera JPEG with its preview (MPO)
    big.save(tmp_path / "cam.jpg", format="MPO", save_all=True, append_images=[frames[0]])
    assert read_image(tmp_path / "cam.jpg").rgb.shape == (3, 30, 40)


def test_damaged_images_and_odd_pair_tensors_are_one_clear_error(tmp_path):
    from PIL import Image

    from n2nfunc.data.files import check_pairs, read_image

    pixels = torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8, generator=torch.Generator())
    Image.frombytes("RGB", (20, 20), bytes(pixels.flatten().tolist())).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[data.find(b"IDAT") - 1] ^= 0x40  # the chunk's length: Pillow raises SyntaxError
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad.png: damaged, truncated"):
        read_image(tmp_path / "bad.png")
    good = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    for bad, pattern in (
        (good.to_sparse(), "sparse"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta"), "on meta"),
        (torch.zeros(2, 3, 0, 8, dtype=torch.uint8), r"N, H, W > 0"),
        # a 1-byte storage declared as 10^7 images: a 1.6 KB file, 31 TB when read
        (
            torch.zeros(1, dtype=torch.uint8).as_strided((10**7, 3, 1024, 1024), (0, 0, 0, 0)),
            r"shape \(10000000, 3, 1024, 1024\) repeats its data \(strides \(0, 0, 0, 0\), 1 b",
        ),
        (
            torch.zeros(1, 3, 8, 8, dtype=torch.uint8).expand(2, 3, 8, 8),
            r"repeats its data \(strides \(0, 64, 8, 1\), 192 bytes",
        ),
    ):
        with pytest.raises(ValueError, match=pattern):
            check_pairs(bad, good if bad.shape == good.shape else bad, "pairs.pt")
    assert check_pairs(good[:, :, 1:5], good[:, :, 2:6], "slices")[0].shape == (2, 3, 4, 8)


def test_psnr_refuses_a_max_value_that_is_no_white_level():
    """max_value 0 gave nan and -1 a normal-looking number."""
    a = torch.rand(1, 3, 4, 4)
    for bad in (0, -1, float("nan"), float("inf"), "255", True):
        with pytest.raises(ValueError, match="max_value must be a finite number > 0"):
            psnr(a, a, bad)
    assert psnr(a, a) == 200.0  # an exact match: the error floored at 1e-20, as documented


def test_clean_targets_beside_the_very_inputs_of_noise2noise_pairs():
    """bench/psnr.py's clean-target model trained on other images than its Noise2Noise one
    (the validation split of another seed): now the same inputs, each with its clean image."""
    from n2nfunc.data.synthetic import make_pairs

    for noise, sigma in (("gaussian:10", 10.0), ("downsample", None)):
        x, noisy = make_pairs(8, "train", noise, chunk=3)  # several chunks: the draws line up
        xc, clean = make_pairs(8, "train", noise, chunk=3, clean_targets=True)
        assert torch.equal(x, xc) and clean.dtype == torch.uint8
        if sigma is not None:  # the noisy target is the clean one plus the noise
            assert abs(float((noisy.float() - clean.float()).std()) - sigma) < 1.0
        assert not torch.equal(noisy.to(clean.dtype), clean)


def test_psnr_refuses_a_reference_brighter_than_white():
    """0-255 images read with the default max_value=1 scored some 48 dB too high (a reference
    a little above white, as resampling leaves it, is scored)."""
    clean = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    noisy = (clean + 9).clamp(max=255)
    for c, n in ((clean, noisy), (clean.float(), noisy.float())):
        with pytest.raises(ValueError, match="clean images reach 255, over twice max_value=1"):
            psnr(n, c)
    with pytest.raises(ValueError, match=r"over twice max_value=255 .*; is it on another"):
        psnr(noisy.float(), clean.float() * 3, 255.0)
    assert psnr(noisy.float(), clean.float() * 1.01, 255.0) < 40  # an overshoot is scored
    right = psnr(noisy.float(), clean.float(), 255.0)
    assert right == pytest.approx(psnr(noisy.float() / 255, clean.float() / 255), abs=1e-6)


def test_evaluate_reads_the_scale_of_the_clean_images():
    """The same images as 0-1 floats scored 48 dB more than as uint8 (read as 0-255)."""
    from n2nfunc import Model, evaluate

    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    noisy = (clean.int() + torch.randint(-30, 31, clean.shape, generator=g)).clamp(0, 255)
    noisy = noisy.to(torch.uint8)
    model = Model()
    as_bytes = evaluate(model, noisy, clean)
    as_unit = evaluate(model, noisy.float() / 255, clean.float() / 255)
    as_floats = evaluate(model, noisy.float(), clean.float())
    # 0-1 images a little above 1 (a resampled reference overshoots) stay 0-1 images
    as_overshot = evaluate(model, noisy.float() / 255 * 1.001, clean.float() / 255 * 1.001)
    for scores in (as_unit, as_floats, as_overshot):
        for key in ("noisy_psnr", "denoised_psnr"):
            assert scores[key] == pytest.approx(as_bytes[key], abs=0.05), (key, scores)
    assert 10 < as_bytes["noisy_psnr"] < 40
    with pytest.raises(ValueError, match=r"noisy images read as 0-255 and the clean ones as 0-1"):
        evaluate(model, noisy, clean.float() / 255)


def test_psnr_by_blocks_of_images_equals_the_whole_set(monkeypatch):
    """The whole set at once took 75 bytes a number (8,000 photo crops: 7.2 GB)."""
    import n2nfunc.metrics as metrics

    g = torch.Generator().manual_seed(5)
    clean = torch.randint(0, 256, (23, 3, 8, 8), generator=g, dtype=torch.uint8)
    noisy = (clean.int() + torch.randint(-20, 21, clean.shape, generator=g)).clamp(0, 255)
    whole = psnr(noisy, clean, 255.0)
    per_image = [psnr(noisy[i : i + 1], clean[i : i + 1], 255.0) for i in range(23)]
    assert whole == pytest.approx(sum(per_image) / 23, rel=1e-12)
    monkeypatch.setattr(metrics, "CHUNK_NUMBERS", 3 * 8 * 8 * 5)  # blocks of 5, the last of 3
    assert psnr(noisy, clean, 255.0) == pytest.approx(whole, rel=1e-12)


def test_an_image_of_a_format_n2nfunc_does_not_read_is_refused_unopened(tmp_path, monkeypatch):
    """An EPS file, whatever its name, reached Pillow's EPS plugin, which runs Ghostscript on
    it (a stand-in ``gs`` on the PATH here records that it ran)."""
    from n2nfunc.data.files import read_image

    ran = tmp_path / "gs_ran"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gs").write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo 10 && exit 0\ntouch {ran}\n')
    (fake / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    for name in ("x.png", "x.eps"):
        (tmp_path / name).write_bytes(eps)
        with pytest.raises(
            ValueError,
            match=rf"{name}: damaged, truncated, or not an image of a format n2nfunc reads \(PNG",
        ):
            read_image(tmp_path / name)
    assert not ran.exists()


def test_an_odd_rendered_size_is_refused_by_name():
    from n2nfunc.data.synthetic import render_dead_leaves

    with pytest.raises(ValueError, match=r"make_pairs: size must be .*even .*got size=33"):
        make_pairs(2, "train", "downsample:3", size=33)  # a reshape error inside the renderer
    with pytest.raises(ValueError, match="render_dead_leaves: size must be an even int"):
        render_dead_leaves(2, 99, torch.Generator())
    assert make_pairs(2, "train", "downsample:2", size=33)[0].shape == (2, 3, 33, 33)


def test_the_cache_folder_follows_n2nfunc_cache_then_xdg(monkeypatch, tmp_path):
    from n2nfunc.data import cache_dir

    monkeypatch.delenv("N2NFUNC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "n2nfunc"  # where bench/mkl_on_amd.sh looks too
    monkeypatch.setenv("N2NFUNC_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("N2NFUNC_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "n2nfunc"


def test_seeds_that_would_share_their_pairs_are_refused():
    """The data seeds are ``2 seed (+ 1)`` modulo 2**64: seeds 2**63 apart had drawn the same
    pairs without a word, so a seed takes -2**62 to 2**62 - 1, where no two share one; the
    seeds that worked draw as before (torch takes a negative seed as its two's complement, as
    ``% 2**64`` does)."""
    for seed in (2**62 - 1, -(2**62)):
        x, y = make_pairs(2, "train", seed=seed, chunk=2)
        assert x.shape == y.shape == (2, 3, 32, 32)
    assert not torch.equal(make_pairs(1, "train", seed=-1)[0], make_pairs(1, "val", seed=-1)[0])
    for seed in (2**62, 2**63, 2**64 - 1, -(2**62) - 1):
        with pytest.raises(ValueError, match=r"seed must be an int from -2\*\*62 to 2\*\*62 - 1"):
            make_pairs(1, "train", seed=seed)
        with pytest.raises(ValueError, match=r"seed must be an int from -2\*\*62"):
            nf.Model(config={"seed": seed})
    assert torch.Generator().manual_seed(-6).initial_seed() == (-6) % 2**64


def test_a_seed_of_another_type_is_refused_at_once_and_numpy_ints_are_ints():
    """A float or tensor seed made the range check compare it with each of 2**63 ints (it
    never returned); a NumPy int overflowed in 2 * seed."""
    from n2nfunc.data.synthetic import split_generator

    assert split_generator(np.int64(2**62 - 1), "val").initial_seed() == 2**63 - 1
    for seed in (3.0, torch.tensor(3), "3"):
        with pytest.raises(TypeError, match="seed must be an int from -2"):
            make_pairs(1, "train", seed=seed)


def test_mixed_factor_pairs_name_the_seeds_they_take():
    """Each factor f draws from 100 seed + f, which left the seed range for large seeds with
    an error naming a seed never given."""
    photo = [torch.randint(0, 256, (3, 512, 512), dtype=torch.uint8)]
    high = (2**62 - 1 - 12) // 100
    assert mixed_factor_pairs(photo, 4, "train", seed=high, factors=(4, 12))[0].shape[0] == 4
    with pytest.raises(
        ValueError, match=rf"seed must be an int from -\d+ to {high}, got {high + 1}"
    ):
        mixed_factor_pairs(photo, 4, "train", seed=high + 1, factors=(4, 12))


def test_the_resolution_is_read_from_png_jpeg_and_tiff(tmp_path):
    """A TIFF's resolution comes as rationals, which had been dropped for not being floats."""
    from PIL import Image

    for name in ("r.tif", "r.png", "r.jpg"):
        Image.new("RGB", (20, 10)).save(tmp_path / name, dpi=(300, 150))
        x, y = read_image(tmp_path / name).dpi
        assert (round(x), round(y)) == (300, 150), name
    Image.new("RGB", (20, 10)).save(tmp_path / "none.png")
    assert read_image(tmp_path / "none.png").dpi is None
