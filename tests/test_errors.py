"""Bad input raises ValueError / TypeError naming the layer and the shapes."""

import math
import re

import numpy as np
import pytest
import torch

import n2nfunc as nf
from n2nfunc import Conv2d, NearestUpsampling
from n2nfunc.testing import VJPCheckError


def _params(layer, shape):
    return layer.init(None, shape)[1]


@pytest.mark.parametrize(
    "layer,shape,x,error,pattern",
    [
        (
            nf.conv2d(4, 3),
            (1, 3, 8, 8),
            torch.randn(3, 8, 8),
            ValueError,
            r"conv2d.*\(N, 3, H, W\).*\(3, 8, 8\)",
        ),
        (
            nf.conv2d(4, 3),
            (1, 3, 8, 8),
            torch.randn(1, 2, 8, 8),
            ValueError,
            r"conv2d.*\(1, 2, 8, 8\)",
        ),
        (
            nf.conv2d(4, 5),
            (1, 3, 8, 8),
            torch.randn(1, 3, 4, 8),
            ValueError,
            r"conv2d.*kernel is larger than the padded input",
        ),
        (
            nf.conv_transpose2d(4, 3),
            (1, 3, 8, 8),
            torch.randn(1, 5, 8, 8),
            ValueError,
            r"conv_transpose2d.*\(1, 5, 8, 8\)",
        ),
        (
            nf.upsample(4, 3),
            (1, 3, 8, 8),
            torch.randn(2, 4, 8, 8),
            ValueError,
            r"upsample.*\(2, 4, 8, 8\)",
        ),
        (
            nf.conv2d(4, 3),
            (1, 3, 8, 8),
            torch.randn(1, 3, 8, 8, dtype=torch.float64),
            TypeError,
            r"conv2d\(.*\): input dtype torch.float64 does not match",
        ),
        (
            nf.conv2d(4, 3),
            (1, 3, 8, 8),
            torch.ones(1, 3, 8, 8, dtype=torch.int64),
            TypeError,
            r"conv2d\(.*\): input must be floating point",
        ),
        (
            nf.conv2d(4, 3),
            (1, 3, 8, 8),
            [[1.0]],
            TypeError,
            r"conv2d\(.*\): input must be a Tensor",
        ),
        (
            nf.conv2d(4, 3),
            (1, 3, 8, 8),
            torch.randn(0, 3, 8, 8),
            ValueError,
            r"conv2d\(.*\): empty batch",
        ),
        (nf.sigmoid(), (1, 3, 8, 8), "x", TypeError, r"sigmoid: input must be a Tensor"),
    ],
)
def test_apply_rejects_bad_input(layer, shape, x, error, pattern):
    params = _params(layer, shape)
    with pytest.raises(error, match=pattern):
        layer.apply(params, x)
    with pytest.raises(error, match=pattern):
        layer.vjp(params, x)


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda: nf.conv2d(0, 3), "out_channels must be a positive int"),
        (lambda: nf.conv2d(4, 0), "kernel_size must be >= 1"),
        (lambda: nf.conv2d(4, 3, stride=0), "stride must be >= 1"),
        (lambda: nf.conv2d(4, 3, padding=-1), "padding must be >= 0"),
        (lambda: nf.conv2d(4, (3, 3, 3)), "kernel_size must be an int or a pair"),
        (
            lambda: nf.conv_transpose2d(4, 3, stride=2, output_padding=2),
            "output_padding must be smaller",
        ),
        (lambda: nf.nearest_upsample(0), "scale_factor must be >= 1"),
        (
            lambda: nf.nearest_upsample(size=(4, 0)),
            r"nearest_upsample\(size=\(4, 0\)\): size must be >= 1",
        ),
        (lambda: nf.nearest_upsample(size=2.5), "size must be an int or a pair"),
        (lambda: Conv2d(3, -1, 3), "out_channels"),
    ],
)
def test_constructors_reject_bad_sizes(make, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make()


def test_init_rejects_bad_shapes():
    with pytest.raises(
        ValueError, match=r"conv2d.*input shape \(1, 3, 0, 8\) has a non-positive size"
    ):
        nf.conv2d(4, 3).init(None, (1, 3, 0, 8))
    with pytest.raises(ValueError, match=r"conv2d.*expected an input shape \(N, C, H, W\)"):
        nf.conv2d(4, 3).init(None, (3, 8, 8))
    with pytest.raises(ValueError, match=r"kernel is larger than the padded input"):
        nf.conv2d(4, 5, padding=1).init(None, (1, 3, 2, 8))


def test_params_of_the_wrong_shape_are_named():
    layer = nf.conv2d(4, 3)
    params = _params(layer, (1, 3, 8, 8))
    params["bias"] = torch.zeros(5)
    with pytest.raises(
        ValueError, match=r"conv2d.*parameter 'bias' must have shape \(4,\), got \(5,\)"
    ):
        layer.apply(params, torch.randn(1, 3, 8, 8))
    with pytest.raises(
        ValueError, match=r"expected parameters \['bias', 'weight'\], got \['weight'\]"
    ):
        layer.apply({"weight": params["weight"]}, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    "make, in_shape, other_shape, x_shape, pattern",
    [
        (lambda c: nf.conv2d(c, 3), (-1, 5, 8, 8), (-1, 5, 8, 8), (2, 16, 8, 8),
         r"conv2d.*'weight' must have shape \(8, 16, 3, 3\), got \(16, 5, 3, 3\)"),
        (lambda c: nf.conv_transpose2d(c, 3), (-1, 5, 8, 8), (-1, 5, 8, 8), (2, 16, 8, 8),
         r"conv_transpose2d.*'weight' must have shape \(16, 8, 3, 3\), got \(5, 16, 3, 3\)"),
        (lambda c: nf.dense(c), (-1, 5), (-1, 5), (2, 7),
         r"dense.*'weight' must have shape \(8, 7\), got \(16, 5\)"),
    ],
)  # fmt: skip
def test_another_layers_weight_is_named_with_the_shape_this_input_needs(
    make, in_shape, other_shape, x_shape, pattern
):
    """Params of another layer (16 outputs, 5 inputs) given to an 8-output layer: the
    expected shape took its input size from the wrong weight, then blamed the input."""
    g = torch.Generator().manual_seed(0)
    _, other = make(16).init(g, other_shape)
    _, own = make(8).init(g, in_shape)
    with pytest.raises(ValueError, match=pattern):
        make(8).apply(other, torch.randn(x_shape))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, (\*, )?5"):
        make(8).apply(own, torch.randn(x_shape))  # its own weight: the input is wrong


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsample_vjp_names_a_bad_input_before_picking_its_engine(dtype):
    """The engine choice read ``x.element_size()`` and ``x.shape[3]`` first: a 3-D input
    was an IndexError, a list an AttributeError, neither naming the layer."""
    layer = nf.upsample(16, 3, padding=1)
    params = _params(layer, (1, 3, 8, 8))
    params = {k: v.to(dtype) for k, v in params.items()}
    with pytest.raises(ValueError, match=r"upsample\(.*expected input of shape \(N, 3, H, W\)"):
        layer.vjp(params, torch.randn(3, 8, 8, dtype=dtype))
    with pytest.raises(TypeError, match=r"upsample\(.*input must be a Tensor, got list"):
        layer.vjp(params, [[1.0]])
    with pytest.raises(ValueError, match=r"in layer 0: upsample\(.*got \(3, 8, 8\)"):
        nf.Sequential(nf.Upsampling(3, 16, 3, padding=1))(torch.randn(3, 8, 8))


def test_init_given_a_tensor_or_an_unknown_channel_count_says_so():
    with pytest.raises(ValueError, match=r"got a tensor of shape \(8, 3, 32, 32\) \(init takes"):
        nf.conv2d(4, 3).init(None, torch.randn(8, 3, 32, 32))
    with pytest.raises(ValueError, match=r"the channel count C of input shape \(-1, -1, 32, 32\)"):
        nf.conv2d(4, 3).init(None, (-1, -1, 32, 32))


def test_cotangent_of_the_wrong_shape_is_refused():
    layer = nf.conv2d(4, 3)
    y, pullback = layer.vjp(_params(layer, (1, 3, 8, 8)), torch.randn(1, 3, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"output gradient must have the output's shape \(1, 4, 6, 6\), got \(4, 6, 6\)",
    ):
        pullback(torch.randn(4, 6, 6))


def test_mixed_devices_are_refused():
    layer = nf.conv2d(4, 3)
    params = _params(layer, (1, 3, 8, 8))
    meta = torch.empty(1, 3, 8, 8, device="meta")
    with pytest.raises(
        ValueError, match=r"conv2d\(.*\): input is on meta but the parameters are on cpu"
    ):
        layer.apply(params, meta)


IMAGE_LAYERS = [
    nf.conv2d(4, 3, padding=1),
    nf.conv_transpose2d(4, 3, stride=2),
    nf.upsample(4, 3),
    nf.max_pool2d(2),
    nf.global_avg_pool(),
]


@pytest.mark.parametrize(
    "layer", IMAGE_LAYERS + [nf.nearest_upsample(2), nf.avg_pool2d(2), nf.batch_norm2d()]
)
@pytest.mark.parametrize("hw", [(0, 4), (4, 0)])
def test_images_without_pixels_are_refused(layer, hw):
    """(torch refuses them too; a transposed convolution used to return an image of biases)"""
    _, params, state = nf.lift(layer).init(None, (1, 3, 4, 4))
    x = torch.randn(1, 3, *hw)
    with pytest.raises(ValueError, match=r"empty image \(H or W is 0\), input shape \(1, 3, "):
        nf.lift(layer).vjp(params, state, x, train=True)


@pytest.mark.parametrize(
    "layer",
    IMAGE_LAYERS
    + [nf.relu(), nf.elu(), nf.flatten(), nf.identity(), nf.serial(nf.conv2d(4, 3), nf.relu())],
)
@pytest.mark.parametrize("ct_dtype", [torch.float64, torch.bfloat16])
def test_a_cotangent_of_another_float_dtype_is_converted_to_the_outputs(layer, ct_dtype):
    """As torch.autograd converts gradients between nodes: the input gradient keeps the
    input's dtype, the parameter gradients the parameters' (no raw matmul dtype error)."""
    params = layer.init(None, (2, 3, 6, 6))[1]
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, dtype=ct_dtype)
    grads, dx = pullback(ct)
    expected_grads, expected_dx = layer.vjp(params, x)[1](ct.float())
    assert dx.dtype == torch.float32 and torch.equal(dx, expected_dx)
    for g, e in zip(nf.tree.leaves(grads), nf.tree.leaves(expected_grads)):
        assert g.dtype == torch.float32 and torch.equal(g, e)
    with pytest.raises(TypeError, match=r"output gradient must be floating point, got torch.int64"):
        layer.vjp(params, x)[1](ct.long())


@pytest.mark.parametrize(
    "layer,in_shape",
    [
        (nf.conv2d(4, 3, padding=1), (1, 2, 5, 5)),
        (nf.conv_transpose2d(4, 3, stride=2, padding=1), (1, 2, 5, 5)),
        (nf.upsample(4, 3, 2, padding=1), (1, 2, 5, 5)),
        (nf.dense(4), (1, 6)),
    ],
)
def test_a_bias_of_another_dtype_than_the_weight_is_named(layer, in_shape):
    _, params = layer.init(None, in_shape)
    x = torch.rand(in_shape)
    for bias in (params["bias"].double(), params["bias"].int()):
        with pytest.raises(
            TypeError,
            match=r"in layer 0: .*'bias' is torch\.(float64|int32) on cpu, but 'weight' is",
        ):
            nf.serial(layer).apply({"0": {**params, "bias": bias}}, x)


def test_upsampling_a_non_tensor_and_an_empty_transposed_output_are_named():
    with pytest.raises(
        TypeError, match=r"nearest_upsample\(scale_factor=2\): input must be a Tensor"
    ):
        nf.nearest_upsample().apply({}, [1.0])
    layer = nf.conv_transpose2d(2, 3, padding=3)
    with pytest.raises(ValueError, match="empty output along H .*the padding crops away"):
        layer.init(None, (1, 2, 2, 2))


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: nf.dense(3, bias="False"), TypeError, r"dense.*bias must be True or False"),
        (lambda: nf.conv2d(3, 3, bias="False"), TypeError, r"conv2d.*bias must be True or"),
        (lambda: nf.upsample(3, 3, bias=None), TypeError, r"upsample.*bias must be True or"),
        (
            lambda: nf.max_pool2d(2).apply({}, torch.rand(3, 4, 4)),
            ValueError,
            r"max_pool2d.*\(N, C, H, W\), got \(3, 4, 4\)",
        ),
        (
            lambda: nf.fanin_concat(5).apply({}, (torch.rand(2, 2), torch.rand(2, 2))),
            ValueError,
            r"fanin_concat\(axis=5\): inputs of one rank with an axis 5, got \[\(2, 2\), \(2, 2",
        ),
        (lambda: nf.fanin_sum().apply({}, ()), ValueError, r"fanin_sum: .* got 0 inputs"),
        (
            lambda: nf.relu().apply({"weight": torch.rand(1)}, torch.rand(2)),
            ValueError,
            r"relu: expected parameters \[\], got \['weight'\]",
        ),
        (
            lambda: nf.padded_to_multiple(nf.serial(nf.conv2d(3, 1), nf.batch_norm2d()), 4),
            TypeError,
            r"padded_to_multiple.*state",
        ),
    ],
)
def test_misuse_of_layers_and_combinators_is_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize(
    "x, error, pattern",
    [
        (torch.rand(1, 1, 30, 20), ValueError, r"^unet: .*\(N, 3, H, W\), got \(1, 1, 30, 20\)"),
        (torch.rand(1, 3, 30, 20).double(), TypeError, r"^unet: .*float64.*\(1, 3, 30, 20\)"),
    ],
)
def test_unet_input_errors_quote_the_input_not_its_padded_copy(x, error, pattern):
    net = nf.unet(depth=2, widths=(4, 4, 4, 4))
    _, params = net.init(None, (-1, 3, -1, -1))
    for run in (lambda: net.apply(params, x), lambda: net.vjp(params, x)):
        with pytest.raises(error, match=pattern):
            run()


