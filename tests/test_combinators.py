import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, randn, rel_err

import n2nfunc as nf


def required_net():
    return nf.serial(
        nf.conv2d(4, 3, 2, 1),
        nf.relu(),
        nf.conv2d(6, 3, 2, 1),
        nf.relu(),
        nf.upsample(4, 3, padding=1),
        nf.relu(),
        nf.upsample(3, 3, padding=1),
        nf.sigmoid(),
    )


def test_serial_paths_read_like_a_sequential_state_dict():
    out, params = required_net().init(torch.Generator().manual_seed(0), (-1, 3, 16, 12))
    assert out == (-1, 3, 16, 12)
    assert [p for p, _ in nf.tree.flatten(params)] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
        "6.weight",
        "6.bias",
    ]


def test_serial_matches_torch_and_finite_differences():
    net = required_net()
    _, params = net.init(torch.Generator().manual_seed(0), (2, 3, 8, 12))
    params = nf.tree.map(lambda t: t.double(), params)
    x = randn(2, 3, 8, 12)
    y, pullback = net.vjp(params, x)
    ct = torch.randn_like(y)
    flat = nf.tree.flatten(params)

    def ref(x_, *ws):
        q = dict(zip([p for p, _ in flat], ws))
        h = F.relu(F.conv2d(x_, q["0.weight"], q["0.bias"], 2, 1))
        h = F.relu(F.conv2d(h, q["2.weight"], q["2.bias"], 2, 1))
        h = F.relu(F.conv2d(F.interpolate(h, scale_factor=2), q["4.weight"], q["4.bias"], 1, 1))
        return torch.sigmoid(
            F.conv2d(F.interpolate(h, scale_factor=2), q["6.weight"], q["6.bias"], 1, 1)
        )

    y_ref, grads = autograd_vjp(ref, [x] + [t for _, t in flat], ct)
    assert rel_err(y, y_ref) < 1e-12
    ct_params, ct_x = pullback(ct)
    assert rel_err(ct_x, grads[0]) < 1e-10
    for (path, g_ours), g in zip(nf.tree.flatten(ct_params), grads[1:]):
        assert rel_err(g_ours, g) < 1e-10, path
    nf.check_vjp(net, params, randn(1, 3, 4, 4), directions=2)


def test_parallel_fanout_fanin_and_residual_build_a_skip_network():
    block = nf.serial(nf.conv2d(3, 3, padding=1), nf.relu(), nf.conv2d(3, 3, padding=1))
    net = nf.serial(
        nf.fanout(2),
        nf.parallel(nf.residual(block), nf.conv2d(3, 1)),
        nf.fanin_concat(),
        nf.conv2d(2, 1),
        nf.sigmoid(),
    )
    out, params = net.init(torch.Generator().manual_seed(0), (2, 3, 5, 4))
    assert out == (2, 2, 5, 4)
    assert "1.0.0.weight" in dict(nf.tree.flatten(params))
    x = randn(2, 3, 5, 4)
    assert net.apply(params, x.float()).shape == out
    nf.check_vjp(net, params, x, directions=2)


def test_fanin_sum_and_its_pullback():
    net = nf.serial(nf.fanout(3), nf.fanin_sum())
    _, params = net.init(None, (1, 2, 3, 3))
    x = randn(1, 2, 3, 3)
    y, pullback = net.vjp(params, x)
    assert torch.equal(y, 3 * x)
    ct = torch.randn_like(y)
    assert torch.allclose(pullback(ct)[1], 3 * ct)
    nf.check_vjp(
        nf.serial(nf.fanout(2), nf.parallel(nf.sigmoid(), nf.identity()), nf.fanin_sum()),
        {"0": {}, "1": {"0": {}, "1": {}}, "2": {}},
        x,
    )


def test_shape_errors_name_the_layer_path_and_shapes():
    net = nf.serial(nf.conv2d(4, 3), nf.serial(nf.relu(), nf.conv2d(2, 5)))
    with pytest.raises(ValueError, match=r"in layer 1\.1: conv2d.*\(1, 4, 3, 3\)"):
        net.init(None, (1, 3, 5, 5))
    _, params = net.init(None, (1, 3, 9, 9))
    with pytest.raises(ValueError, match=r"in layer 0: conv2d.*\(N, 3, H, W\).*\(1, 2, 9, 9\)"):
        net.apply(params, torch.randn(1, 2, 9, 9))
    with pytest.raises(ValueError, match="fanin_sum: inputs must have equal shapes"):
        nf.fanin_sum().init(None, ((1, 2, 3, 3), (1, 2, 3, 4)))
    with pytest.raises(ValueError, match="residual"):
        nf.residual(nf.conv2d(3, 3)).init(None, (1, 3, 5, 5))
    with pytest.raises(TypeError, match="serial: argument 1"):
        nf.serial(nf.relu(), "relu")


