"""check_vjp must catch real bugs and name where they are."""

import pytest
import torch

import n2nfunc as nf
from n2nfunc.testing import VJPCheckError


def _with_pullback(layer, fix):
    def vjp(params, x):
        y, pullback = layer.vjp(params, x)
        return y, lambda ct: fix(*pullback(ct))

    return nf.Layer(layer.init, layer.apply, vjp)


def test_flipped_kernel_gradient_is_caught_and_named():
    conv = nf.conv2d(2, 3, padding=1)
    buggy = _with_pullback(conv, lambda g, dx: ({**g, "weight": g["weight"].flip(2, 3)}, dx))
    _, params = conv.init(None, (1, 2, 5, 5))
    with pytest.raises(VJPCheckError, match="parameter 'weight'"):
        nf.check_vjp(buggy, params, torch.randn(1, 2, 5, 5))


def test_wrong_input_gradient_and_nonlinear_pullback_are_caught():
    sig = nf.sigmoid()
    with pytest.raises(VJPCheckError, match="wrt input"):
        nf.check_vjp(
            _with_pullback(sig, lambda g, dx: (g, dx * 1.001)), {}, torch.randn(1, 1, 3, 3)
        )
    with pytest.raises(VJPCheckError):
        nf.check_vjp(_with_pullback(sig, lambda g, dx: (g, dx + 1e-3)), {}, torch.randn(1, 1, 3, 3))


def test_bias_gradient_error_names_the_bias():
    conv = nf.conv2d(2, 1)
    _, params = conv.init(None, (1, 2, 4, 4))
    buggy = _with_pullback(conv, lambda g, dx: ({**g, "bias": g["bias"] * 0.5}, dx))
    with pytest.raises(VJPCheckError, match="parameter 'bias'.*relative error"):
        nf.check_vjp(buggy, params, torch.randn(1, 2, 4, 4))


def _conv_case():
    conv = nf.conv2d(3, 3, padding=1)
    _, params = conv.init(torch.Generator().manual_seed(0), (2, 4, 6, 6))
    return conv, params, torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "fix,pattern",
    [
        (lambda g, dx: ({**g, "bias": g["bias"][None]}, dx), r"'bias' has shape \(1, 3\)"),
        (lambda g, dx: (g, dx[None]), r"input gradient: has shape \(1, 2, 4, 6, 6\)"),
        (lambda g, dx: (g, dx.float()), r"input gradient: has shape .* dtype torch.float32"),
        (lambda g, dx: ({"weight": g["weight"]}, dx), r"differ in structure, keys differ"),
    ],
)
def test_gradients_of_the_wrong_form_are_caught(fix, pattern):
    conv, params, x = _conv_case()
    with pytest.raises(VJPCheckError, match=pattern):
        nf.check_vjp(_with_pullback(conv, fix), params, x)


def test_a_vjp_output_unlike_apply_and_an_input_grad_false_path_are_checked():
    conv, params, x = _conv_case()

    def vjp_without_bias(p, z):
        return conv.vjp({**p, "bias": p["bias"] * 0}, z)[0], conv.vjp(p, z)[1]

    with pytest.raises(VJPCheckError, match="vjp's output differs from apply's"):
        nf.check_vjp(nf.Layer(conv.init, conv.apply, vjp_without_bias), params, x)

    def vjp_doubling_without_input_grad(p, z):
        y, pullback = conv.vjp(p, z)

        def pb(ct, input_grad=True):
            g, dx = pullback(ct)
            return (g if input_grad else nf.tree.scale(2.0, g)), (dx if input_grad else None)

        return y, pb

    vjp_doubling_without_input_grad.skips_input_grad = True
    layer = nf.Layer(conv.init, conv.apply, vjp_doubling_without_input_grad)
    with pytest.raises(VJPCheckError, match="'weight' differs when the input gradient is not"):
        nf.check_vjp(layer, params, x)


def _relu_that_masks_in_place():
    """A ReLU whose pullback multiplies its cotangent in place (torch's ``ct.mul_`` habit)."""

    def vjp(params, x):
        mask = x > 0
        return x.clamp(min=0), lambda ct: ({}, ct.mul_(mask))

    return nf.Layer(lambda g, s: (s, {}), lambda p, x: x.clamp(min=0), vjp)


def test_a_pullback_changing_its_cotangent_in_place_is_caught():
    """Inside ``residual`` the in-place product corrupts the skip path's gradient, while
    finite differences against the changed cotangent agree with it: only the in-place check
    sees it (it passed with a relative error of 3e-9)."""
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    net = nf.residual(_relu_that_masks_in_place())
    y, pullback = net.vjp({}, x)
    ct = torch.randn(y.shape, dtype=torch.float64)
    _, dx = pullback(ct.clone())
    assert (dx - (ct + ct * (x > 0))).abs().max() > 0.1  # the gradient is wrong
    for layer in (net, _relu_that_masks_in_place()):
        with pytest.raises(VJPCheckError, match="the pullback changed the cotangent in place"):
            nf.check_vjp(layer, {}, x)
    nf.check_vjp(nf.residual(nf.relu()), {}, x)  # the library's own leave it alone


