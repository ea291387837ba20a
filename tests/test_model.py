import math

import pytest
import torch

from n2nfunc import checkpoint
from n2nfunc.data import make_pairs
from n2nfunc.metrics import evaluate
from n2nfunc.model import Model
from n2nfunc.pretrained import load_network

SMALL = {"widths": (8, 8), "batch_size": 16, "warmup_steps": 5}


@pytest.fixture(scope="module")
def pairs():
    xt, yt = make_pairs(320, "train", seed=0)
    xv, yv = make_pairs(100, "val", seed=0)
    return xt, yt, xv, yv


def test_predict_keeps_shape_scale_and_range():
    m = Model(SMALL)
    for x in [
        torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
        torch.randint(0, 256, (1, 3, 33, 17), dtype=torch.uint8).float(),
        torch.rand(3, 3, 7, 9),
    ]:
        y = m.predict(x)
        assert y.shape == x.shape and y.is_floating_point()
        top = 1.0 if x.is_floating_point() and x.max() <= 1 else 255.0
        assert 0 <= float(y.min()) and float(y.max()) <= top
        if top == 255.0:
            assert float(y.max()) > 1.0  # answered in 0-255, not 0-1
    big = m.predict(torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8))
    assert big.shape == (1, 3, 512, 512)


def test_predict_in_chunks_equals_one_pass():
    m = Model(SMALL)
    x = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8)
    chunked = m.predict(x, max_pixels=128 * 16 * 16)  # chunks of 128, 128 and 44 images
    assert torch.allclose(chunked, m.predict(x, max_pixels=1 << 30), atol=1e-3)
    assert torch.allclose(chunked[:1], m.predict(x[:1]), atol=1e-3)


def test_scale_rule_gives_the_same_image_in_both_scales():
    m = Model(SMALL)
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.allclose(m.predict(x) / 255, m.predict(x.float() / 255), atol=1e-5)
    assert torch.allclose(m.predict(x), m.predict(x.float()), atol=1e-4)