def test_a_wrong_bias_beside_the_layers_own_weight_names_the_bias():
    layer = nf.conv2d(8, 3, padding=1)
    _, params = layer.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    params["bias"] = torch.zeros(4)
    with pytest.raises(ValueError, match=r"parameter 'bias' must have shape \(8,\), got \(4,\)"):
        layer.apply(params, torch.randn(2, 5, 8, 8))


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (
            nf.relu,
            r"argument 1 is not a Layer but the function relu; call it to make one: relu\(\)",
        ),
        (nf.conv2d, r"but the function conv2d; call it to make one: conv2d\(\.\.\.\)"),
        (3, r"argument 1 is not a Layer but int$"),
    ],
)
def test_a_layer_function_passed_uncalled_is_named_with_the_call(bad, pattern):
    with pytest.raises(TypeError, match=pattern):
        nf.serial(nf.conv2d(8, 3), bad)


def test_whole_float_scale_factors_are_taken_and_fractions_refused_by_name():
    """``torch.nn.Upsample(scale_factor=2.0)`` is a common spelling: the same here, as ints."""
    x = torch.rand(1, 3, 5, 4)
    up = nf.nearest_upsample((2.0, 3))
    assert up.init(None, x.shape)[0] == (1, 3, 10, 12)
    assert torch.equal(up.apply({}, x), nf.nearest_upsample((2, 3)).apply({}, x))
    assert NearestUpsampling(2.0)(x).shape == (1, 3, 10, 8)
    for bad in (1.5, (2, 0.5), float("inf")):
        with pytest.raises(ValueError, match=r"scale_factor must be whole numbers .* got"):
            nf.upsample(4, 3, bad)