def _spy_conv(calls: list):
    """conv2d whose pullback records whether it was asked for the input gradient."""
    conv = nf.conv2d(2, 3, padding=1)

    def vjp(params, x):
        y, pb = conv.vjp(params, x)

        def pullback(ct, input_grad=True):
            calls.append(input_grad)
            return pb(ct, input_grad=input_grad)

        return y, pullback

    return nf.Layer(conv.init, conv.apply, nf.skips_input_grad(vjp))


def test_skipping_the_input_gradient_reaches_the_first_layers_with_parameters():
    """With input_grad=False, serial skips the pullbacks of leading layers without
    parameters (fanout here) and asks parallel's branches, and the first conv in each, for no
    input gradient; every parameter gradient is unchanged."""
    calls: list = []
    net = nf.serial(
        nf.relu(),
        nf.fanout(2),
        nf.parallel(nf.serial(_spy_conv(calls), nf.relu()), _spy_conv(calls)),
        nf.fanin_sum(),
        nf.conv2d(3, 3, padding=1),
    )
    _, params = net.init(torch.Generator().manual_seed(0), (2, 3, 5, 6))
    params = nf.tree.map(lambda t: t.double(), params)
    y, pullback = net.vjp(params, randn(2, 3, 5, 6))
    ct = torch.randn_like(y)
    full, dx = pullback(ct)
    assert dx is not None and calls == [True, True]
    calls.clear()
    skipped, none = nf.pull(net.vjp, pullback, ct, input_grad=False)
    assert none is None and calls == [False, False]
    flat = dict(nf.tree.flatten(full))
    assert flat.keys() == dict(nf.tree.flatten(skipped)).keys()
    assert all(torch.equal(t, flat[p]) for p, t in nf.tree.flatten(skipped))
    assert skipped["0"] == {} and skipped["1"] == {}


@pytest.mark.parametrize("axis", [-1, 3, -3, 1])
def test_fanin_concat_init_takes_negative_axes(axis):
    shapes = [[2, 3, 4, 5], [2, 3, 4, 5]]
    shapes[1][axis] = 6
    shapes.append(list(shapes[0]))
    shapes[2][axis] = 1
    layer = nf.fanin_concat(axis=axis)
    out, _ = layer.init(None, tuple(tuple(s) for s in shapes))
    xs = tuple(randn(*s, seed=i) for i, s in enumerate(shapes))
    y, pullback = layer.vjp({}, xs)
    assert out == tuple(y.shape)
    ct = randn(*y.shape, seed=9)
    y_ref, grads = autograd_vjp(lambda *t: torch.cat(t, axis), xs, ct)
    assert torch.equal(y, y_ref)
    assert all(torch.equal(d, g) for d, g in zip(pullback(ct)[1], grads, strict=True))
    nf.check_vjp(layer, {}, xs)
    with pytest.raises(ValueError, match=r"inputs of one rank with an axis 4"):
        nf.fanin_concat(axis=4).init(None, ((2, 3), (2, 3)))


def test_identity_passes_several_streams_through():
    net = nf.serial(nf.fanout(2), nf.identity(), nf.fanin_sum())
    _, params = net.init(torch.Generator(), (2, 3))
    x = torch.randn(2, 3)
    y, pullback = net.vjp(params, x)
    ct = torch.randn(2, 3)
    assert torch.equal(y, 2 * x) and torch.equal(pullback(ct)[1], 2 * ct)