def test_a_layer_changing_its_input_or_params_in_place_is_caught():
    def scale_in_place():
        def vjp(params, x):
            y = x * params["w"]
            params["w"].add_(1.0)  # e.g. an update folded into the forward pass
            return y, lambda ct: ({"w": (ct * x).sum().reshape(1)}, ct * (params["w"] - 1))

        return nf.Layer(lambda g, s: (s, {"w": torch.ones(1)}), lambda p, x: x * p["w"], vjp)

    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(VJPCheckError, match=r"vjp or its pullback changed the params w in place"):
        nf.check_vjp(scale_in_place(), {"w": torch.full((1,), 2.0)}, x)


def test_integer_params_are_named():
    def indexed():
        def vjp(params, x):
            return x * params["w"], lambda ct: ({**params, "w": (ct * x).sum().reshape(1)}, ct)

        return nf.Layer(lambda g, s: (s, {}), lambda p, x: x * p["w"], vjp)

    params = {"w": torch.ones(1), "idx": torch.arange(3)}
    with pytest.raises(ValueError, match=r"parameter 'idx' is torch.int64, not a floating-point"):
        nf.check_vjp(indexed(), params, torch.randn(2, 3))


def test_a_pullback_that_accumulates_into_a_kept_buffer_is_caught_on_its_second_call():
    """Right on its first call: the second call with the same cotangent tells it."""
    sig = nf.sigmoid()

    def vjp(params, x):
        y, pullback = sig.vjp(params, x)
        kept = torch.zeros_like(x)

        def accumulating(ct):
            g, dx = pullback(ct)
            return g, kept.add_(dx).clone()

        return y, accumulating

    with pytest.raises(VJPCheckError, match=r"second call of the pullback .* gradient 'input'"):
        nf.check_vjp(nf.Layer(sig.init, sig.apply, vjp), {}, torch.randn(2, 1, 3, 3))


def _elementwise(forward, derivative):
    """A parameterless layer y = forward(x) with dx = ct * derivative(x)."""

    def vjp(params, x):
        return forward(x), lambda ct: ({}, ct * derivative(x))

    return nf.Layer(lambda g, s: (s, {}), lambda p, x: forward(x), vjp)


def test_a_pullback_that_forgets_what_it_kept_after_one_call_is_caught():
    """Right on its first call and zero after: all its later calls agree with each other
    (zero is linear), so only a repeated call shows it."""

    def vjp(params, x):
        y = x.sigmoid()
        saved = [y * (1 - y)]

        def pullback(ct):
            dx = ct * saved[0]
            saved[0] = saved[0] * 0
            return {}, dx

        return y, pullback

    with pytest.raises(VJPCheckError, match="second call of the pullback"):
        nf.check_vjp(
            nf.Layer(lambda g, s: (s, {}), lambda p, x: x.sigmoid(), vjp), {}, torch.randn(2, 3)
        )


@pytest.mark.parametrize("size", [5, 500])  # by coordinates and by directions alone
def test_non_finite_gradients_are_refused_with_their_place(size):
    x = torch.rand(size) + 0.5  # (the derivative of sqrt is finite here, the buggy one not)

    def derivative_with_a_nan(t):
        d = 0.5 / t.sqrt()
        d[3] = float("nan")  # as 0 / 0 at one point
        return d

    with pytest.raises(
        VJPCheckError, match=r"gradient wrt input is not finite \(nan at \(3,\), 1 of"
    ):
        nf.check_vjp(_elementwise(lambda t: t.sqrt(), derivative_with_a_nan), {}, x)
    inf = _elementwise(lambda t: t.sqrt(), lambda t: 0.5 / (t.sqrt() - t.sqrt()))
    with pytest.raises(VJPCheckError, match=r"gradient wrt input is not finite \(-?inf"):
        nf.check_vjp(inf, {}, x)
    conv = nf.conv2d(2, 3)
    _, params = conv.init(torch.Generator().manual_seed(0), (2, 2, 4, 4))
    nan_weight = _with_pullback(conv, lambda g, dx: ({**g, "weight": g["weight"] / 0 * 0}, dx))
    with pytest.raises(VJPCheckError, match=r"gradient wrt parameter 'weight' is not finite"):
        nf.check_vjp(nan_weight, params, torch.randn(2, 2, 4, 4))