CHANGED_IN_PLACE = [  # (layer, its name, input shape, what its pullback reads)
    (nf.conv2d(4, 3, padding=1), "conv2d(", (2, 3, 7, 6), ("weight", "input")),
    (nf.conv_transpose2d(4, 4, stride=2), "conv_transpose2d(", (2, 3, 5, 6), ("weight", "input")),
    (nf.upsample(4, 3, scale_factor=2, padding=1), "upsample(", (2, 3, 5, 4), ("weight", "input")),
    (nf.dense(5), "dense(", (3, 7), ("weight", "input")),
    (nf.relu(), "relu", (2, 3, 4, 4), ("output",)),
    (nf.sigmoid(), "sigmoid", (2, 3, 4, 4), ("output",)),
    (nf.gelu(), "gelu", (2, 3, 4, 4), ("input",)),
    (nf.silu(), "silu", (2, 3, 4, 4), ("input",)),
    (nf.max_pool2d(2), "max_pool2d(", (2, 3, 4, 6), ("input", "output")),
    (nf.avg_pool2d(2), "avg_pool2d(", (2, 3, 4, 6), ()),
]


@pytest.mark.parametrize("layer,name,shape,reads", CHANGED_IN_PLACE)
def test_a_tensor_changed_in_place_before_the_pullback_is_refused(layer, name, shape, reads):
    """A weight, input or output that the pullback reads, changed in place after vjp (an
    optimizer step before the backward pass): an error, as autograd's, not the gradient of
    other numbers; what it does not read may change."""
    _, params = layer.init(torch.Generator().manual_seed(0), shape)
    params = {k: v.double() for k, v in params.items()}
    for what in ("weight", "input", "output"):
        if what == "weight" and "weight" not in params:
            continue
        x = torch.randn(shape, dtype=torch.float64)
        y, pullback = layer.vjp(params, x)
        ct = torch.randn_like(y)
        expected = pullback(ct)
        {"weight": params.get("weight"), "input": x, "output": y}[what].mul_(2)
        if what in reads:
            with pytest.raises(RuntimeError, match=rf"^{re.escape(name)}.*: its {what} \(shape"):
                pullback(ct)
        else:
            assert torch.equal(pullback(ct)[1], expected[1])