def test_non_contiguous_and_channels_last_inputs_work():
    m = Model(SMALL)
    x = torch.rand(2, 3, 16, 16)
    ref = m.predict(x)
    assert torch.allclose(
        m.predict(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-6
    )
    strided = torch.rand(2, 3, 16, 32)[:, :, :, ::2]
    assert torch.allclose(m.predict(strided), m.predict(strided.contiguous()), atol=1e-6)


def test_short_training_lowers_loss_and_raises_psnr(pairs):
    xt, yt, xv, yv = pairs
    m = Model({**SMALL, "widths": (16, 16), "lr": 3e-3})
    before = evaluate(m, xv, yv)["denoised_psnr"]
    history = m.train(xt, yt, num_epochs=4)
    assert history[-1] < history[0]
    assert evaluate(m, xv, yv)["denoised_psnr"] > before + 2


def test_same_seed_gives_bit_identical_parameters(pairs):
    xt, yt, _, _ = pairs
    runs = []
    for _ in range(2):
        m = Model({**SMALL, "seed": 7})
        m.train(xt[:64], yt[:64], num_epochs=2)
        runs.append(m.net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = Model({**SMALL, "seed": 8}).net.state_dict()
    assert not torch.equal(other["0.weight"], runs[0]["0.weight"])


def test_float64_inputs_train_the_network_in_float64(pairs):
    xt, yt, _, _ = pairs
    m = Model(SMALL)
    before = m.net.state_dict()["0.weight"].double()
    m.train(xt[:32].double() / 255, yt[:32].double() / 255, num_epochs=1)
    after = m.net.state_dict()["0.weight"]
    assert after.dtype == torch.float64 and not torch.equal(before, after)
    assert m.optimizer.params[0] is after


def test_predict_computes_in_the_inputs_dtype_and_leaves_the_weights_as_they_are(pairs):
    xt, yt, xv, _ = pairs
    m = Model(SMALL)
    m.train(xt[:32].double(), yt[:32].double(), num_epochs=1)  # float64 weights
    weights = m.net.state_dict()["0.weight"].clone()
    out32 = m.predict(xv[:4].float())
    assert out32.dtype == torch.float32 and m.net.state_dict()["0.weight"].dtype == torch.float64
    assert torch.equal(m.net.state_dict()["0.weight"], weights)  # not rounded to float32
    out64 = m.predict(xv[:4].double())
    assert out64.dtype == torch.float64 and torch.allclose(out64.float(), out32, atol=1e-3)


def test_train_accepts_the_old_grader_call_and_0_1_floats(pairs):
    xt, yt, _, _ = pairs
    m = Model({**SMALL, "num_epochs": 1})
    assert len(m.train(xt[:32].float() / 255, yt[:32].float() / 255)) == 1


def test_pretrained_weights_load_and_fine_tune(pairs):
    xt, yt, xv, yv = pairs
    m = Model()
    m.load_pretrained_model()
    gain = evaluate(m, xv, yv)["gain"]
    assert gain > 0.3
    m.train(xt[:64], yt[:64], num_epochs=1)
    assert evaluate(m, xv, yv)["gain"] > gain - 0.5


def test_save_and_mismatched_loads(tmp_path):
    m = Model(SMALL)
    m.save(tmp_path / "m.pth")
    other = Model(SMALL)
    other.load_pretrained_model(tmp_path / "m.pth")
    assert torch.equal(other.net.state_dict()["0.weight"], m.net.state_dict()["0.weight"])
    rebuilt = Model()  # another architecture: the file's network is rebuilt
    rebuilt.load_pretrained_model(tmp_path / "m.pth")
    assert rebuilt.config["widths"] == (8, 8)
    assert torch.equal(rebuilt.net.state_dict()["0.weight"], m.net.state_dict()["0.weight"])
    payload = m.payload()
    payload["params"]["0.weight"] = torch.zeros(8, 3, 2, 2)
    checkpoint.save(tmp_path / "bad.pth", payload)
    with pytest.raises(
        ValueError, match=r"bad.pth.*'0.weight' has shape \(8, 3, 2, 2\), expected \(8, 3, 4, 4\)"
    ):
        Model(SMALL).load_pretrained_model(tmp_path / "bad.pth")
    del payload["params"]["6.bias"]
    checkpoint.save(tmp_path / "missing.pth", payload)
    with pytest.raises(ValueError, match=r"missing keys \['6.bias'\]"):
        Model(SMALL).load_pretrained_model(tmp_path / "missing.pth")


def test_divergence_restores_parameters_and_raises(pairs):
    xt, yt, _, _ = pairs
    m = Model({**SMALL, "lr": 1e30, "warmup_steps": 0, "optimizer": "sgd", "momentum": 0.0})
    with pytest.raises(FloatingPointError, match="restored"):
        m.train(xt[:64], yt[:64], num_epochs=3)
    assert all(torch.isfinite(p).all() for p in m.net.state_dict().values())
    m = Model(SMALL)  # a loss that is not finite at a run's first step: nothing to restore
    m.net.state_dict()["0.weight"].fill_(float("inf"))
    with pytest.raises(FloatingPointError) as e:
        m.train(xt[:64], yt[:64], num_epochs=1)
    assert "step 1;" in str(e.value) and "restored" not in str(e.value)


def test_divergence_at_the_last_update_of_an_epoch_is_caught_too():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    y = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    m = Model({"batch_size": 4, "lr": 1e38})  # one step: no later loss would show it
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    with pytest.raises(FloatingPointError, match="parameters became NaN or infinite at epoch 1"):
        m.train(x, y, 1)
    assert all(torch.equal(v, before[k]) for k, v in m.net.state_dict().items())


@pytest.mark.parametrize(
    "epoch,total,pattern",
    [
        (0, None, "total_epochs must be an int >= 1, got None"),
        (0, "ten", "total_epochs must be an int >= 1"),
        (0, 1.5, "total_epochs must be an int >= 1, got 1.5"),
        (None, 1, "epoch must be an int >= 0, got None"),
        ("0", 1, "epoch must be an int >= 0"),
        (-1, 1, "epoch must be an int >= 0, got -1"),
        (2, 2, "epoch 2 is not one of the run's total_epochs 2"),
    ],
)
def test_train_epoch_refuses_bad_epoch_numbers_by_name(epoch, total, pattern):
    m = Model(SMALL)
    x, y = m.prepare_pairs(torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match=f"Model.train_epoch: {pattern}"):
        m.train_epoch(x, y, epoch, total)


@pytest.mark.parametrize(
    "bad,pattern",
    [
        (torch.rand(2, 3, 8, 8).mul(float("nan")), "NaN or infinite"),
        (torch.full((2, 3, 8, 8), float("inf")), "NaN or infinite"),
        (torch.rand(2, 3, 8, 8).index_fill_(3, torch.tensor([5]), float("nan")), "NaN or inf"),
        (torch.rand(2, 3, 8, 8).index_fill_(2, torch.tensor([1]), -float("inf")), "NaN or inf"),
        (torch.rand(0, 3, 8, 8), "is empty"),
        (torch.rand(4, 8, 8), r"shape \(N, 3, H, W\), got \(4, 8, 8\)$"),
        (torch.rand(8, 8, 3), r"got \(8, 8, 3\) \(channels last\? x.permute\(2, 0, 1\)\[None\]\)"),
        (torch.rand(2, 8, 8, 3), r"got \(2, 8, 8, 3\) \(channels last\? x.permute\(0, 3, 1, 2\)\)"),
        (torch.rand(2, 1, 8, 8), r"got \(2, 1, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.bool), "must hold numbers"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.complex64), "must hold numbers"),
        # 16-bit images as integers were read as 0-255 ones, saturated (shipped weights: -0.5 dB)
        (torch.full((2, 3, 8, 8), 65535, dtype=torch.int32), "integer images hold 0-255"),
        (torch.full((2, 3, 8, 8), -600, dtype=torch.int16), "values from -600 to -600"),
    ],
)
def test_bad_inputs_are_refused_with_the_argument_and_shape(bad, pattern):
    m = Model(SMALL)
    with pytest.raises(
        ValueError, match="test_input.*" + pattern if "shape" not in pattern else pattern
    ):
        m.predict(bad)
    with pytest.raises(ValueError, match="train_input"):
        m.train(bad, torch.rand(2, 3, 8, 8), num_epochs=1)
    with pytest.raises(TypeError, match="test_input must be a Tensor"):
        m.predict([[1, 2]])


def test_integer_targets_with_unclipped_noise_are_still_0_255_images():
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.int16)
    y = x + torch.randint(-200, 201, x.shape, generator=g, dtype=torch.int16)  # past both ends
    Model(SMALL).train(x, y, num_epochs=1)
    for noise in ("poisson:0.5", "gaussian:200"):  # targets far past -255..510, as parsed
        xs, ys = make_pairs(16, "train", seed=1, noise=noise)
        assert ys.dtype == torch.int16 and (ys.min() < -255 or ys.max() > 510)
        prepared = Model(SMALL).prepare_pairs(xs, ys)[1]
        assert torch.equal(prepared, ys.float() / 255)
    with pytest.raises(ValueError, match=r"train_target: the mean value .* far above white"):
        Model(SMALL).train(x, torch.full_like(x, 30000), num_epochs=1)  # 16-bit targets
    with pytest.raises(ValueError, match=r"train_target: integer .*: pass scale=255\)$"):
        Model(SMALL).train(x.float(), y.int() * 3, num_epochs=1)
    unet = Model({"network": "unet", "batch_size": 2})
    with pytest.raises(ValueError, match=r"train_input: training images must be at least 4x4"):
        unet.train(x[:, :, :3], y[:, :, :3], num_epochs=1)


def test_mismatched_training_shapes():
    with pytest.raises(
        ValueError,
        match=r"train_input shape \(2, 3, 8, 8\) does not match train_target shape \(2, 3, 8, 4\)",
    ):
        Model(SMALL).train(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 4), num_epochs=1)
    with pytest.raises(ValueError, match="num_epochs"):
        Model(SMALL).train(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), num_epochs=-1)