def test_merge_and_branch_pullbacks_check_cotangents_and_keep_each_inputs_dtype():
    x = torch.randn(2, 3, 5, 6)
    _, pb = nf.fanout(2).vjp({}, x)
    with pytest.raises(
        ValueError, match=r"fanout \(output 0\): .* shape \(2, 3, 5, 6\), got \(1, 3, 5, 6\)"
    ):
        pb((torch.ones(1, 3, 5, 6), torch.ones(2, 3, 5, 6)))
    with pytest.raises(ValueError, match=r"fanout \(output 1\)"):
        pb((torch.ones(2, 3, 5, 6), None))
    assert pb((torch.ones(2, 3, 5, 6).double(), torch.ones(2, 3, 5, 6)))[1].dtype == torch.float32
    pair = (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4).double())
    for merge in (nf.fanin_sum(), nf.fanin_concat(axis=1)):
        y, pb = merge.vjp({}, pair)
        _, (g0, g1) = pb(torch.randn(y.shape, dtype=y.dtype))
        assert (g0.dtype, g1.dtype) == (torch.float32, torch.float64)
        with pytest.raises(TypeError, match="input 1 must be a Tensor, got int"):
            merge.apply({}, (pair[0], 2))
        ints = torch.ones(2, 3, dtype=torch.int64)  # an output no gradient can flow through
        with pytest.raises(
            TypeError, match=r"input 0 must be floating point, got dtype torch.int64"
        ):
            merge.apply({}, (ints, ints))
    with pytest.raises(TypeError, match=r"fanin_concat\(axis='1'\): axis must be an int"):
        nf.fanin_concat("1")
    with pytest.raises(TypeError, match="fanout: n must be a positive int, got True"):
        nf.fanout(True)


def test_residual_around_a_layer_that_returns_a_tuple_is_named():
    with pytest.raises(
        TypeError,
        match=r"in layer 0: residual: .* map a tensor to a tensor, not Tensor to tuple",
    ):
        nf.serial(nf.residual(nf.fanout(2))).apply({"0": {}}, torch.randn(1, 2, 3, 3))


def test_merges_init_with_unknown_sizes_beside_known_ones():
    assert nf.fanin_sum().init(None, ((-1, 3, 8, 8), (4, 3, 8, -1)))[0] == (4, 3, 8, 8)
    assert nf.fanin_concat().init(None, ((-1, 3, 8, 8), (4, 5, 8, -1)))[0] == (4, 8, 8, 8)
    assert nf.fanin_concat(-1).init(None, ((2, 3, 8, 8), (2, 3, 8, 4)))[0] == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="agree except along axis 1"):
        nf.fanin_concat().init(None, ((2, 3, 8, 8), (3, 5, 8, 8)))
    with pytest.raises(ValueError, match="equal shapes"):
        nf.fanin_sum().init(None, ((2, 3, 8, 8), (2, 3, 8, 9)))


def test_fanout_of_several_streams_sums_their_cotangents_stream_by_stream():
    """fanout(2) of a pair (a, b) gives ((a, b), (a, b)); its pullback adds the two pairs'
    cotangents part by part (it joined the tuples, four parts instead of two)."""
    conv = nf.serial(nf.conv2d(2, 3, padding=1), nf.relu())
    branch = nf.serial(nf.parallel(conv, nf.conv2d(2, 1)), nf.fanin_concat())
    net = nf.serial(nf.fanout(2), nf.parallel(branch, nf.fanin_sum()), nf.fanin_concat())
    a, b = randn(2, 3, 5, 4), randn(2, 3, 5, 4)
    _, params = net.init(torch.Generator().manual_seed(0), ((2, 3, 5, 4), (2, 3, 5, 4)))
    params = nf.tree.map(lambda t: t.double(), params)
    y, pullback = net.vjp(params, (a, b))
    ct = randn(*y.shape)
    grads, (da, db) = pullback(ct)

    def f(a, b, w0, b0, w1, b1):
        left = torch.cat([F.conv2d(a, w0, b0, padding=1).relu(), F.conv2d(b, w1, b1)], 1)
        return torch.cat([left, a + b], 1)

    p = params["1"]["0"]["0"]
    leaves = [a, b, p["0"]["0"]["weight"], p["0"]["0"]["bias"], p["1"]["weight"], p["1"]["bias"]]
    y_torch, expected = autograd_vjp(f, leaves, ct)
    _, from_list = net.vjp(params, [a, b])  # a list of streams is one too
    assert all(torch.equal(u, v) for u, v in zip(from_list(ct)[1], (da, db)))
    assert rel_err(y, y_torch) < 1e-12
    assert rel_err(da, expected[0]) < 1e-10 and rel_err(db, expected[1]) < 1e-10
    assert rel_err(grads["1"]["0"]["0"]["1"]["weight"], expected[4]) < 1e-10