def test_an_input_passed_as_a_view_is_watched_through_its_base():
    """A view passed inline is gone after the vjp; the pullback reads its memory through views
    of its own, so the base's counter (which every view shares) is the one watched."""
    conv, pool = nf.conv2d(3, 3, padding=1), nf.max_pool2d(2)
    _, params = conv.init(torch.Generator().manual_seed(0), (2, 16, 8, 8))
    images = torch.rand(2, 8, 8, 16)  # NHWC, passed as an NCHW view
    y, pullback = conv.vjp(params, images.permute(0, 3, 1, 2))
    images.mul_(2)
    with pytest.raises(RuntimeError, match=r"^conv2d\(.*its input \(shape \(2, 16, 8, 8\)\)"):
        pullback(torch.randn_like(y))
    big = torch.rand(2, 20, 8, 8)
    y, pullback = pool.vjp({}, big[:, 1:4])
    big.add_(1)
    with pytest.raises(RuntimeError, match=r"^max_pool2d\(.*its input \(shape \(2, 3, 8, 8\)\)"):
        pullback(torch.randn_like(y))


def test_dense_keeps_the_weight_its_forward_pass_used():
    layer = nf.dense(2)
    _, params = layer.init(torch.Generator().manual_seed(0), (4, 3))
    x, ct, weight = torch.randn(4, 3), torch.randn(4, 2), params["weight"]
    _, pullback = layer.vjp(params, x)
    params["weight"] = torch.randn(2, 3)  # rebound, not changed in place
    assert torch.allclose(pullback(ct)[1], ct @ weight)