@pytest.mark.cuda
def test_model_runs_on_the_inputs_cuda_device(pairs):
    xt, yt, xv, _ = pairs
    m = Model(SMALL)
    m.train(xt[:64].cuda(), yt[:64].cuda(), num_epochs=1)
    assert m.predict(xv[:4].cuda()).is_cuda


def test_a_refused_load_leaves_the_model_as_it_was(tmp_path):
    m = Model.from_pretrained("exercise")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before, config = m.predict(x), dict(m.config)
    payload = m.payload()
    payload["config"]["kernel"] = 3  # another architecture, whose shapes the weights miss
    checkpoint.save(tmp_path / "bad.pth", payload)
    with pytest.raises(ValueError, match=r"bad.pth: .*has shape .*expected"):
        m.load_pretrained_model(tmp_path / "bad.pth")
    assert m.config == config and torch.equal(m.predict(x), before)


def test_loading_weights_starts_the_optimizer_afresh(pairs):
    """Fine-tuning after a load does not depend on what the Model trained before it."""
    xt, yt, _, _ = pairs
    trained, fresh = Model(SMALL), Model(SMALL)
    trained.train(xt[:64], yt[:64], num_epochs=1)
    for m in (trained, fresh):
        m.load_pretrained_model()
        assert m.optimizer.state["step"] == 0 and m._snapshot is None
        m.generator.manual_seed(7)
        m.train(xt[:64], yt[:64], num_epochs=1)
    a, b = trained.net.state_dict(), fresh.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "config,pattern",
    [
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"batch_size": -1}, r"batch_size must be an int >= 1, got -1"),
        ({"batch_size": 2.5}, r"batch_size must be an int >= 1, got 2.5"),
        ({"final_lr_fraction": -5}, r"final_lr_fraction must be a finite number >= 0 and <= 1"),
        ({"final_lr_fraction": float("nan")}, r"final_lr_fraction must be a finite number"),
        ({"finetune_lr_scale": -1}, r"finetune_lr_scale must be a finite number > 0, got -1"),
        ({"lr": 0}, r"lr must be a finite number > 0, got 0"),
        ({"momentum": 1.0}, r"momentum must be a finite number >= 0 and < 1, got 1.0"),
        ({"augment": "no"}, r"augment must be True or False, got 'no'"),
        ({"widths": (8, 8, 8)}, r"widths must be 2 ints from 1 to 4096, got \(8, 8, 8\)"),
        ({"widths": (100000, 100000)}, r"widths must be 2 ints from 1 to 4096"),
        ({"kernel": "4"}, r"kernel must be an int >= 2, got '4'"),
        ({"kernel": 7}, r"kernel must be from 2 to 5, got 7"),
        ({"seed": "a"}, r"seed must be an int, got 'a'"),
        ({"warmup_steps": -1}, r"warmup_steps must be an int >= 0, got -1"),
        # past float's range: a raw OverflowError had come from float()
        ({"kernel": 10**400}, r"kernel must be an int >= 2, got an int of 401 digits"),
        ({"lr": 10**400}, r"lr must be a finite number > 0, got an int of 401 digits"),
        ({"seed": -(10**5000)}, r"seed must be an int, got an int of thousands of digits"),
        ({"network": "unet", "depth": 1000}, r"unet: depth must be at most 10, got 1000"),
        (
            {"network": "unet", "widths": (8, 8, 8, 5000)},
            r"unet: widths must be 4 ints from 1 to 4096",
        ),
    ],
)
def test_bad_configs_are_refused_by_name(config, pattern):
    with pytest.raises(ValueError, match=r"^Model: " + pattern):
        Model(config)


