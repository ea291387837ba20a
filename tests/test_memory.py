"""A pullback keeps what its gradient needs and nothing more: in particular not the layer's
output, which would otherwise stay alive from the forward pass until the backward pass (one
extra activation per layer in a network's peak memory)."""

import gc
import weakref

import pytest
import torch

import n2nfunc as nf

IMAGE = (2, 4, 6, 6)

LAYERS = [  # name, layer, input shape (the pullback of each may keep its input, never y)
    ("conv2d", nf.conv2d(5, 3, padding=1), IMAGE),
    ("conv2d stride 2", nf.conv2d(5, 4, stride=2, padding=1), (2, 16, 8, 8)),
    ("conv2d im2col", nf.conv2d(5, 3, stride=2), IMAGE),
    ("conv_transpose2d", nf.conv_transpose2d(5, 4, 2, 1), IMAGE),
    ("upsample", nf.upsample(5, 3, 2, 1), IMAGE),
    ("nearest_upsample", nf.nearest_upsample(2), IMAGE),
    ("max_pool2d", nf.max_pool2d(2), IMAGE),
    ("avg_pool2d", nf.avg_pool2d(3, 1, 1), IMAGE),
    ("global_avg_pool", nf.global_avg_pool(), IMAGE),
    ("dense", nf.dense(3), (2, 7)),
    ("fanin_sum", nf.serial(nf.fanout(2), nf.fanin_sum()), IMAGE),
    ("fanin_concat", nf.serial(nf.fanout(2), nf.fanin_concat(1)), IMAGE),
    ("padded_to_multiple", nf.padded_to_multiple(nf.conv2d(4, 3, padding=1), 4), IMAGE),
    ("serial", nf.serial(nf.conv2d(4, 4, 2, 1), nf.relu(), nf.conv_transpose2d(3, 4, 2, 1)), IMAGE),
    ("mixed_precision", nf.mixed_precision(nf.conv2d(5, 3, padding=1)), IMAGE),
    ("residual", nf.residual(nf.serial(nf.conv2d(4, 3, padding=1), nf.relu())), IMAGE),
]


def _output_freed(vjp) -> bool:
    """Whether the output of ``vjp()`` is freed once the caller drops it, the pullback kept."""
    y, pullback = vjp()
    ref = weakref.ref(y)
    del y
    gc.collect()
    return ref() is None and pullback is not None


