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