def test_a_crafted_checkpoint_is_refused_before_its_network_is_built(tmp_path):
    payload = Model(SMALL).payload()
    payload["config"]["widths"] = [100000, 100000]  # 640 GB of weights if built
    checkpoint.save(tmp_path / "huge.pth", payload)
    with pytest.raises(ValueError, match=r"widths must be 2 ints from 1 to 4096"):
        Model().load_pretrained_model(tmp_path / "huge.pth")
    unet = Model({"network": "unet", "widths": (8, 8, 8, 8), "depth": 2}).payload()
    unet["architecture"]["depth"] = 1000  # a recursion deeper than Python allows
    checkpoint.save(tmp_path / "deep.pth", unet)
    with pytest.raises(ValueError, match=r"deep.pth: bad U-Net architecture: .*at most 10"):
        Model().load_pretrained_model(tmp_path / "deep.pth")
    payload = Model(SMALL).payload()
    payload["params"]["0.weight"] = 3
    checkpoint.save(tmp_path / "int.pth", payload)
    with pytest.raises(ValueError, match=r"int.pth: parameter '0.weight' is not a tensor"):
        Model(SMALL).load_pretrained_model(tmp_path / "int.pth")


def test_a_float_target_takes_the_inputs_scale():
    """A Noise2Noise target's noise is not clipped: a 0-1 target may exceed 1 a little."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    y = x + 0.2 * torch.randn(4, 3, 8, 8, generator=g)  # max above 1
    assert y.max() > 1
    xs, ys = Model(SMALL).prepare_pairs(x, y)
    assert torch.equal(xs, x) and torch.equal(ys, y)  # not divided by 255
    xs, ys = Model(SMALL).prepare_pairs(x * 255, y * 255)
    assert torch.allclose(ys, y, atol=1e-6)


def test_a_weak_light_poisson_target_beside_a_0_1_input_stays_0_1():
    """Poisson noise at a peak below 1 (photon counts / peak) lifts an unclipped 0-1 target's
    maximum far above NOISY_MAX; beside a 0-1 input its mean reads it (it was divided by 255:
    a target of all but black, and a network trained towards black)."""
    from n2nfunc.data.noise import noisy_pair

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(8, 3, 16, 16, generator=g) * 0.8 + 0.1
    x, y = noisy_pair(clean, "poisson:0.1", g)
    assert float(x.max()) <= 1 and float(y.max()) > 16 and float(y.mean()) < 1
    xs, ys = Model(SMALL).prepare_pairs(x, y)
    assert torch.equal(xs, x) and torch.equal(ys, y)


def test_training_sizes_the_exercise_network_cannot_keep_are_named():
    x = torch.rand(4, 3, 13, 17)
    with pytest.raises(ValueError, match=r"multiples of 4 .*got \(4, 3, 13, 17\); crop"):
        Model(SMALL).train(x, x, 1)
    Model({"network": "unet", "widths": (8, 8, 8, 8), "depth": 2, "batch_size": 4}).train(x, x, 1)


def test_mixed_uint8_and_float_pairs_keep_their_own_scales():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    unit = x8.float() / 255
    m = Model(SMALL)
    for x, y in ((x8, unit), (unit, x8.float()), (x8, x8.float()), (unit, x8)):
        xs, ys = m.prepare_pairs(x, y)
        assert torch.allclose(xs, unit) and torch.allclose(ys, unit, atol=1e-6)


def test_noisy_0_1_inputs_above_1_stay_0_1():
    """Unclipped noise takes a 0-1 input above 1: its mean, not its maximum, tells it from a
    0-255 image (it was read as 0-255: a near-black image, and predict's output x 255)."""
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=g) * 0.8 + 0.1
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    assert float(noisy.max()) > 1
    m = Model(SMALL)
    xs, ys = m.prepare_pairs(noisy, noisy * 255)
    assert torch.allclose(xs, noisy) and torch.allclose(ys, noisy, atol=1e-6)
    out = m.predict(noisy)
    assert torch.allclose(out * 255, m.predict(noisy * 255), atol=1e-3)
    assert float(out.max()) <= 1
    night = torch.full((1, 3, 64, 64), 1.0)
    night[..., ::16, ::16] = 230  # a dark 0-255 image with bright points: mean below 2
    assert float(night.mean()) < 2
    assert float(m.prepare_pairs(night, night)[0].max()) == pytest.approx(230 / 255)
    assert torch.allclose(m.predict(night), m.predict(night.round().to(torch.uint8)))
    dim = torch.full((1, 3, 64, 64), 1.5)  # a pair of views of an all but black 0-255 image:
    dim[..., 0, 0] = 20  # the input reads 0-255 by its maximum, and the target beside it too,
    target = 1.5 + 0.5 * torch.randn(dim.shape, generator=g)  # not 0-1 by its mean and maximum
    assert float(target.max()) < 16 and float(target.mean()) < 2
    xs, ys = m.prepare_pairs(dim, target)
    assert torch.allclose(ys * 255, target, atol=1e-4) and float(xs.max()) == pytest.approx(
        20 / 255
    )


def test_configs_take_numpy_numbers_and_any_integer_seed():
    np = pytest.importorskip("numpy")
    m = Model({**SMALL, "batch_size": np.int64(16), "lr": np.float32(1e-3), "seed": -1})
    assert m.config["batch_size"] == 16 and type(m.config["batch_size"]) is int
    assert type(m.config["lr"]) is float