def test_an_optimizer_step_before_the_backward_pass_is_refused():
    lin = nf.Linear(3, 2)
    opt = nf.SGD(lin.param(), lr=1.0)
    x, ct = torch.randn(4, 3), torch.randn(4, 2)
    lin.forward(x)
    opt.step()
    with pytest.raises(RuntimeError, match="weight .* changed in place after the forward pass"):
        lin.backward(ct)
    lin.forward(x)  # a forward pass again: fine
    assert lin.backward(ct).shape == x.shape


def test_an_optimizer_step_before_the_backward_pass_is_refused_in_a_sequential():
    """Refused at the first block whose weight the pullback watches, before any block's
    gradients change -- also where the blocks' gradients are one vector and the optimizer
    updates its state on vectors (every parameter's own version counter moves)."""
    net = nf.Sequential(nf.Conv2d(3, 4, 3, padding=1), nf.ReLU(), nf.Conv2d(4, 2, 3, padding=1))
    opt = nf.Adam(net.param(), lr=1e-3)
    x = torch.randn(2, 3, 5, 5)
    y = net.forward(x)
    opt.step()
    before = [g.clone() for _, g in net.param()]
    with pytest.raises(RuntimeError, match="weight .* changed in place after the forward pass"):
        net.backward(torch.randn_like(y))
    assert all(torch.equal(g, b) for (_, g), b in zip(net.param(), before))


def test_tensors_of_inference_mode_have_no_version_to_check():
    layer = nf.dense(2)
    _, params = layer.init(torch.Generator().manual_seed(0), (3, 4))
    with torch.inference_mode():
        x = torch.randn(3, 4)
    y, pullback = layer.vjp(params, x)
    assert pullback(torch.ones_like(y))[1].shape == x.shape


def test_a_step_called_in_the_other_form_says_which_form_the_network_takes():
    """A network without batch norm or dropout called with a state and an rng (as after taking
    the last one out), and a stateful one called without its state."""
    plain = nf.serial(nf.conv2d(4, 3, padding=1), nf.relu())
    _, params = plain.init(None, (2, 3, 8, 8))
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8)
    opt = nf.optim.adam(1e-3)
    step = nf.make_train_step(plain, nf.mse, opt)
    with pytest.raises(TypeError, match=r"train_step: this network has no state .* got 6 argu"):
        step(params, {}, opt.init(params), x, target, None)
    with pytest.raises(TypeError, match=r"value_and_grad: this network has no state .* got 5 a"):
        nf.value_and_grad(plain, nf.mse)(params, {}, x, target, None)
    with pytest.raises(TypeError, match=r"apply: this network has no state .* train=\.\.\."):
        plain.apply(params, {}, x, train=True)
    with pytest.raises(TypeError, match=r"vjp: this network has no state .*, rng=\.\.\."):
        plain.vjp(params, {}, x, train=True, rng=None)
    stateful = nf.serial(nf.conv2d(4, 3, padding=1), nf.batch_norm2d())
    _, params, _ = stateful.init(None, (2, 3, 8, 8))
    with pytest.raises(TypeError, match=r"value_and_grad: the network is stateful .* call f\("):
        nf.value_and_grad(stateful, nf.mse)(params, x, target)


