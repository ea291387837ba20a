"""Initialisers: PyTorch's default bit-exactly against torch.nn with the same seed, the named
ones bit-exactly against torch.nn.init with the same generator and statistically."""

import math

import pytest
import torch

import n2nfunc as nf

LAYERS = [
    # (functional layer, in_shape, the torch.nn twin with the same weights)
    (nf.conv2d(5, 3, 2, 1), (-1, 4, -1, -1), lambda: torch.nn.Conv2d(4, 5, 3, 2, 1)),
    (
        nf.conv2d(2, (3, 1), bias=False),
        (-1, 3, 8, 8),
        lambda: torch.nn.Conv2d(3, 2, (3, 1), bias=False),
    ),
    (
        nf.conv_transpose2d(6, 4, 2, 1),
        (-1, 3, -1, -1),
        lambda: torch.nn.ConvTranspose2d(3, 6, 4, 2, 1),
    ),
    (nf.upsample(4, 3, padding=1), (-1, 2, -1, -1), lambda: torch.nn.Conv2d(2, 4, 3, padding=1)),
    (nf.dense(7), (-1, 13), lambda: torch.nn.Linear(13, 7)),
    (nf.dense(3, bias=False), (-1, 2, 5), lambda: torch.nn.Linear(5, 3, bias=False)),
]


@pytest.mark.parametrize("layer,in_shape,make_ref", LAYERS)
def test_default_init_is_torch_nn_bit_for_bit(layer, in_shape, make_ref):
    for seed in (0, 123):
        _, params = layer.init(torch.Generator().manual_seed(seed), in_shape)
        torch.manual_seed(seed)
        ref = make_ref()
        assert torch.equal(params["weight"], ref.weight)
        if ref.bias is None:
            assert "bias" not in params
        else:
            assert torch.equal(params["bias"], ref.bias)


TWINS = {
    "he_normal": lambda w, g: torch.nn.init.kaiming_normal_(w, nonlinearity="relu", generator=g),
    "he_uniform": lambda w, g: torch.nn.init.kaiming_uniform_(w, nonlinearity="relu", generator=g),
    "xavier_uniform": lambda w, g: torch.nn.init.xavier_uniform_(w, generator=g),
    "zeros": lambda w, g: torch.nn.init.zeros_(w),
}

MAKERS = [
    (lambda init: nf.conv2d(5, 3, init=init), (-1, 4, -1, -1), (5, 4, 3, 3)),
    (lambda init: nf.conv_transpose2d(6, (4, 2), 2, init=init), (-1, 3, -1, -1), (3, 6, 4, 2)),
    (lambda init: nf.upsample(4, 3, init=init), (-1, 2, -1, -1), (4, 2, 3, 3)),
    (lambda init: nf.dense(7, init=init), (-1, 13), (7, 13)),
]


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("make,in_shape,weight_shape", MAKERS)
def test_named_inits_equal_torch_nn_init_with_the_same_generator(
    name, make, in_shape, weight_shape
):
    _, params = make(name).init(torch.Generator().manual_seed(4), in_shape)
    ref = TWINS[name](torch.empty(weight_shape), torch.Generator().manual_seed(4))
    assert torch.equal(params["weight"], ref)
    assert torch.equal(params["bias"], torch.zeros(params["bias"].shape))


