"""Model(config={"network": "unet"}), Model.from_pretrained and checkpoints that rebuild."""

import pytest
import torch

import n2nfunc as nf
from n2nfunc import checkpoint
from n2nfunc.model import Model
from n2nfunc.pretrained import NAMES, save_unet, weights_path

TINY = {"network": "unet", "depth": 2, "widths": (8, 12, 8, 6), "batch_size": 4}


def _pairs(n=8, h=20, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, 3, h, w, generator=g)
    noisy = [(clean + 0.1 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1) for _ in range(2)]
    return noisy[0] * 255, noisy[1] * 255


def test_unet_model_uses_the_unet_and_its_own_defaults():
    m = Model(TINY)
    assert isinstance(m.net, nf.modules.UNet)
    assert m.config["lr"] == 1e-3 and m.config["widths"] == (8, 12, 8, 6)
    assert Model({"network": "unet"}).config["widths"] == (32, 64, 48, 24)
    assert Model({"network": "unet", "lr": 5e-4}).config["lr"] == 5e-4
    assert isinstance(Model().net, nf.Sequential)  # the grader's default is unchanged


def test_unet_model_trains_and_predicts_any_size():
    x, y = _pairs()
    m = Model({**TINY, "warmup_steps": 0})
    losses = m.train(x, y, num_epochs=6)
    assert losses[-1] < losses[0]
    for shape in [(1, 3, 37, 51), (2, 3, 16, 16), (1, 3, 5, 3)]:
        z = torch.randint(0, 256, shape, dtype=torch.uint8)
        out = m.predict(z)
        assert out.shape == shape and 0 <= float(out.min()) and float(out.max()) <= 255
        direct = m.net.layer.apply(m.net.params, z.float() / 255).clamp(0, 1) * 255
        assert torch.allclose(out, direct, atol=1e-4)