def test_every_whole_number_setting_takes_a_whole_float_as_its_int():
    """A config read from JSON or YAML may say 48.0: counts and sizes alike become ints."""
    m = Model({**SMALL, "batch_size": 16.0, "kernel": 3.0, "widths": (8.0, 8)})
    assert [m.config[k] for k in ("batch_size", "kernel", "widths")] == [16, 3, (8, 8)]
    assert type(m.config["kernel"]) is int and all(type(v) is int for v in m.config["widths"])
    u = Model({"network": "unet", "depth": 2.0, "widths": [8.0, 8, 8, 8]})
    assert (u.config["depth"], u.config["widths"]) == (2, (8, 8, 8, 8))
    assert type(u.config["depth"]) is int
    for bad in ({"widths": (8.5, 8)}, {"network": "unet", "depth": 2.5}):
        with pytest.raises(ValueError, match="widths|depth"):
            Model(bad)


def test_a_strongly_noisy_0_1_target_stays_0_1():
    """Unclipped Poisson noise at peak 1 takes a 0-1 target to 9 and more; its mean stays
    that of the image, which is what tells it from a 0-255 one."""
    from n2nfunc.data.noise import photo_noise_pairs

    photo = torch.full((3, 128, 128), 230, dtype=torch.uint8)
    a, b = photo_noise_pairs([photo], 16, "poisson:1", 64, 0)
    assert float(b.max()) > 4
    _, y = Model(SMALL).prepare_pairs(a, b)
    assert abs(float(y.mean()) - 230 / 255) < 0.05


@pytest.mark.parametrize(
    "config,pattern",
    [
        ({"lr": torch.tensor(1e-3)}, r"lr must be a finite number > 0, got tensor"),
        ({"batch_size": torch.tensor(16)}, r"batch_size must be an int >= 1, got tensor"),
        ({"batch_size": 16.7}, r"batch_size must be an int >= 1, got 16.7"),
    ],
)
def test_tensors_and_fractions_are_not_config_numbers(config, pattern):
    with pytest.raises(ValueError, match=r"^Model: " + pattern):
        Model(config)


def test_train_epoch_takes_a_numpy_epoch_count():
    np = pytest.importorskip("numpy")
    m = Model({**SMALL, "batch_size": 4})
    x, y = m.prepare_pairs(torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8))
    assert m.train_epoch(x, y, 0, np.int64(3)) > 0


@pytest.mark.parametrize(
    "config, error, pattern",
    [
        ("unet", TypeError, r"Model: config must be a dict, got str"),
        ([("lr", 1)], TypeError, r"Model: config must be a dict, got list"),
        ({"seed": 2**70}, ValueError, r"Model: seed must be an int from -2\*\*62 to 2\*\*62 - 1"),
        ({"lrr": 1, "epochs": 2}, ValueError, r"unknown config keys \['epochs', 'lrr'\]; known"),
        ({1: 2, "foo": 3}, ValueError, r"unknown config keys \['foo', 1\]"),  # (not comparable)
    ],
)
def test_model_refuses_what_is_not_a_config(config, error, pattern):
    with pytest.raises(error, match=pattern):
        Model(config)


def test_train_takes_num_epochs_as_the_config_does():
    import numpy as np

    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = Model({"batch_size": 4})
    assert len(model.train(x, x, num_epochs=np.int64(2))) == 2
    assert len(model.train(x, x, num_epochs=1.0)) == 1
    with pytest.raises(ValueError, match=r"num_epochs must be an int >= 0, got -1"):
        model.train(x, x, num_epochs=-1)


def test_predict_never_joins_the_callers_autograd_graph():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with torch.enable_grad():
        out = Model().predict(x)
    assert not out.requires_grad and out.grad_fn is None


def test_weights_with_nan_are_refused_and_messages_carry_no_quotes(tmp_path):
    from n2nfunc import checkpoint

    model = Model()
    payload = model.payload()
    broken = {**payload, "params": dict(payload["params"])}
    name = next(iter(broken["params"]))
    broken["params"][name] = broken["params"][name].clone().fill_(float("nan"))
    checkpoint.save(tmp_path / "nan.pth", broken)
    with pytest.raises(ValueError, match=f"parameter '{name}' holds NaN"):
        model.load_pretrained_model(tmp_path / "nan.pth")
    # float64 weights past float32's range: infinite once a Model holds them
    big = {**payload, "params": {k: v.double() for k, v in payload["params"].items()}}
    big["params"][name][0] = 1e300
    checkpoint.save(tmp_path / "big.pth", big)
    with pytest.raises(ValueError, match=f"'{name}' holds values too large for float32 .*1e"):
        model.load_pretrained_model(tmp_path / "big.pth")
    with pytest.raises(ValueError, match="too large for float32"):
        load_network(tmp_path / "big.pth")
    missing = {**payload, "params": dict(payload["params"])}
    del missing["params"][name]
    checkpoint.save(tmp_path / "missing.pth", missing)
    with pytest.raises(ValueError) as info:
        model.load_pretrained_model(tmp_path / "missing.pth")
    assert str(info.value).endswith(
        f"missing.pth: Sequential.load_state_dict: missing keys [{name!r}], unexpected keys []"
    )