@pytest.mark.parametrize(
    "name,fan_in,fan_out,uniform_bound,std",
    [
        ("he_normal", 256, 384, None, math.sqrt(2 / 256)),
        ("he_uniform", 256, 384, math.sqrt(6 / 256), math.sqrt(2 / 256)),
        ("xavier_uniform", 256, 384, math.sqrt(6 / 640), math.sqrt(2 / 640)),
    ],
)
def test_named_inits_have_the_right_distribution(name, fan_in, fan_out, uniform_bound, std):
    # a dense weight [384, 256] has these fans (conv fans: the next test)
    _, params = nf.dense(fan_out, init=name).init(torch.Generator().manual_seed(0), (-1, fan_in))
    w = params["weight"].double().flatten()
    n = w.numel()  # 98304 samples: the mean's standard error is std / 313
    assert abs(float(w.mean())) < 5 * std / math.sqrt(n)
    assert abs(float(w.std()) / std - 1) < 0.01
    within_one_std = float((w.abs() < std).double().mean())
    if uniform_bound is None:
        assert abs(within_one_std - 0.6827) < 0.01  # normal
        assert float(w.abs().max()) > 3.5 * std
    else:
        assert (
            float(w.abs().max()) <= uniform_bound and float(w.abs().max()) > 0.999 * uniform_bound
        )
        assert abs(within_one_std - std / uniform_bound) < 0.01  # uniform: 1/sqrt(3)
    assert torch.equal(params["bias"], torch.zeros(fan_out))


def test_conv_fans_count_the_kernel_area():
    _, params = nf.conv2d(64, 3, init="he_normal").init(
        torch.Generator().manual_seed(0), (-1, 32, -1, -1)
    )
    std = math.sqrt(2 / (32 * 9))
    assert abs(float(params["weight"].std()) / std - 1) < 0.02
    assert nf.init.fans((64, 32, 3, 3)) == (288, 576)
    assert nf.init.fans((7, 13)) == (13, 7)


def test_zeros_and_callable_inits():
    _, params = nf.conv2d(3, 3, init="zeros").init(None, (-1, 2, -1, -1))
    assert float(params["weight"].abs().sum()) == 0 and float(params["bias"].abs().sum()) == 0

    def ones(generator, shape):
        return torch.ones(shape)

    _, params = nf.dense(4, init=ones).init(None, (-1, 3))
    assert torch.equal(params["weight"], torch.ones(4, 3))
    assert torch.equal(params["bias"], torch.zeros(4))


def test_bad_inits_are_refused():
    for make in (lambda: nf.conv2d(3, 3, init="kaiming"), lambda: nf.dense(3, init=1.0)):
        with pytest.raises(ValueError, match=r"init must be None, one of \['he_normal'"):
            make()
    layer = nf.dense(4, init=lambda g, shape: torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"dense.*init returned \(2, 2\), expected .*\(4, 3\)"):
        layer.init(None, (-1, 3))


def test_init_draws_on_the_generators_device():
    _, params = nf.dense(4, init="he_normal").init(torch.Generator(), (-1, 3))
    assert params["weight"].device.type == "cpu"
    if torch.cuda.is_available():
        _, params = nf.conv2d(4, 3, init="he_uniform").init(
            torch.Generator(device="cuda"), (-1, 2, -1, -1)
        )
        assert params["weight"].is_cuda and params["bias"].is_cuda


def test_meta_shapes_draw_nothing(monkeypatch):
    """Checkpoint checks form a U-Net's shapes on the meta device; a first normal_ there cost
    a second of torch's imports on every U-Net load (found in a newcomer trial)."""

    def refuse(*args, **kwargs):
        raise AssertionError("normal_ called on the meta device")

    monkeypatch.setattr(torch.Tensor, "normal_", refuse)
    with torch.device("meta"):
        _, params = nf.conv2d(8, 3, init="he_normal").init(None, (1, 4, 8, 8))
    assert params["weight"].is_meta and params["weight"].shape == (8, 4, 3, 3)


@pytest.mark.parametrize("seed", [0, "cpu", 1.5])
def test_init_refuses_a_seed_in_place_of_a_generator(seed):
    """layer.init(0, shape) raised AttributeError: 'int' object has no attribute 'device'."""
    for layer in (nf.conv2d(3, 3), nf.batch_norm2d(), nf.dense(4), nf.upsample(3, 3)):
        with pytest.raises(TypeError, match=r"init's generator must be a torch.Generator or None"):
            layer.init(seed, (-1, 3, 8, 8))