def test_a_bad_cotangent_releases_nothing_so_backward_can_be_called_again():
    layer = nf.serial(nf.conv2d(4, 3, padding=1), nf.relu(), nf.conv2d(2, 3, padding=1))
    for block in (nf.Module.from_layer(layer, (-1, 3, 8, 8)),):
        block.forward(randn(2, 3, 8, 8).float())
        with pytest.raises(ValueError, match=r"serial: .*shape \(2, 2, 8, 8\), got \(2, 3, 8, 8\)"):
            block.backward(randn(2, 3, 8, 8).float())
        assert block.backward(randn(2, 2, 8, 8).float()).shape == (2, 3, 8, 8)
    pair = nf.parallel(nf.conv2d(2, 1), nf.conv2d(2, 1))
    _, params = pair.init(None, ((1, 3, 4, 4), (1, 3, 4, 4)))
    params = nf.tree.map(lambda t: t.double(), params)
    (y0, y1), pullback = pair.vjp(params, (randn(1, 3, 4, 4), randn(1, 3, 4, 4)))
    with pytest.raises(ValueError, match="parallel"):
        pullback((randn(*y0.shape), randn(1, 5, 4, 4)), release=True)
    assert pullback((randn(*y0.shape), randn(*y1.shape)), release=True)[1][1].shape == (1, 3, 4, 4)


def test_an_error_inside_a_layer_keeps_its_traceback():
    def broken(params, x):
        return x + "oops"  # the user's bug, in this file

    layer = nf.Layer(lambda g, s: (s, {}), broken, lambda p, x: (broken(p, x), None))
    net = nf.serial(nf.relu(), layer)
    with pytest.raises(TypeError, match="in layer 1") as info:
        net.apply({"0": {}, "1": {}}, randn(1, 2))
    assert any(entry.name == "broken" for entry in info.traceback)


def _shrinking_input_grad_layer() -> nf.Layer:
    """A layer of one's own whose pullback sums its input gradient over the batch (a bug)."""

    def vjp(params, x):
        return x * 2, lambda ct: ({}, (ct * 2).sum(0, keepdim=True))

    return nf.Layer(lambda g, shape: (shape, {}), lambda p, x: x * 2, vjp)


@pytest.mark.parametrize("where", [0, 1])
def test_serial_names_the_child_whose_input_gradient_has_another_shape(where):
    """A child that returned an input gradient of another shape was blamed on the layer
    before it (its cotangent check), or passed unnoticed when it came first."""
    layers = [nf.conv2d(3, 3, padding=1), nf.relu()]
    layers.insert(where, _shrinking_input_grad_layer())
    net = nf.serial(*layers)
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 5, 5))
    x = torch.randn(4, 3, 5, 5)
    y, pullback = net.vjp(params, x)
    with pytest.raises(
        ValueError,
        match=rf"^in layer {where}: its pullback returned an input "
        r"gradient of shape \(1, 3, 5, 5\) for an input of shape \(4, 3, 5, 5\)",
    ):
        pullback(torch.randn_like(y))


def test_params_of_a_bigger_network_are_refused():
    """serial and parallel took a params tree with entries for children they lack, and their
    gradient tree then lacked them, an error far away in the optimizer."""
    g = torch.Generator().manual_seed(0)
    big = nf.serial(nf.dense(4), nf.relu(), nf.dense(3))
    _, params = big.init(g, (2, 5))
    small = nf.serial(nf.dense(4), nf.relu())
    for call in (small.apply, small.vjp):
        with pytest.raises(ValueError, match=r"serial: the params tree has entries \['2'\] for"):
            call(params, torch.rand(2, 5))
    pair = nf.parallel(nf.dense(4), nf.dense(4))
    _, pair_params = pair.init(g, ((2, 5), (2, 5)))
    with pytest.raises(ValueError, match=r"parallel: the params tree has entries \['2'\]"):
        pair.apply({**pair_params, "2": {}}, (torch.rand(2, 5), torch.rand(2, 5)))


def test_a_single_shape_where_init_takes_one_per_input_is_named():
    g = torch.Generator().manual_seed(0)
    for layer, name in (
        (nf.parallel(nf.relu(), nf.relu()), "parallel"),
        (nf.fanin_sum(), "fanin_sum"),
        (nf.fanin_concat(), r"fanin_concat\(axis=1\)"),
    ):
        with pytest.raises(ValueError, match=rf"{name}: expected a tuple of input shapes, one "):
            layer.init(g, (-1, 3, 4, 4))  # had been "'int' object is not iterable"
    nested = nf.parallel(nf.relu(), nf.fanin_sum())  # a tuple input's shape is a tuple of shapes
    assert nested.init(g, ((1, 2), ((1, 2), (-1, 2))))[0] == ((1, 2), (1, 2))


