"""pretrained(name), U-Net checkpoints that record their architecture, and tiled denoising."""

import importlib
import re
import sys

import pytest
import torch
from helpers import rel_err

import n2nfunc as nf
from n2nfunc.pretrained import NAMES, load_network, save_unet
from n2nfunc.unet import unet

# the module (n2nfunc.pretrained is the function of the same name)
pretrained_module = importlib.import_module("n2nfunc.pretrained")
TINY = {"depth": 2, "widths": (4, 6, 5, 3)}


def _random_unet(arch=TINY, seed=0):
    layer = unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(seed), (-1, 3, -1, -1))
    return layer, params


def test_exercise_is_the_shipped_model_at_any_size():
    layer, params = nf.pretrained("exercise")
    model = nf.Model()
    model.load_pretrained_model()
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    y = layer.apply(params, x)
    assert y.shape == x.shape
    assert torch.allclose(y.clamp(0, 1), model.predict(x), atol=1e-6)


@pytest.mark.parametrize("name", ["unet-gaussian", "unet-poisson", "unet-aliasing"])
def test_unshipped_unet_weights_say_so(name, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_module, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="not shipped yet.*bench/train_unet.py"):
        nf.pretrained(name)


def test_shipped_unet_weights_load_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_module, "WEIGHTS", tmp_path)
    layer, params = _random_unet()
    save_unet(tmp_path / "unet-poisson.pth", TINY, params, {"noise": "poisson:5-50"})
    got_layer, got = nf.pretrained("unet-poisson")
    x = torch.rand(1, 3, 21, 10)
    assert torch.equal(got_layer.apply(got, x), layer.apply(params, x))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as e:
        nf.pretrained("unet")
    assert all(n in str(e.value) for n in NAMES)