def test_a_learning_rate_schedule_is_checked_at_every_step():
    params = {"w": torch.ones(3)}
    for make, name in ((nf.optim.adam, "adam"), (nf.optim.sgd, "sgd"), (nf.optim.rmsprop, "rm")):
        opt = make(lambda step: 0.1 if step < 1 else -0.1)  # gradient ascent from step 1
        state = opt.init(params)
        _, state = opt.update({"w": torch.ones(3)}, state, params)
        with pytest.raises(
            ValueError, match=rf"^{name}\w*: the learning-rate schedule gave -0.1 at"
        ):
            opt.update({"w": torch.ones(3)}, state, params)


def test_a_tuple_cotangent_of_the_wrong_length_is_named_as_output_gradients():
    net = nf.serial(nf.fanout(2), nf.parallel(nf.relu(), nf.relu()))
    _, params = net.init(None, (2, 3))
    _, pullback = net.vjp(params, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"^serial: expected a tuple of 2 output gradients, got 1"):
        pullback((torch.randn(2, 3),))


def test_empty_images_are_named_by_evaluate_predict_and_check_vjp():
    model = nf.Model({"widths": (4, 4)})
    for scale in (None, 1):
        with pytest.raises(ValueError, match=r"evaluate: the noisy images are empty: shape \(0, 3"):
            nf.evaluate(model, torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8), scale=scale)
    with pytest.raises(ValueError, match=r"test_input is empty: shape \(3, 0, 0\)"):
        model.predict(torch.rand(3, 0, 0))
    with pytest.raises(
        ValueError, match=r"check_vjp: the input has no elements \(shape \(0, 3\)\)"
    ):
        nf.check_vjp(nf.relu(), {}, torch.randn(0, 3, dtype=torch.float64))


def test_identity_checks_each_cotangent_of_a_tuple_of_streams():
    y, pullback = nf.identity().vjp({}, (torch.randn(2, 3), torch.randn(4)))
    with pytest.raises(ValueError, match=r"identity: output gradient must have the output's shape"):
        pullback((torch.ones(1, 3), torch.ones(4)))
    with pytest.raises(ValueError, match=r"identity: expected a tuple of 2 output gradients"):
        pullback((torch.ones(2, 3),))
    assert pullback((torch.ones(2, 3), torch.ones(4)))[1][1].shape == (4,)


@pytest.mark.parametrize(
    "layer",
    [nf.relu(), nf.sigmoid(), nf.identity(), nf.fanout(2), nf.serial(nf.relu(), nf.dense(3))],
)
def test_parameterless_layers_refuse_what_is_not_a_shape(layer):
    """A tensor passed as init's shape had gone through an activation and been blamed, with
    its values printed, on a later layer; an int or None failed inside Python."""
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"got a tensor of shape \(2, 5\) \(init takes the shape"):
        layer.init(None, x)
    for bad in (5, None, (2, 0.5)):
        with pytest.raises(ValueError, match="expected an input shape"):
            layer.init(None, bad)
    with pytest.raises(ValueError, match=r"dropout\(p=0.5\): expected an input shape"):
        nf.dropout().init(None, None)


def test_numpy_integers_are_torchs_ints_in_the_blocks_options():
    np = pytest.importorskip("numpy")
    assert nf.MaxPool2d(2, dilation=np.int64(1))(torch.randn(1, 1, 4, 4)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="MaxPool2d: dilation=.* is not supported"):
        nf.MaxPool2d(2, dilation=np.int64(2))
    assert nf.Conv2d(3, 6, np.int64(3)).kernel_size == (3, 3)