def test_runtime_errors_inside_a_network_name_the_layers_path():
    """A torch RuntimeError in a layer of one's own (a matmul of the wrong shapes) came out
    without the path; an error of one's own class carries the whole path in one note."""

    def failing(error):
        def apply(params, x):
            raise error

        return nf.Layer(lambda g, shape: (shape, {}), apply, lambda p, x: (apply(p, x), None))

    class Mine(RuntimeError):
        pass

    net = nf.serial(nf.relu(), nf.serial(nf.relu(), failing(RuntimeError("mat1 and mat2"))))
    with pytest.raises(RuntimeError, match=r"^in layer 1\.1: mat1 and mat2$"):
        net.apply({"0": {}, "1": {"0": {}, "1": {}}}, torch.ones(2))
    cause = OSError("no table")
    chained = RuntimeError("could not read the table")
    chained.__cause__ = cause
    chained.add_note("a note of its own")
    net = nf.serial(nf.relu(), failing(chained))
    with pytest.raises(RuntimeError, match="in layer 1: could not read the table") as info:
        net.apply({"0": {}, "1": {}}, torch.ones(2))
    assert info.value.__cause__ is cause and info.value.__notes__ == ["a note of its own"]
    net = nf.serial(nf.relu(), nf.serial(nf.relu(), failing(Mine("mine"))))
    with pytest.raises(Mine) as info:
        net.apply({"0": {}, "1": {"0": {}, "1": {}}}, torch.ones(2))
    assert info.value.__notes__ == ["in layer 1.1"]


def test_misused_layers_and_blocks_get_errors_that_say_what_to_do():
    """A block where a layer goes, a class where a block goes, a layer called as a function,
    None for an unknown size: each error names the fix."""
    with pytest.raises(TypeError, match=r"argument 0 is not a Layer but a SiLU block.*\.layer"):
        nf.serial(nf.SiLU())
    with pytest.raises(TypeError, match=r"block 0 is the class SiLU, not a Module: .*SiLU\(\)"):
        nf.Sequential(nf.SiLU)
    with pytest.raises(TypeError, match=r"make one, Conv2d\(\.\.\.\)"):
        nf.Sequential(nf.Conv2d)
    with pytest.raises(TypeError, match=r"block 0 is a torch\.nn\..*Conv2d, not an n2nfunc Mod"):
        nf.Sequential(torch.nn.Conv2d(3, 4, 3))
    layer = nf.conv2d(4, 3)
    for optimizer, said in ((torch.optim.SGD, "torch.optim"), (nf.SGD, "n2nfunc.SGD .a class wr")):
        with pytest.raises(TypeError, match=rf"optimizer must be .*got the class {said}"):
            nf.make_train_step(layer, nf.mse, optimizer)
    with pytest.raises(TypeError, match=r"loss must be a Loss.*got the class n2nfunc.MSE"):
        nf.make_train_step(layer, nf.MSE, nf.sgd(0.1))
    with pytest.raises(TypeError, match=r"a Layer is not called: .*layer\.apply\(params, x\)"):
        nf.silu()(torch.ones(1))
    with pytest.raises(TypeError, match=r"a StatefulLayer is not called: .*layer\.apply\("):
        nf.dropout(0.5)(torch.ones(1))
    with pytest.raises(ValueError, match=r"got \(None, 4, 6, 6\) \(-1, not None, stands for"):
        nf.conv2d(4, 3).init(torch.Generator(), (None, 4, 6, 6))


def test_fanin_concat_refuses_inputs_of_other_ranks_when_run_as_at_init():
    """torch.cat skips an empty 1-d input: the concatenation ran, and the empty input's
    gradient came back (0, 3) for its (0,) (along axis 1: a bare IndexError)."""
    xs = (randn(2, 3), torch.empty(0, dtype=torch.float64))
    for axis in (0, 1):
        with pytest.raises(ValueError, match=rf"inputs of one rank with an axis {axis}, got"):
            nf.fanin_concat(axis).vjp({}, xs)
    with pytest.raises(ValueError, match=r"inputs of one rank with an axis 2, got"):
        nf.fanin_concat(2).apply({}, (randn(2, 3), randn(2, 3)))


def test_fanout_refuses_streams_it_cannot_sum():
    """A dict of streams passed init and vjp; its pullback then failed adding two dicts."""
    with pytest.raises(ValueError, match=r"fanout: expected an input shape .* got \{'a'"):
        nf.fanout(2).init(None, {"a": (2, 3)})
    with pytest.raises(TypeError, match=r"fanout: expected a tensor or a tuple of them .* dict"):
        nf.fanout(2).vjp({}, {"a": randn(2, 3)})
    with pytest.raises(TypeError, match=r"fanout: expected a tensor or a tuple of them .* tuple"):
        nf.fanout(2).vjp({}, (randn(2, 3), "b"))