def test_checkpoint_records_the_architecture(tmp_path):
    arch = {"depth": 3, "widths": (5, 7, 4, 3), "in_channels": 3, "out_channels": 3}
    layer, params = _random_unet(arch, seed=3)
    save_unet(tmp_path / "net.pth", arch, params, {"noise": "gaussian:0-50", "minutes": 1.5})
    got_layer, got_params, info = load_network(tmp_path / "net.pth")
    assert info == {"noise": "gaussian:0-50", "minutes": 1.5}
    x = torch.rand(2, 3, 19, 33)
    assert torch.equal(got_layer.apply(got_params, x), layer.apply(params, x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_load_network_gives_float32_params_whatever_the_file_holds(tmp_path, dtype):
    layer, params = _random_unet()
    save_unet(tmp_path / "net.pth", TINY, nf.tree.map(lambda t: t.to(dtype), params))
    _, got, _ = load_network(tmp_path / "net.pth")
    assert all(t.dtype == torch.float32 for t in nf.tree.leaves(got))
    x = torch.rand(1, 3, 21, 18)
    want = layer.apply(nf.tree.map(lambda t: t.to(dtype).float(), params), x)
    assert torch.equal(nf.denoise_image(layer, got, x), want)


@pytest.mark.parametrize("align", [12, 48])
def test_the_default_tile_is_a_multiple_of_a_given_align(align):
    layer, params = nf.pretrained("exercise")
    x = torch.rand(1, 3, 300, 290, generator=torch.Generator().manual_seed(1))
    out = nf.denoise_image(layer, params, x, align=align)
    assert torch.allclose(out, layer.apply(params, x), atol=1e-5)


def test_load_network_reads_model_checkpoints(tmp_path):
    settings = {"widths": (8, 12), "seed": 4, "lr": 0.001, "num_epochs": 3, "batch_size": 7}
    model = nf.Model(settings)
    model.save(tmp_path / "m.pth")
    layer, params, config = load_network(tmp_path / "m.pth")
    assert {k: config[k] for k in settings} == settings  # the file's, not the defaults
    x = torch.rand(1, 3, 10, 13)
    assert torch.allclose(layer.apply(params, x).clamp(0, 1), model.predict(x), atol=1e-6)


def test_bad_checkpoints(tmp_path):
    _, params = _random_unet()
    nf.save(
        tmp_path / "wrong.pth",
        {"network": "unet", "architecture": dict(TINY, depth=3), "params": params},
    )
    with pytest.raises(ValueError, match="do not fit the recorded architecture"):
        load_network(tmp_path / "wrong.pth")
    nf.save(
        tmp_path / "arch.pth",
        {"network": "unet", "architecture": {"depth": 2, "colour": 1}, "params": params},
    )
    with pytest.raises(ValueError, match="bad U-Net architecture"):
        load_network(tmp_path / "arch.pth")
    nf.save(tmp_path / "noarch.pth", {"network": "unet", "params": params})
    with pytest.raises(ValueError, match="without an 'architecture'"):
        load_network(tmp_path / "noarch.pth")
    nf.save(tmp_path / "other.pth", {"weights": params})
    with pytest.raises(ValueError, match="not an n2nfunc network checkpoint"):
        load_network(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="widths"):
        save_unet(tmp_path / "x.pth", {"depth": 2, "widths": (4,)}, params)
    ints = {"network": "unet", "architecture": TINY, "params": nf.tree.map(torch.round, params)}
    ints["params"] = nf.tree.map(lambda t: t.int(), ints["params"])
    nf.save(tmp_path / "int.pth", ints)  # refused by name, not by the first matmul
    with pytest.raises(ValueError, match=r"int.pth: parameter '.*' is torch.int32, not floating"):
        load_network(tmp_path / "int.pth")
    model = nf.Model({"widths": (4, 4)})
    exercise = {"config": model.payload()["config"], "params": model.net.state_dict()}
    exercise["params"] = {k: v.long() for k, v in exercise["params"].items()}
    nf.save(tmp_path / "long.pth", exercise)  # had been cast, its weights truncated
    with pytest.raises(ValueError, match=r"'0.weight' is torch.int64, expected a floating-point"):
        load_network(tmp_path / "long.pth")


def test_a_huge_recorded_architecture_costs_no_memory_before_it_is_refused(tmp_path):
    import resource

    payload = {"network": "unet", "architecture": {"depth": 10, "widths": (4096,) * 4}}
    nf.save(tmp_path / "bomb.pth", {**payload, "params": {}})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="bomb.pth: parameters do not fit"):
        load_network(tmp_path / "bomb.pth")  # 6 billion parameters, had they been made
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_recorded_channel_count_past_the_widths_is_refused(tmp_path):
    """in_channels of 10**400 had failed deep inside torch.empty (119 lines of traceback)."""
    for channels in (10**400, 5000):
        payload = {"network": "unet", "architecture": {"depth": 2, "in_channels": channels}}
        nf.save(tmp_path / "wide.pth", {**payload, "params": {}})
        with pytest.raises(
            ValueError, match=r"wide.pth: bad U-Net architecture: .*in_channels must be at"
        ):
            load_network(tmp_path / "wide.pth")


@pytest.mark.parametrize("batched", [True, False])
def test_tiled_equals_untiled_on_a_non_square_image(batched):
    layer, params = _random_unet()
    shape = (2, 3, 150, 97) if batched else (3, 150, 97)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    whole = layer.apply(params, x if batched else x[None])
    whole = whole if batched else whole[0]
    tiled = nf.denoise_image(layer, params, x, tile=64, overlap=16, align=4)
    assert tiled.shape == x.shape
    assert float((tiled - whole).abs().max()) < 1e-5


def test_tiled_exercise_network_and_one_tile():
    layer, params = nf.pretrained("exercise")
    x = torch.rand(1, 3, 70, 45, generator=torch.Generator().manual_seed(2))
    whole = layer.apply(params, x)
    assert (
        float((nf.denoise_image(layer, params, x, tile=32, overlap=8, align=4) - whole).abs().max())
        < 1e-5
    )
    assert torch.equal(nf.denoise_image(layer, params, x, tile=256), whole)  # a single tile


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_reach_is_measured_on_the_network_itself(depth):
    """Move one input pixel (float64, far out of range so that pooling passes it on) at each
    position of the pooling grid: outputs change exactly up to ``reach(depth)`` pixels away."""
    from n2nfunc.unet import reach

    layer, params = _random_unet({"depth": depth, "widths": (3, 4, 3, 2)}, seed=depth)
    params = nf.tree.map(lambda t: t.double(), params)
    m, width = 2**depth, 2 * reach(depth) + 6 * 2**depth
    x = torch.rand(1, 3, m, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    base = layer.apply(params, x)
    farthest = 0
    for p in range(width // 2 - m, width // 2):
        moved = x.clone()
        moved[0, :, 0, p] += 1e3
        changed = (layer.apply(params, moved) != base).any(dim=(0, 1, 2)).nonzero().flatten()
        farthest = max(farthest, int((changed - p).abs().max()))
    assert farthest == reach(depth)


def test_default_tiling_of_the_shipped_unet_has_no_seams():
    layer, params = nf.pretrained("unet-gaussian")
    x = torch.rand(1, 3, 300, 257, generator=torch.Generator().manual_seed(3))
    whole = layer.apply(params, x)
    tiled = nf.denoise_image(layer, params, x, tile=256)  # the overlap is the U-Net's reach
    assert float((tiled - whole).abs().max()) < 1e-5
    assert nf.tiling.tile_settings(layer) == (480, 78, 32)
    seams = nf.denoise_image(layer, params, x, tile=256, overlap=32)  # asked for: allowed
    assert float((seams - whole).abs().max()) > 1e-3


def test_tiles_align_to_a_deep_unets_multiple():
    layer, _ = _random_unet({"depth": 6, "widths": (2, 2, 2, 2)})
    assert nf.tiling.tile_settings(layer)[2] == 64
    with pytest.raises(
        ValueError, match=r"align 32 must be a multiple of the network's size multiple 64"
    ):
        nf.tiling.tile_settings(layer, align=32)


def test_denoise_image_bad_arguments():
    layer, params = _random_unet()
    x = torch.rand(1, 3, 40, 40)
    with pytest.raises(ValueError, match="multiple of align"):
        nf.denoise_image(layer, params, x, tile=100)
    with pytest.raises(ValueError, match="no room after the overlap"):
        nf.denoise_image(layer, params, torch.rand(1, 3, 100, 40), tile=64, overlap=32)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        nf.denoise_image(layer, params, torch.rand(40, 40))
    with pytest.raises(TypeError, match="image must be a Tensor"):
        nf.denoise_image(layer, params, [[0.0]])
    with pytest.raises(TypeError, match="on_tile must be callable"):
        nf.denoise_image(layer, params, x, on_tile=1)


@pytest.mark.parametrize("hw", [(51, 49), (300, 298)])  # one tile; several
def test_denoise_image_refuses_a_network_that_changes_the_size(hw):
    """An unpadded convolution (size - 2) raised PyTorch's expand error; a strided pair that
    grows even sizes by one was cropped without a word."""
    shrinks = nf.serial(nf.conv2d(3, 3), nf.sigmoid())
    grows = nf.serial(
        nf.conv2d(4, 4, stride=2, padding=1),
        nf.conv_transpose2d(3, 4, stride=2, padding=1, output_padding=1),
    )
    for net in (shrinks, grows):
        _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 64, 64))
        with pytest.raises(ValueError, match=r"denoise_image: the network maps a tile \(1, 3, "):
            image = torch.rand(3, hw[0] - hw[0] % 2, hw[1])
            nf.denoise_image(net, params, image, tile=128, overlap=8, align=8)


def test_denoise_image_refuses_a_0_255_float_image():
    """A float 0-255 image was denoised as if its values were 0-1: the output all white."""
    layer, params = _random_unet()
    with pytest.raises(ValueError, match=r"reads as 0-255 \(maximum 255, mean 127.5\); it takes"):
        nf.denoise_image(layer, params, torch.linspace(0, 255, 4800).view(3, 40, 40))
    dark = torch.zeros(3, 20, 20)  # a dark 0-255 image: mean 0.64, a few white points
    dark[:, 0, 0] = 255.0
    with pytest.raises(ValueError, match=r"reads as 0-255 \(maximum 255, mean 0.6375"):
        nf.denoise_image(layer, params, dark)
    with pytest.raises(ValueError, match="NaN or infinite"):
        nf.denoise_image(layer, params, dark.fill_(float("nan")))
    noisy = torch.rand(3, 40, 40)  # unclipped noise may go far above 1 (Poisson, peak 0.3):
    noisy[0, :4, :4] = 20.0  # still a 0-1 image, denoised
    assert nf.denoise_image(layer, params, noisy).shape == noisy.shape


def test_a_tile_smaller_than_the_overlaps_need_is_fine_for_an_image_that_fits_in_it():
    layer, params = _random_unet({"depth": 4, "widths": (2, 2, 2, 2)})  # reaches 78 pixels
    small = torch.rand(3, 90, 70, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        nf.denoise_image(layer, params, small, tile=96), layer.apply(params, small[None])[0]
    )
    with pytest.raises(ValueError, match="leaves no room after the overlap 78"):
        nf.denoise_image(layer, params, torch.rand(3, 200, 70), tile=96)


def test_denoise_image_reports_each_tile():
    layer, params = _random_unet()
    calls = []
    nf.denoise_image(
        layer,
        params,
        torch.rand(3, 150, 97),
        tile=64,
        overlap=16,
        align=4,
        on_tile=lambda *a: calls.append(a),
    )
    total = calls[-1][1]
    assert total > 1 and calls == [(i, total) for i in range(1, total + 1)]


@pytest.mark.parametrize("kernel, upsampling", [(2, "transpose"), (5, "transpose"), (5, "nearest")])
def test_exercise_reach_bounds_what_the_networks_read(kernel, upsampling):
    """As for the U-Net: one input pixel moved at each position of the 4-pixel grid changes
    outputs no farther away than EXERCISE_REACH, the exercise networks' tiling overlap."""
    from n2nfunc.model import DEFAULT_CONFIG, EXERCISE_REACH, build_network
    from n2nfunc.unet import padded_to_multiple

    config = {**DEFAULT_CONFIG, "kernel": kernel, "upsampling": upsampling, "widths": (3, 4)}
    net = build_network(config, torch.Generator().manual_seed(kernel))
    layer = padded_to_multiple(net.layer, 4)
    params = nf.tree.map(lambda t: t.double(), net.params)
    x = torch.rand(1, 3, 4, 120, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    base = layer.apply(params, x)
    farthest = 0
    for p in range(56, 60):
        moved = x.clone()
        moved[0, :, 0, p] += 1e3
        changed = (layer.apply(params, moved) != base).any(dim=(0, 1, 2)).nonzero().flatten()
        farthest = max(farthest, int((changed - p).abs().max()))
    assert 3 * (kernel - 1) <= farthest <= EXERCISE_REACH


def test_exercise_tiles_keep_its_pooling_grid():
    """The exercise network halves the size twice: tiles aligned to anything but a multiple
    of 4 would see other grids (its output was silently wrong by up to 0.27)."""
    layer, params = nf.pretrained("exercise")
    x = torch.rand(1, 3, 150, 97, generator=torch.Generator().manual_seed(4))
    whole = layer.apply(params, x)
    tiled = nf.denoise_image(layer, params, x, tile=64, align=4)
    assert float((tiled - whole).abs().max()) < 1e-5
    assert nf.tiling.tile_settings(layer) == (256, 27, 32)
    with pytest.raises(
        ValueError, match="align 6 must be a multiple of the network's size multiple 4"
    ):
        nf.denoise_image(layer, params, x, tile=96, align=6)


def test_the_tile_help_names_each_shipped_networks_overlap_and_least_tile(capsys):
    """`denoise --help` quotes every shipped network's overlap and smallest tile (it once
    quoted the depth-4 U-Nets' for unet-aliasing, whose reach is shorter)."""
    from n2nfunc.cli import main

    assert main(["denoise", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in NAMES:
        layer, _, _ = load_network(pretrained_module.shipped_weights(name))
        _, overlap, align = nf.tiling.tile_settings(layer)
        least = nf.tiling.least_tile(overlap, align)
        assert re.search(f"{name}[^;]*: overlap {overlap}, tiles >= {least}", text), name


def test_errors_inside_the_padding_name_the_callers_shape():
    """A channels-last image given to the exercise network: the inner convolution sees the
    padded shape, and the error names the shape the caller passed beside it."""
    layer, params = nf.pretrained("exercise")
    for call in (layer.apply, layer.vjp):
        with pytest.raises(
            ValueError,
            match=r"got \(1, 37, 56, 4\) \(the input of shape "
            r"\(1, 37, 53, 3\), padded to \(1, 37, 56, 4\)",
        ):
            call(params, torch.rand(1, 37, 53, 3))
    subclass = type("SingularMatrix", (ValueError,), {})  # another error passes as it is

    def fails(params, x):
        raise subclass("singular")

    layer = nf.padded_to_multiple(nf.Layer(lambda g, s: (s, {}), fails, None), 4)
    with pytest.raises(subclass, match="^singular$"):
        layer.apply({}, torch.rand(1, 3, 5, 5))


def test_a_config_the_layers_refuse_names_the_file(tmp_path):
    from n2nfunc import Model, checkpoint

    payload = Model().payload()
    payload["config"].update(upsampling="nearest", kernel=4)
    checkpoint.save(tmp_path / "even.pth", payload)
    with pytest.raises(ValueError, match=r"even.pth: upsampling 'nearest' needs an odd kernel"):
        load_network(tmp_path / "even.pth")


def test_a_file_asking_for_huge_layers_is_refused_before_they_are_built(tmp_path, monkeypatch):
    """A 315 KB file whose config asks for widths 4096 with the shipped tensors: every loader
    built the network for real (10-13 GB) before comparing shapes. Now the shapes are
    compared on the meta device: nothing that large is ever allocated."""
    from n2nfunc import Model, checkpoint, model

    payload = Model().payload()
    payload["config"].update(widths=[4096, 4096], kernel=5)
    checkpoint.save(tmp_path / "huge.pth", payload)
    built = []
    real = model.build_network

    def watched(config, *args, **kw):
        built.append(tuple(config["widths"]))
        net = real(config, *args, **kw)
        assert nf.tree.leaves(net.params)[0].is_meta or max(config["widths"]) < 4096
        return net

    monkeypatch.setattr(model, "build_network", watched)
    monkeypatch.setattr(sys.modules["n2nfunc.pretrained"], "build_network", watched)
    shape = r"huge.pth: .*'0.weight' has shape \(48, 3, 4, 4\), expected \(4096, 3, 5, 5\)"
    with pytest.raises(ValueError, match=shape):
        load_network(tmp_path / "huge.pth")
    with pytest.raises(ValueError, match=shape):
        Model().load_pretrained_model(tmp_path / "huge.pth")
    assert (4096, 4096) in built  # checked, on the meta device only


def test_denoise_image_keeps_no_autograd_graph():
    """An image that requires grad had every tile's operations recorded (and kept)."""
    layer, params = nf.pretrained("exercise")
    image = torch.rand(3, 40, 36, requires_grad=True)
    out = nf.denoise_image(layer, params, image)
    assert not out.requires_grad
    assert torch.equal(out, nf.denoise_image(layer, params, image.detach()))
    # params that require grad (torch modules' do) had linked every tile into one graph
    # alive through the output: 0.8 GB for an 800 x 800 image in tiles of 128
    grad_params = nf.tree.map(lambda t: t.clone().requires_grad_(), params)
    image = torch.rand(3, 300, 200)
    with torch.enable_grad():  # (the tests run without it)
        out = nf.denoise_image(layer, grad_params, image, tile=128)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.equal(out, nf.denoise_image(layer, params, image, tile=128))


def test_the_default_align_is_a_multiple_of_any_size_multiple():
    """A network padded to a multiple of 3 got align 32 (max(32, 3)), so its tiles saw other
    pooling grids than the whole image: seams of 0.3 without a word."""
    net = nf.serial(nf.avg_pool2d(3), nf.conv2d(3, 3, padding=1), nf.nearest_upsample(3))
    layer = nf.tiling.with_footprint(nf.padded_to_multiple(net, 3), multiple=3, reach=8)
    _, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, -1, -1))
    x = torch.rand(1, 3, 40, 600, generator=torch.Generator().manual_seed(1))
    assert nf.tiling.tile_settings(layer)[2] == 96
    assert float((nf.denoise_image(layer, params, x) - layer.apply(params, x)).abs().max()) < 1e-5


@pytest.mark.parametrize(
    "multiple, reach, error, pattern",
    [
        (0, 8, ValueError, r"multiple must be a positive int, got 0"),
        ("4", 8, TypeError, r"multiple must be a positive int, got '4'"),
        (4, -3, ValueError, r"reach must be an int >= 0, got -3"),
        (4, 2.5, TypeError, r"reach must be an int, got 2.5"),
    ],
)
def test_with_footprint_refuses_bad_arguments(multiple, reach, error, pattern):
    with pytest.raises(error, match=rf"with_footprint: {pattern}"):
        nf.tiling.with_footprint(nf.identity(), multiple, reach)


def test_denoise_image_of_a_network_without_footprint_needs_overlap_and_align():
    """A U-Net inside serial loses its footprint; tiles guessed for it (overlap 32, align 32)
    left seams (0.035 off the untiled result at depth 4) without a word."""
    layer, inner = _random_unet()
    net, params = nf.serial(layer, nf.identity()), {"0": inner, "1": {}}
    assert nf.tiling.footprint(net) is None
    image = torch.rand(3, 300, 40)
    whole = net.apply(params, image[None])[0]
    with pytest.raises(ValueError, match=r"reach and size multiple are unknown .* \(300, 40\)"):
        nf.denoise_image(net, params, image)
    fp = nf.tiling.footprint(layer)
    tiled = nf.denoise_image(net, params, image, overlap=fp.reach, align=fp.multiple)
    assert rel_err(tiled, whole) < 1e-5
    declared = nf.tiling.with_footprint(net, fp.multiple, fp.reach)
    assert rel_err(nf.denoise_image(declared, params, image), whole) < 1e-5
    small = torch.rand(3, 40, 40)  # one tile: the untiled pass itself
    assert torch.equal(nf.denoise_image(net, params, small), net.apply(params, small[None])[0])


def test_denoise_image_and_unet_name_what_they_were_given():
    layer, params = _random_unet()
    block = nf.Module(layer, params)
    with pytest.raises(TypeError, match=r"a Module block \(its functional layer is .layer"):
        nf.denoise_image(block, params, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"channels last\? image.permute\(2, 0, 1\)"):
        nf.denoise_image(layer, params, torch.rand(40, 30, 3))
    with pytest.raises(TypeError, match="unet: params must be the dict its init returned"):
        layer.apply(None, torch.rand(1, 3, 8, 8))


def test_whole_float_sizes_in_a_file_load_as_everywhere(tmp_path):
    """A config's whole floats (kernel 4.0, widths 48.0), which Model, eval and train take,
    load for denoise too (load_network built the network from the floats: a TypeError)."""
    model = nf.Model()
    payload = model.payload()
    payload["config"] = {**payload["config"], "kernel": 4.0, "widths": [48.0, 48.0]}
    nf.checkpoint.save(tmp_path / "floats.pth", payload)
    layer, params, config = load_network(tmp_path / "floats.pth")
    assert (config["kernel"], config["widths"]) == (4, (48, 48))
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(layer.apply(params, x).clamp(0, 1), model.predict(x), atol=1e-6)