def test_predict_chunks_hold_a_fixed_budget_of_computed_bytes():
    from n2nfunc.model import PREDICT_BYTES, PREDICT_TILE, images_per_chunk

    assert images_per_chunk(32, 32, torch.float32) * 32 * 32 * 4 == PREDICT_BYTES
    assert images_per_chunk(32, 32, torch.bfloat16) == 2 * images_per_chunk(32, 32, torch.float32)
    assert images_per_chunk(32, 32, torch.float32, "cuda") == PREDICT_TILE**2 // (32 * 32)
    assert images_per_chunk(2000, 3000, torch.float32) == 1  # at least one image


def test_predict_takes_a_positive_int_max_pixels():
    m = Model(SMALL)
    x = torch.rand(2, 3, 20, 20)
    for bad, error in ((1e6, TypeError), (0, ValueError), (True, TypeError)):
        with pytest.raises(error, match="Model.predict: max_pixels must be a positive int"):
            m.predict(x, max_pixels=bad)
    assert (m.predict(x, max_pixels=400) - m.predict(x)).abs().max() < 1e-5  # one image a chunk


def test_a_setting_of_the_other_network_is_refused_unless_at_its_default():
    """{"network": "unet", "kernel": 99} and {"depth": -5} were stored and ignored."""
    for config, said in (
        ({"network": "unet", "kernel": 99, "upsampling": "bogus"}, "'kernel', 'upsampling' are"),
        ({"depth": -5}, "'depth' is a setting of network 'unet' only"),
        ({"network": "exercise", "depth": 3}, "this config's network is 'exercise'"),
    ):
        with pytest.raises(ValueError, match=said):
            Model(config)
    # a full config (a checkpoint's, the command line's) holds the others at their defaults
    unet = Model({"network": "unet", "depth": 3, "kernel": 4, "upsampling": "transpose"})
    assert unet.config["depth"] == 3 and Model(dict(unet.config)).config == unet.config
    assert Model({"depth": 4, "kernel": 3}).config["kernel"] == 3
    # a Model that loads the other network's weights drops the settings it was given for its
    # own, so that its config builds a Model again
    exercise = Model({"kernel": 3, "upsampling": "nearest"})
    exercise.load_payload(unet.payload(), "unet weights")
    assert exercise.config["network"] == "unet" and exercise.config["kernel"] == 4
    assert Model(dict(exercise.config)).config == exercise.config


def test_a_shipped_networks_name_given_as_a_path_points_to_from_pretrained(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"Model.from_pretrained\('unet-gaussian'\)"):
        Model().load_pretrained_model("unet-gaussian")


def test_momentum_away_from_its_default_is_refused_beside_adam():
    """{"optimizer": "adam", "momentum": 0.5} built Adam and dropped the momentum (the command
    line refused --momentum with --optimizer adam)."""
    for config in ({"momentum": 0.5}, {"optimizer": "adam", "momentum": 0.0}):
        with pytest.raises(ValueError, match="'momentum' is a setting of optimizer 'sgd' only"):
            Model(config)
    assert Model({"optimizer": "sgd", "momentum": 0.5}).optimizer.param_groups[0]["momentum"] == 0.5
    full = Model().config  # a full config holds it at its default
    assert Model(dict(full)).config == full


def test_a_checkpoint_naming_another_network_or_without_a_params_dict_says_so(tmp_path):
    payload = Model().payload()
    for change, said in (
        (lambda p: p["config"].update(network="resnet"), "names network 'resnet'"),
        (lambda p: p.update(params=list(p["params"].values())), "its 'params' is not a dict"),
    ):
        bad = {"config": dict(payload["config"]), "params": dict(payload["params"])}
        change(bad)
        checkpoint.save(tmp_path / "bad.pth", bad)
        with pytest.raises(ValueError, match=said):
            Model().load_pretrained_model(tmp_path / "bad.pth")


def test_an_explicit_scale_reads_noisy_0_1_images_the_rule_takes_for_0_255():
    """Both views at Poisson peak 0.1 go far above NOISY_MAX: the rule reads such an input
    as 0-255 (an all but black image); ``scale=1`` says what it is, in train, predict and
    evaluate alike, and the output comes back on that scale."""
    from n2nfunc.data.noise import noisy_pair

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(8, 3, 16, 16, generator=g) * 0.8 + 0.1
    x, y = noisy_pair(clean, "poisson:0.1", g)
    x = y.flip(0)  # an unclipped input too: maximum far above NOISY_MAX, mean about 0.5
    assert float(x.max()) > 16 and float(x.mean()) < 1
    m = Model(SMALL)
    guessed, _ = m.prepare_pairs(x, y)
    assert float(guessed.max()) < 1  # divided by 255
    xs, ys = m.prepare_pairs(x, y, scale=1)
    assert torch.equal(xs, x) and torch.equal(ys, y)
    xs, ys = m.prepare_pairs(x * 255, y * 255, scale=255)
    assert torch.allclose(xs, x, atol=1e-6)
    out = m.predict(x, scale=1)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    assert float(out.mean()) > 0.05  # 0-1 output; read as 0-255 it would be near 0 x 255
    assert torch.allclose(m.predict(x * 255, scale=255), out * 255, atol=1e-3)
    scores = evaluate(m, x, clean, scale=1)
    assert scores["denoised_psnr"] > 0 and math.isfinite(scores["gain"])
    assert m.train(x, y, 1, scale=1)  # trains: one epoch's mean loss