@pytest.mark.parametrize("name, layer, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_pullback_does_not_keep_the_output(name, layer, shape):
    _, params = layer.init(torch.Generator().manual_seed(0), shape)
    x = torch.randn(shape)
    assert _output_freed(lambda: layer.vjp(params, x)), f"{name}: the pullback holds y"


@pytest.mark.parametrize(
    "name, layer",
    [("batch_norm2d", nf.batch_norm2d()), ("dropout", nf.dropout(0.5))],
)
@pytest.mark.parametrize("train", [True, False])
def test_stateful_pullback_does_not_keep_the_output(name, layer, train):
    _, params, state = layer.init(torch.Generator().manual_seed(0), IMAGE)
    x, rng = torch.randn(IMAGE), torch.Generator().manual_seed(1)

    def vjp():
        y, _, pullback = layer.vjp(params, state, x, train=train, rng=rng)
        return (y, pullback) if y is not x else (x.clone(), pullback)

    assert _output_freed(vjp), f"{name}: the pullback holds y"


def test_the_check_can_fail():
    """A pullback closing over y is caught (the test above is not vacuous)."""

    def vjp():
        y = torch.randn(3)
        return y, lambda ct: (y, ct)

    assert not _output_freed(vjp)


# ------------------------------------------------------------------ release=True


def _probe_pair():
    """Two layers for ``serial(first, ..., last)``: ``last`` saves a tensor for its backward
    pass; ``first``'s pullback records whether that tensor is still alive when it runs."""
    box = {}

    def last_vjp(params, x):
        saved = x * 2.0
        box["saved"] = weakref.ref(saved)
        return x * 2.0, lambda ct: ({}, ct * saved / x)

    def first_vjp(params, x):
        def pullback(ct):  # no gc.collect(): freed by reference counts, at once
            box["alive"] = box["saved"]() is not None
            return {}, ct

        return x + 0.0, pullback

    def init(generator, in_shape):
        return in_shape, {}

    first = nf.Layer(init, lambda p, x: first_vjp(p, x)[0], first_vjp)
    last = nf.Layer(init, lambda p, x: last_vjp(p, x)[0], last_vjp)
    return first, last, box


def _wrappings(first, last):
    """The chain ``serial(first, conv, last)`` inside each combinator and wrapper, which must
    pass ``release`` on for ``last``'s tensor to be freed before ``first`` runs."""
    conv = nf.conv2d(4, 3, padding=1)
    chain = nf.serial(first, conv, last)
    return {
        "serial": chain,
        "nested serial": nf.serial(nf.serial(chain)),
        "parallel": nf.serial(nf.fanout(2), nf.parallel(chain, conv), nf.fanin_sum()),
        "parallel branches": nf.serial(nf.fanout(2), nf.parallel(last, first), nf.fanin_sum()),
        "residual": nf.residual(chain),
        "mixed_precision": nf.mixed_precision(chain),
        "padded_to_multiple": nf.padded_to_multiple(chain, 4),
        "stateful": nf.serial(nf.dropout(0.5), chain),
    }


def _pullback_of(net, x):
    """``(params, pullback)`` of ``net`` at ``x`` (training mode for a stateful net)."""
    if isinstance(net, nf.stateful.StatefulLayer):
        _, params, state = net.init(torch.Generator().manual_seed(0), x.shape)
        net = nf.stateful.fixed(net, state, train=True, rng=torch.Generator().manual_seed(1))
    else:
        _, params = net.init(torch.Generator().manual_seed(0), x.shape)
    y, pullback = net.vjp(params, x)
    return net, params, y, pullback


@pytest.mark.parametrize("case", list(_wrappings(*_probe_pair()[:2])))
def test_release_frees_what_later_layers_saved_before_earlier_ones_run(case):
    """With ``release=True`` a layer's saved tensors are gone by the time the layers before
    it run their pullbacks (as torch's autograd frees a node's saved tensors); without it
    they stay, so the pullback can be called again."""
    x = torch.rand(2, 4, 6, 6) + 0.5
    for release, alive in ((False, True), (True, False)):
        first, last, box = _probe_pair()
        net, _, y, pullback = _pullback_of(_wrappings(first, last)[case], x)
        nf.pull(net.vjp, pullback, torch.randn_like(y), True, release=release)
        assert box["alive"] is alive, f"{case}, release={release}"


def _real_wrappings():
    """The ``_wrappings`` cases with real layers in place of the probes."""
    return _wrappings(nf.conv2d(4, 3, padding=1), nf.leaky_relu(0.1))


@pytest.mark.parametrize("case", list(_real_wrappings()))
@pytest.mark.parametrize("input_grad", [True, False])
def test_release_gives_the_same_gradients_and_refuses_a_second_call(case, input_grad):
    x = torch.randn(2, 4, 6, 6)
    net, _, y, pullback = _pullback_of(_real_wrappings()[case], x)
    ct = torch.randn_like(y)
    plain = nf.pull(net.vjp, pullback, ct, input_grad)
    final = nf.pull(net.vjp, pullback, ct, input_grad, release=True)
    assert (plain[1] is None) == (final[1] is None) == (not input_grad)
    for a, b in zip(nf.tree.leaves(plain), nf.tree.leaves(final), strict=True):
        assert a is b is None or torch.equal(a, b), case
    with pytest.raises(nf.ReleasedError, match="release=True"):
        nf.pull(net.vjp, pullback, ct, input_grad)


def test_released_pullback_refuses_a_second_call_and_others_repeat():
    net = nf.serial(nf.conv2d(3, 3, padding=1), nf.relu(), nf.conv2d(2, 3, padding=1))
    _, params = net.init(torch.Generator().manual_seed(0), (2, 3, 5, 7))
    x = torch.randn(2, 3, 5, 7)
    y, pullback = net.vjp(params, x)
    ct = torch.randn_like(y)
    first = pullback(ct)  # a plain call keeps everything: it can be repeated
    again = pullback(ct)
    final = pullback(ct, release=True)  # the last call gives the same gradients
    for a, b, c in zip(nf.tree.leaves(first), nf.tree.leaves(again), nf.tree.leaves(final)):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(nf.ReleasedError, match="release=True"):
        pullback(ct)


def test_training_step_and_module_backward_release():
    """make_train_step and Module.backward(retain_graph=False) make their one backward call
    with release=True."""
    first, last, box = _probe_pair()
    conv = nf.conv2d(4, 3, padding=1)
    net = nf.serial(conv, first, conv, last)  # a conv first: first's pullback must run
    _, params = net.init(torch.Generator().manual_seed(0), (2, 4, 6, 6))
    x, target = torch.rand(2, 4, 6, 6) + 0.5, torch.rand(2, 4, 6, 6)
    opt = nf.sgd(0.1)
    nf.make_train_step(net, nf.mse, opt)(params, opt.init(params), x, target)
    assert box["alive"] is False
    module = nf.Module(net, params)
    module.backward(module.forward(x), retain_graph=False)
    assert box["alive"] is False


def test_release_frees_the_children_a_step_without_input_gradient_skips():
    """Without the input gradient, serial never runs the children before its first one with
    parameters; with release=True it lets go of what they saved too."""
    _, last, box = _probe_pair()
    net = nf.serial(last, nf.conv2d(4, 3, padding=1))
    _, params = net.init(torch.Generator().manual_seed(0), (2, 4, 6, 6))
    y, pullback = net.vjp(params, torch.rand(2, 4, 6, 6) + 0.5)
    nf.pull(net.vjp, pullback, torch.randn_like(y), False, release=True)
    assert box["saved"]() is None


def test_sequential_drops_each_blocks_pullback_once_it_has_run():
    """The class wrappers' Sequential kept every block's pullback, and what it saved, to the
    end of the whole backward pass (a ReLU's output while the blocks before it ran: the
    default network's float32 step peaked at 39.1 MB of live tensors instead of 32.9)."""
    from n2nfunc.modules import Module, ReLU, Sequential, Sigmoid

    seen = {}

    def recorder():  # the identity, noting its input (the ReLU's output, which ReLU keeps)
        def vjp(params, x):
            seen["relu_out"] = weakref.ref(x)
            return x, lambda ct: ({}, ct)

        return nf.Layer(lambda g, s: (s, {}), lambda p, x: x, vjp)

    def checker():  # the identity, asking in its pullback whether that output is gone
        def vjp(params, x):
            def pullback(ct):
                gc.collect()
                seen["freed"] = seen["relu_out"]() is None
                return {}, ct

            return x, pullback

        return nf.Layer(lambda g, s: (s, {}), lambda p, x: x, vjp)

    net = Sequential(Module(checker(), {}), ReLU(), Module(recorder(), {}), Sigmoid())
    out = net.forward(torch.randn(2, 3, 4, 4))
    net.backward(torch.randn_like(out))  # kept for another backward, as autograd's default
    assert not seen["freed"]
    out = net.forward(torch.randn(2, 3, 4, 4))
    net.backward(torch.randn_like(out), retain_graph=False)
    assert seen["freed"]


def test_a_strided_convolution_keeps_no_copy_of_its_input():
    """The implicit-GEMM engine's space-to-depth copy of the input (padded: larger than the
    input, which the layer before keeps anyway) stayed alive from the forward pass to the
    backward pass; it is formed again for the weight gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    made = []

    class Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                made.append(weakref.ref(out))
            return out

    layer = nf.conv2d(8, 4, stride=2, padding=1)
    x = torch.randn(2, 16, 8, 8)
    _, params = layer.init(torch.Generator().manual_seed(0), x.shape)
    with Track():
        y, pullback = layer.vjp(params, x)
    del y
    gc.collect()
    kept = [r() for r in made if r() is not None and r().untyped_storage().nbytes()]
    kept = [t for t in kept if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()]
    assert not kept, [tuple(t.shape) for t in kept]
    grads, dx = pullback(torch.randn(2, 8, 4, 4))
    assert grads["weight"].shape == (8, 16, 4, 4) and dx.shape == x.shape


def test_default_network_training_step_peaks_no_higher_than_torch_nn():
    """The peak of live tensor bytes during one float32 training step of the default network
    at batch 100 (forward, backward, Adam), against torch.nn + autograd in its leaner layout:
    n2nfunc's engines form their im2col and space-to-depth copies a block of images at a time
    (kernels.image_blocks) and keep none of them between the passes; the whole batch's copies
    put this step at 1.49x torch.nn's peak."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import train_step
    from common import peak_live_tensor_bytes

    _, config, _ = next(train_step.settings(quick=True))
    peaks = {}
    for name in ("n2nfunc float32", "torch.nn float32 NCHW", "torch.nn float32 ch-last"):
        step = train_step.contenders(config, 100, only=name)[name]
        step()
        peaks[name] = peak_live_tensor_bytes(step)
    ours = peaks.pop("n2nfunc float32")
    assert ours <= 1.02 * min(peaks.values()), (ours, peaks)