def test_check_vjp_refuses_arguments_that_would_check_nothing_or_blame_a_correct_layer():
    """directions=0 on a large input checked no gradient at all, so a layer with both
    gradients wrong passed; rtol=nan blamed a correct conv2d; eps=0 divided by zero."""

    def vjp(p, x):  # both gradients wrong
        return x * p["w"], lambda ct: ({"w": 3 * (ct * x).sum(0)}, 2 * ct * p["w"])

    bad = nf.Layer(lambda g, s: (s, {"w": torch.ones(s[1:])}), lambda p, x: x * p["w"], vjp)
    params, x = {"w": torch.randn(4, 5, 5)}, torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="check_vjp: directions must be a positive int, got 0"):
        nf.check_vjp(bad, params, x, directions=0)
    with pytest.raises(VJPCheckError):
        nf.check_vjp(bad, params, x)
    conv = nf.conv2d(3, 3)
    _, p = conv.init(torch.Generator().manual_seed(0), (2, 3, 5, 5))
    y = torch.randn(2, 3, 5, 5)
    for kw, message in (
        ({"eps": 0}, "eps must be a finite number > 0"),
        ({"rtol": math.nan}, "rtol must be a finite number > 0, got nan"),
        ({"rtol": 0.0}, "rtol must be a finite number > 0"),
        ({"atol": -1.0}, "atol must be a finite number >= 0"),
        ({"directions": 0}, "directions must be a positive int"),
        ({"full_jacobian_max": -1}, "full_jacobian_max must be >= 0"),
    ):
        with pytest.raises(ValueError, match=f"check_vjp: {message}"):
            nf.check_vjp(conv, p, y, **kw)
    with pytest.raises(TypeError, match="check_vjp: directions must be a positive int, got 2.5"):
        nf.check_vjp(conv, p, y, directions=2.5)
    with pytest.raises(
        TypeError, match="check_vjp: layer must be a Layer or StatefulLayer, got int"
    ):
        nf.check_vjp(3, p, y)
    # a 0-dim tensor or a NumPy float is a number; no bound on the full Jacobian is math.inf
    eps, rtol = torch.tensor(1e-6), np.float32(1e-6)
    nf.check_vjp(conv, p, y, eps=eps, rtol=rtol, full_jacobian_max=math.inf)


def test_gradients_and_updates_on_another_device_than_their_params_are_named():
    """The SGD block's step with gradients on another device was a silent no-op that still
    counted a step; adam and apply_updates failed deep inside torch."""
    w = torch.zeros(3)
    opt = nf.SGD([(w, torch.ones(3, device="meta"))], lr=0.1)
    with pytest.raises(
        ValueError, match="sgd: gradients: '0' is on meta, but the parameter is on cpu"
    ):
        opt.step()
    params = {"w": torch.zeros(3)}
    adam = nf.adam(0.1)
    with pytest.raises(ValueError, match="adam: gradients: 'w' is on meta"):
        adam.update({"w": torch.ones(3, device="meta")}, adam.init(params), params)
    with pytest.raises(ValueError, match="apply_updates: updates: 'w' is on meta"):
        nf.apply_updates(params, {"w": torch.ones(3, device="meta")})


def test_multi_transform_names_gradients_that_do_not_match_the_params():
    """A missing gradient was a bare KeyError; an extra one said its keys the wrong way round."""
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(3)}
    groups = nf.multi_transform({"a": nf.sgd(0.1), "b": nf.adam(0.1)}, {"w": "a", "b": "b"})
    state = groups.init(params)
    for grads in ({"w": torch.ones(3, 4)}, {**params, "x": torch.ones(1)}):
        with pytest.raises(
            ValueError, match="multi_transform: gradients and the parameters differ"
        ):
            groups.update(grads, state, params)


def test_batch_norm_refuses_a_batch_count_that_is_negative_or_not_int64():
    """-1 with momentum=None divided by zero; -3 weighed the batch negatively without a word;
    an int8 count would wrap at 127."""
    bn = nf.batch_norm2d(momentum=None)
    _, params, state = bn.init(None, (2, 3, 4, 4))
    x = torch.randn(2, 3, 4, 4)
    for count in (-1, -3):
        with pytest.raises(ValueError, match=f"'num_batches_tracked' is {count}: a count"):
            bn.apply(params, {**state, "num_batches_tracked": torch.tensor(count)}, x, train=True)
    for count in (torch.tensor(3, dtype=torch.int8), torch.tensor(True)):
        with pytest.raises(TypeError, match="'num_batches_tracked' must be an int64 number"):
            bn.apply(params, {**state, "num_batches_tracked": count}, x, train=True)