@pytest.mark.parametrize("config", [TINY, {**TINY, "precision": "bfloat16"}, {}])
def test_large_images_are_predicted_in_tiles_with_the_untiled_result(config, monkeypatch):
    import n2nfunc.model as model_module

    m = Model(config)  # {}: the exercise's network
    z = torch.randint(
        0, 256, (2, 3, 150, 131), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    whole = m.predict(z)
    calls = []
    real = model_module.tiled
    monkeypatch.setattr(model_module, "tiled", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(model_module, "PREDICT_TILE", 96)
    tiled = m.predict(z)
    assert len(calls) == 2 and tiled.shape == z.shape  # one image at a time
    assert float((tiled - whole).abs().max()) < 1e-3  # 0-255 scale
    # an explicit 0-1 scale holds for tiles too, unclipped noise and all (denoise_image's own
    # guess would read a maximum of 80 as 0-255)
    noisy = z[:1].float() / 255
    noisy[0, 0, 5, 5] = 80.0
    tiled = m.predict(noisy, scale=1)
    monkeypatch.setattr(model_module, "PREDICT_TILE", 1024)
    assert torch.allclose(tiled, m.predict(noisy, scale=1), atol=1e-5)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_unet_model_precision(precision):
    x, y = _pairs(4)
    m = Model({**TINY, "precision": precision})
    assert len(m.train(x, y, num_epochs=1)) == 1
    assert m.predict(x).dtype == torch.float32


def test_any_checkpoint_rebuilds_its_network(tmp_path):
    x, _ = _pairs(2)
    unet_model = Model(TINY)
    unet_model.save(tmp_path / "unet.pth")
    loaded = Model()  # the exercise's network ...
    loaded.load_pretrained_model(tmp_path / "unet.pth")  # ... becomes the U-Net of the file
    assert isinstance(loaded.net, nf.modules.UNet) and loaded.config["depth"] == 2
    assert torch.equal(loaded.predict(x), unet_model.predict(x))
    layer, params, _ = nf.load_network(tmp_path / "unet.pth")  # the functional reader agrees
    assert torch.allclose(layer.apply(params, x / 255).clamp(0, 1) * 255, unet_model.predict(x))

    small = Model({"widths": (8, 8)})
    small.save(tmp_path / "exercise.pth")
    loaded.load_pretrained_model(tmp_path / "exercise.pth")  # and back to the exercise's
    assert isinstance(loaded.net, nf.Sequential) and loaded.config["widths"] == (8, 8)
    assert torch.equal(loaded.predict(x), small.predict(x))


def test_a_bench_written_unet_file_loads_into_model(tmp_path):
    arch = {"depth": 2, "widths": (8, 12, 8, 6)}
    layer = nf.unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(3), (-1, 3, -1, -1))
    save_unet(tmp_path / "w.pth", arch, params, {"noise": ["gaussian:0-50"]})
    m = Model()
    m.load_pretrained_model(tmp_path / "w.pth")
    x = torch.rand(1, 3, 24, 40)
    assert torch.allclose(m.predict(x), layer.apply(params, x).clamp(0, 1), atol=1e-6)


def test_bad_unet_checkpoints_name_the_file(tmp_path):
    payload = Model(TINY).payload()
    payload["architecture"] = {"depth": 2, "widths": (8, 8)}
    checkpoint.save(tmp_path / "arch.pth", payload)
    with pytest.raises(ValueError, match=r"arch.pth: bad U-Net architecture"):
        Model().load_pretrained_model(tmp_path / "arch.pth")
    payload = Model(TINY).payload()
    payload["params"] = {"nope": torch.zeros(1)}
    checkpoint.save(tmp_path / "params.pth", payload)
    with pytest.raises(ValueError, match=r"params.pth: parameters do not fit"):
        Model().load_pretrained_model(tmp_path / "params.pth")


@pytest.mark.parametrize(
    "config,pattern",
    [
        ({"network": "resnet"}, r"network must be one of \('exercise', 'unet'\), got 'resnet'"),
        (
            {"network": "unet", "widths": (8, 8)},
            r"Model: unet: widths must be 4 ints from 1 to 4096",
        ),
        ({"network": "unet", "depth": 0}, r"Model: .*depth"),
    ],
)
def test_bad_unet_configs(config, pattern):
    with pytest.raises(ValueError, match=pattern):
        Model(config)


def test_from_pretrained():
    exercise = Model.from_pretrained("exercise")
    reference = Model()
    reference.load_pretrained_model()
    x = torch.randint(0, 256, (1, 3, 20, 12), dtype=torch.uint8)
    assert torch.equal(exercise.predict(x), reference.predict(x))
    with pytest.raises(ValueError, match="unknown pretrained network 'nope'; known: exercise"):
        Model.from_pretrained("nope")


@pytest.mark.parametrize("name", [n for n in NAMES if n != "exercise"])
def test_from_pretrained_unets_match_the_functional_reader(name):
    if not weights_path(name).is_file():
        pytest.fail(f"{name}: weights are not shipped ({weights_path(name)})")
    m = Model.from_pretrained(name)
    layer, params = nf.pretrained(name)
    x = torch.rand(1, 3, 33, 47)
    assert isinstance(m.net, nf.modules.UNet)
    assert torch.allclose(m.predict(x), layer.apply(params, x).clamp(0, 1), atol=1e-6)


def test_tiles_of_large_predictions_grow_with_the_networks_reach(monkeypatch):
    import n2nfunc.model as model_module

    m = Model({**TINY, "depth": 3})  # reaches 38 pixels: tiles of 256
    z = torch.randint(
        0, 256, (1, 3, 300, 270), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    whole = m.predict(z)
    monkeypatch.setattr(model_module, "PREDICT_TILE", 64)  # too small for that reach
    assert float((m.predict(z) - whole).abs().max()) < 1e-3


def test_numpy_sizes_are_recorded_as_ints_so_the_model_saves(tmp_path):
    np = pytest.importorskip("numpy")
    model = Model({"network": "unet", "depth": np.int64(2), "widths": tuple(np.array([4] * 4))})
    assert type(model.config["depth"]) is int and all(
        type(w) is int for w in model.config["widths"]
    )
    model.save(tmp_path / "m.pth")  # a checkpoint stores no NumPy scalar
    again = Model()
    again.load_pretrained_model(tmp_path / "m.pth")
    assert again.config["depth"] == 2 and again.config["widths"] == (4, 4, 4, 4)