@pytest.mark.parametrize(
    "scale, message",
    [
        (0, r"Model.predict: scale must be the value of white .* got 0"),
        (-1.0, r"got -1.0"),
        (float("inf"), r"got inf"),
        ("255", r"got '255'"),
        (True, r"got True"),
    ],
)
def test_a_bad_scale_is_refused(scale, message):
    with pytest.raises(ValueError, match=message):
        Model(SMALL).predict(torch.rand(1, 3, 8, 8), scale=scale)


def test_a_scale_that_contradicts_the_images_is_refused():
    m = Model(SMALL)
    x = torch.rand(2, 3, 8, 8) * 255
    with pytest.raises(ValueError, match=r"test_input: the mean value .* above white \(scale=1\)"):
        m.predict(x, scale=1)
    with pytest.raises(ValueError, match=r"train_target: the mean value"):
        m.train(x / 255, x, 1, scale=1)
    x8 = x.to(torch.uint8)
    with pytest.raises(ValueError, match=r"integer images .*scale must be 255 .*got scale=1"):
        m.predict(x8, scale=1)
    assert torch.equal(m.predict(x8, scale=255), m.predict(x8))
    with pytest.raises(ValueError, match=r"psnr"):  # clean on 0-255 against scale=1
        evaluate(m, x / 255, x, scale=1)
    with pytest.raises(ValueError, match=r"evaluate: the clean images lie within 0-1, a 0-1 im"):
        evaluate(m, x8, x.div(255).clamp(max=1), scale=255)  # had scored it: +1 dB "gain"


def test_predict_and_psnr_take_one_image_too():
    """A (3, H, W) image, as n2nfunc.denoise_image takes and returns it, was refused by
    predict and by psnr; train still wants a batch, and says how to make one."""
    from n2nfunc.metrics import psnr

    m = Model(SMALL)
    image = torch.rand(3, 13, 9)
    out = m.predict(image)
    assert out.shape == image.shape and torch.equal(out, m.predict(image[None])[0])
    assert torch.equal(m.predict(image * 255, scale=255), m.predict(image[None] * 255)[0])
    assert psnr(out, image) == psnr(out[None], image[None])
    with pytest.raises(ValueError, match=r"train_input must have shape .*\(3, 8, 8\) \(one image"):
        m.train(torch.rand(3, 8, 8), torch.rand(3, 8, 8), 1)
    with pytest.raises(ValueError, match=r"psnr: expected two \(N, C, H, W\) \(or \(3, H, W\)\)"):
        psnr(out, image[None])
    with pytest.raises(ValueError, match=r"psnr: expected"):  # a grey batch, not one image
        psnr(torch.rand(5, 8, 8), torch.rand(5, 8, 8))


def test_a_deep_copy_trains_with_its_own_learning_rate_and_loading_restarts_the_data_order():
    """A copy's optimizer read the original's lr (its schedule closed over the original), and
    fine-tuning after load_pretrained_model depended on what the Model had trained before."""
    import copy

    g = torch.Generator().manual_seed(3)
    a, b = (torch.randint(0, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8) for _ in "ab")
    small = {"widths": (8, 8), "batch_size": 16}
    m = Model(small)
    m.train(a, b, 1)
    d = copy.deepcopy(m)
    before = [p.clone() for p, _ in d.net.param()]
    m.optimizer.lr = 0.0  # the original only
    d.train(a, b, 1)
    assert any(not torch.equal(p, q) for (p, _), q in zip(d.net.param(), before))
    fresh, used = Model(small), Model(small)
    used.train(a[:32], b[:32], 1)
    for model in (fresh, used):
        model.load_payload(m.payload(), "the trained Model's payload")
        model.train(a, b, 1)
    assert all(torch.equal(p, q) for (p, _), (q, _) in zip(fresh.net.param(), used.net.param()))


def test_nearest_upsampling_with_the_default_kernel_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^Model: upsampling 'nearest' needs an odd kernel .* 4 "):
        Model({"upsampling": "nearest"})
    assert Model({"upsampling": "nearest", "kernel": 3}).config["kernel"] == 3


def test_divergence_restores_the_optimizer_state_with_the_parameters(pairs, monkeypatch):
    xt, yt, _, _ = pairs
    m = Model({**SMALL, "warmup_steps": 0})
    calls, states, forward = [], [], m.loss.forward

    def nan_at_fourth(pred, target):
        calls.append(1)
        states.append((m.optimizer.state, [p.clone() for p, _ in m.net.param()]))
        loss = forward(pred, target)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(m.loss, "forward", nan_at_fourth)
    with pytest.raises(FloatingPointError, match="optimizer state"):
        m.train(xt[:64], yt[:64], num_epochs=1)
    state, params = states[2]  # as before the third update, whose result gave the NaN
    assert m.optimizer.state is state and m.optimizer.state["step"] == 2
    assert all(torch.equal(p, q) for (p, _), q in zip(m.net.param(), params))