def test_psnr_evaluate_and_fanin_sum_name_inputs_of_the_wrong_kind():
    a = torch.rand(1, 3, 8, 8)
    with pytest.raises(TypeError, match="psnr: denoised must be a real-valued tensor, got ndarray"):
        nf.psnr(a.numpy(), a)
    with pytest.raises(TypeError, match="psnr: clean must be a real-valued tensor, got dtype"):
        nf.psnr(a, a.cfloat())
    with pytest.raises(ValueError, match="psnr: denoised is on meta, clean on cpu"):
        nf.psnr(a.to("meta"), a)
    with pytest.raises(TypeError, match="evaluate: model must have a predict method"):
        nf.evaluate(nf.relu(), a, a)
    with pytest.raises(ValueError, match=r"fanin_sum: the inputs are on devices \['cpu', 'meta'\]"):
        nf.fanin_sum().apply({}, (torch.ones(2, 3), torch.ones(2, 3, device="meta")))


def test_identity_sequential_indexing_and_padded_to_multiple_name_bad_arguments():
    with pytest.raises(ValueError, match="identity"):
        nf.identity().apply({"weight": torch.ones(3)}, torch.ones(2))
    two = (torch.ones(2, 3), torch.ones(2, 3))
    for layer, x in ((nf.fanout(2), two[0]), (nf.fanin_sum(), two), (nf.fanin_concat(), two)):
        with pytest.raises(ValueError, match="fan"):
            layer.apply({"weight": torch.ones(3)}, x)
    with pytest.raises(IndexError, match="Sequential: no block 10 among 1"):
        nf.Sequential(nf.ReLU())[10]
    assert isinstance(nf.Sequential(nf.ReLU())[torch.tensor(0)], nf.ReLU)  # as torch's
    with pytest.raises(TypeError, match=r"padded_to_multiple\(multiple=2\): layer must be a Layer"):
        nf.padded_to_multiple(3, 2)


def test_input_grad_and_release_must_be_flags():
    """input_grad="no" counted as True: the input gradient was computed and returned."""
    net = nf.serial(nf.conv2d(3, 3, padding=1), nf.relu())
    _, params = net.init(torch.Generator().manual_seed(0), (2, 3, 5, 5))
    y, pullback = net.vjp(params, torch.randn(2, 3, 5, 5))
    with pytest.raises(TypeError, match="pullback: input_grad must be True or False, got 'no'"):
        pullback(torch.randn_like(y), input_grad="no")
    block = nf.Sequential(nf.Conv2d(3, 3, 3), nf.ReLU())
    out = block.forward(torch.randn(2, 3, 5, 5))
    with pytest.raises(TypeError, match="backward: input_grad must be True or False, got 'no'"):
        block.backward(torch.randn_like(out), input_grad="no")


@pytest.mark.parametrize(
    "layer",
    [
        nf.conv2d(3, 3, padding=1),
        nf.conv_transpose2d(2, 4, stride=2),
        nf.upsample(2, 3, padding=1),
        nf.dense(4),
        nf.batch_norm2d(),
    ],
    ids=lambda layer: str(layer).split("(")[0][:20],
)
def test_a_bare_layers_pullback_refuses_a_flag_that_is_not_one(layer):
    """Called directly, not through a combinator, a layer's pullback read input_grad as
    truthy: "no" returned the input gradient, and 0.0 skipped it without a word."""
    stateful = isinstance(layer, nf.StatefulLayer)
    shape = (2, 4) if "dense" in repr(layer) else (2, 3, 5, 5)
    x = torch.randn(shape)
    if stateful:
        _, params, state = layer.init(torch.Generator().manual_seed(0), shape)
        y, _, pullback = layer.vjp(params, state, x, train=True)
    else:
        _, params = layer.init(torch.Generator().manual_seed(0), shape)
        y, pullback = layer.vjp(params, x)
    ct = torch.randn_like(y)
    for bad in ("no", 0.0, 1 + 0j, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="pullback: input_grad must be True or False"):
            pullback(ct, input_grad=bad)
    with pytest.raises(TypeError, match="pullback: input_grad must be True or False"):
        pullback(ct, "no")  # by position
    with pytest.raises(TypeError, match="pullback: release must be True or False, got 'no'"):
        pullback(ct, release="no")
    assert pullback(ct, input_grad=False)[1] is None
    assert pullback(ct, input_grad=1)[1] is not None  # as torch takes it


def test_flags_are_bools_or_zero_and_one():
    for ok, value in ((True, True), (False, 0), (True, np.True_), (False, torch.tensor(False))):
        assert nf.base.flag(value, "bias", "conv2d") is ok
    for bad in ("False", 1.0, 0.0, 1 + 0j, np.float64(1), torch.tensor(1.0), torch.ones(2), None):
        with pytest.raises(TypeError, match="conv2d: bias must be True or False"):
            nf.base.flag(bad, "bias", "conv2d")