def test_a_point_where_the_output_is_not_finite_is_refused():
    """One -inf (log at 0) made every error floor infinite, and every check pass."""
    wrong_log = _elementwise(lambda t: t.log(), lambda t: -7 / t)
    x = torch.rand(2, 3) + 0.5
    with pytest.raises(VJPCheckError, match="wrt input is wrong"):
        nf.check_vjp(wrong_log, {}, x)
    x[1, 2] = 0
    with pytest.raises(
        VJPCheckError, match=r"output is not finite at this point.*\(-inf at \(1, 2\)"
    ):
        nf.check_vjp(wrong_log, {}, x)
    x[1, 2] = -1
    with pytest.raises(VJPCheckError, match=r"output is not finite .*\(nan at \(1, 2\)"):
        nf.check_vjp(_elementwise(lambda t: t.log(), lambda t: 1 / t), {}, x)


def test_a_vjp_output_with_a_nan_where_apply_has_none_is_caught():
    def vjp(params, x):
        y = x.sigmoid()
        y[0, 0] = float("nan")
        return y, lambda ct: ({}, ct * y * (1 - y))

    with pytest.raises(VJPCheckError, match="output is not finite"):
        nf.check_vjp(
            nf.Layer(lambda g, s: (s, {}), lambda p, x: x.sigmoid(), vjp), {}, torch.randn(2, 3)
        )


def test_a_layer_computing_in_float32_is_named_not_called_wrong():
    f32 = _elementwise(
        lambda t: t.float().sigmoid().double(), lambda t: t.sigmoid() * (1 - t.sigmoid())
    )
    with pytest.raises(VJPCheckError, match="wrt input is wrong"):
        nf.check_vjp(f32, {}, torch.randn(2, 3))  # (its output is float64: only the numbers show)
    only32 = _elementwise(lambda t: t.float().sigmoid(), lambda t: t.sigmoid() * (1 - t.sigmoid()))
    with pytest.raises(VJPCheckError, match=r"output is torch.float32 for float64 input"):
        nf.check_vjp(only32, {}, torch.randn(2, 3))


def test_apply_changing_its_input_and_a_pullback_changing_the_output_are_named():
    def apply(p, x):
        return x.mul_(2)

    doubling = nf.Layer(lambda g, s: (s, {}), apply, lambda p, x: (x * 2, lambda ct: ({}, ct * 2)))
    with pytest.raises(VJPCheckError, match=r"apply changed the input in place"):
        nf.check_vjp(doubling, {}, torch.randn(2, 3))

    def vjp(params, x):
        y = x.sigmoid()
        return y, lambda ct: ({}, ct * y.mul_(1 - y))  # overwrites the y it returned

    overwriting = nf.Layer(lambda g, s: (s, {}), lambda p, x: x.sigmoid(), vjp)
    with pytest.raises(VJPCheckError, match=r"the pullback changed the output in place"):
        nf.check_vjp(overwriting, {}, torch.randn(2, 3))


def test_a_wrong_coordinate_of_a_small_weight_is_located():
    conv = nf.conv2d(3, 3)
    _, params = conv.init(torch.Generator().manual_seed(0), (2, 2, 5, 4))

    def one_tap_off(g, dx):
        w = g["weight"].clone()
        w[1, 0, 2, 1] += 0.5
        return {**g, "weight": w}, dx

    with pytest.raises(
        VJPCheckError,
        match=r"'weight' is wrong \(at \(1, 0, 2, 1\): the pullback "
        r"gives [-\d.e]+, finite differences [-\d.e]+\)",
    ):
        nf.check_vjp(_with_pullback(conv, one_tap_off), params, torch.randn(2, 2, 5, 4))


def test_train_false_checks_the_evaluation_mode_pullback():
    """A stateful layer whose evaluation pullback alone is wrong: caught with train=False,
    not in training mode."""
    bn = nf.batch_norm2d()

    def vjp(params, state, x, *, train, rng=None):
        y, new_state, pullback = bn.vjp(params, state, x, train=train, rng=rng)
        if train:
            return y, new_state, pullback
        return y, new_state, lambda ct: (lambda g, dx: (g, dx * 1.01))(*pullback(ct))

    buggy = nf.StatefulLayer(bn.init, bn.apply, vjp)
    _, params, state = buggy.init(None, (-1, 3, -1, -1))
    x = torch.randn(4, 3, 3, 2, dtype=torch.float64)
    nf.check_vjp(buggy, params, x, state=state)
    with pytest.raises(VJPCheckError, match="wrt input"):
        nf.check_vjp(buggy, params, x, state=state, train=False)


def test_a_pullback_that_returns_only_the_input_gradient_is_named():
    """Its tensor was unpacked along the batch axis and reported as trees that 'differ in
    structure'."""
    relu = nf.relu()

    def vjp(params, x):
        y, pullback = relu.vjp(params, x)
        return y, lambda ct: pullback(ct)[1]  # (forgot the params' gradients)

    with pytest.raises(VJPCheckError, match=r"must return \(param_grads, input_grad\)"):
        nf.check_vjp(nf.Layer(relu.init, relu.apply, vjp), {}, torch.randn(2, 3))