def test_refused_training_data_leaves_the_weights_as_they_were():
    """train_epoch cast the weights to the data's dtype before checking it (uint8 data
    truncated them for good, float16 rounded them); a bfloat16 Model refused float64 data
    after casting its weights to float64; a callback that is not callable failed after the
    first update."""
    x, y = make_pairs(8, "train", seed=3)
    m = Model(SMALL)
    before = {k: v.clone() for k, v in m.net.state_dict().items()}

    def unchanged():
        return all(
            torch.equal(v, before[k]) and v.dtype == before[k].dtype
            for k, v in m.net.state_dict().items()
        )

    xf, yf = m.prepare_pairs(x, y)
    for bad in ((x, y), (xf.half(), yf.half()), (xf, yf[:, :, :4])):
        with pytest.raises(ValueError, match="Model.train_epoch: x"):
            m.train_epoch(*bad, 0, 1)
        assert unchanged()
    with pytest.raises(TypeError, match="callback must be callable, got 'x'"):
        m.train(x, y, num_epochs=1, callback="x")
    assert unchanged()
    mixed = Model({**SMALL, "precision": "bfloat16"})
    with pytest.raises(ValueError, match="precision 'bfloat16' computes on float32 data"):
        mixed.train(xf.double(), yf.double(), num_epochs=1)
    assert all(t.dtype == torch.float32 for t in mixed.net.state_dict().values())


def test_wider_unsigned_integer_images_and_numpy_widths():
    np = pytest.importorskip("numpy")
    x, _ = make_pairs(4, "val", seed=2)
    m = Model({**SMALL, "widths": tuple(np.array([8, 8]))})
    assert m.config["widths"] == (8, 8) and all(type(w) is int for w in m.config["widths"])
    for dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch has no min / max of these
        assert torch.equal(m.predict(x.to(dtype)), m.predict(x))
    with pytest.raises(ValueError, match="integer images hold 0-255"):
        m.predict(x.to(torch.uint16) * 257)  # 16-bit images


def test_the_same_pairs_check_takes_nan_data_as_data():
    """Pairs holding NaN or inf, the same on every rank, are not other pairs (the check had
    blamed the ranks; the training stops on the NaN loss, saying so, as with one process)."""
    from n2nfunc.model import _check_same_pairs

    class Alone:  # a group whose other ranks hold what this one holds
        rank, size = 0, 2

        @staticmethod
        def mean(t):
            return t.clone()

    x = torch.rand(40, 3, 8, 8)
    x[0, 0, 0, 0], x[16, 1, 2, 3] = float("nan"), float("inf")
    _check_same_pairs(Alone, x, x.clone())

    class Other(Alone):
        @staticmethod
        def mean(t):
            return t * 0.5

    with pytest.raises(ValueError, match="rank 0 of 2 holds other training pairs"):
        _check_same_pairs(Other, x, x.clone())


@pytest.mark.parametrize("config", [None, {"network": "unet", "batch_size": 4}])
def test_training_under_inference_mode_takes_the_same_steps_and_goes_on_outside(config):
    """The CLI trains, evaluates and denoises under ``torch.inference_mode`` (cli.common.
    no_autograd): the same steps as with grad mode merely off, and a model whose optimizer
    state was made inside it (inference tensors) trains on outside it. (Compared to 1e-6,
    not bit for bit: two runs of the same float32 steps in one process differed in the last
    bits in about 1 of 6 processes here, inference mode or not, MKL's kernels rounding one
    product differently.)"""
    g = torch.Generator().manual_seed(3)
    size = 32 if config is None else 16
    x, y = (torch.rand(8, 3, size, size, generator=g) for _ in range(2))
    plain, inside, mixed, fresh = (
        Model() if config is None else Model(config=dict(config)) for _ in "abcd"
    )
    for epoch in range(2):
        plain.train_epoch(x, y, epoch, 2)
        with torch.inference_mode():
            inside.train_epoch(x, y, epoch, 2)
    with torch.inference_mode():
        mixed.train_epoch(x, y, 0, 2)
    mixed.train_epoch(x, y, 1, 2)
    trained = [p for p, _ in plain.net.param()]
    assert any(not torch.equal(p, q) for p, (q, _) in zip(trained, fresh.net.param()))
    for other in (inside, mixed):
        pairs = zip(trained, other.net.param())
        assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, (q, _) in pairs)
    with torch.inference_mode():
        out = inside.predict(x * 255)
    assert torch.allclose(out, plain.predict(x * 255), rtol=0, atol=1e-3)  # (0-255 scale)


def test_an_epoch_trains_on_full_batches_only():
    """As documented (drop_last): 50 pairs at batch 32 make one step an epoch; fewer pairs
    than the batch size make one batch of all of them."""

    def run(n: int):
        model = Model({"widths": (4, 4), "batch_size": 32, "augment": False})
        sizes, calls = [], []
        forward = model.loss.forward
        model.loss.forward = lambda p, t: (sizes.append(len(p)), forward(p, t))[1]
        x = torch.rand(n, 3, 8, 8)
        model.train(x, x.clone(), 2, callback=lambda e, b, per, loss: calls.append((e, b, per)))
        return sizes, calls

    for n, steps, size in ((50, 1, 32), (64, 2, 32), (5, 1, 5)):
        sizes, calls = run(n)
        assert sizes == [size] * 2 * steps
        assert calls == [(e, b, steps) for e in range(2) for b in range(steps)]
