"""The Noise2Noise paper's U-Net (Lehtinen et al. 2018, appendix A.1), composed from
n2nfunc layers and combinators.

With ``depth = 5`` and ``widths = (48, 96, 64, 32)`` it is the paper's network::

    enc0, enc1: conv 48, conv 48, pool            (full resolution)
    enc2..enc5: conv 48, pool                     (1/2 .. 1/16)
    enc6:       conv 48                           (1/32, the bottleneck)
    dec5..dec2: upsample x2, concat skip, conv 96, conv 96
    dec1:       upsample x2, concat input, conv 64, conv 32, conv out (linear)

Every conv is 3x3 with zero padding 1 and He-normal weights (zero bias), followed by
LeakyReLU(0.1) except the linear output conv; pooling is 2x2 max pooling, upsampling is
nearest x2; a skip is ``fanout(2)`` then ``parallel(deeper path, identity)`` then
``fanin_concat`` along channels.

Any H x W: the network is wrapped in :func:`padded_to_multiple`, which pads the input on
the bottom and right by repeating its last row / column (edge padding, so any size works,
even one smaller than the padding) up to a multiple of ``2**depth``, and crops the output
back. Its pullback is the adjoint: the cotangent is zero-extended over the padding, pulled
through the network, and the padded rows / columns of the input gradient are summed onto
the edge row / column they copy.
"""

from torch import cat

from .activations import identity, leaky_relu
from .base import Layer, check_cotangent, check_tensor, image_shape, positive_int
from .combinators import fanin_concat, fanout, parallel, serial
from .conv import conv2d, nearest_upsample
from .layers import max_pool2d
from .stateful import StatefulLayer

# The default is smaller than the paper's, to train on 2 CPU cores: a float32 training step at
# batch 8 of 64x64 crops takes 279 ms against 448 ms for the paper's shape
# (bench/unet_train_step.py, 2-core AMD EPYC); depth 3 was no faster than depth 4.
DEFAULT_ARCHITECTURE = {"depth": 4, "widths": (32, 64, 48, 24), "in_channels": 3, "out_channels": 3}
PAPER_ARCHITECTURE = {"depth": 5, "widths": (48, 96, 64, 32), "in_channels": 3, "out_channels": 3}


def _edge_pad(x, ph: int, pw: int):
    """``x`` (N, C, H, W) with its last row repeated ``ph`` times below and its last column
    ``pw`` times to the right."""
    if ph:
        x = cat([x, x[:, :, -1:].expand(-1, -1, ph, -1)], 2)
    if pw:
        x = cat([x, x[:, :, :, -1:].expand(-1, -1, -1, pw)], 3)
    return x


def _edge_pad_adjoint(g, h: int, w: int):
    """Adjoint of :func:`_edge_pad` to size (h, w): crop, adding the padded rows / columns
    onto the last row / column."""
    out = g[:, :, :h, :w].clone()
    if g.shape[2] > h:
        out[:, :, h - 1, :] += g[:, :, h:, :w].sum(2)
    if g.shape[3] > w:
        out[:, :, :, w - 1] += g[:, :, :h, w:].sum(3)
    if g.shape[2] > h and g.shape[3] > w:
        out[:, :, h - 1, w - 1] += g[:, :, h:, w:].sum((2, 3))
    return out


def padded_to_multiple(layer: Layer, multiple: int) -> Layer:
    """``x -> crop(layer(edge_pad(x)))``: ``layer`` sees H and W rounded up to multiples of
    ``multiple`` (last row / column repeated), and its output is cropped back to H x W. The
    layer must keep the spatial size; params are ``layer``'s own."""
    name = f"padded_to_multiple(multiple={multiple})"
    m = positive_int(multiple, "multiple", name)

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        inner = (n, c, -1 if h == -1 else h + -h % m, -1 if w == -1 else w + -w % m)
        out, params = layer.init(generator, inner)
        return (out[0], out[1], h, w), params

    def padded(x):
        check_tensor(x, name)
        if x.dim() != 4:
            raise ValueError(f"{name}: expected input of shape (N, C, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2], x.shape[3]
        return _edge_pad(x, -h % m, -w % m), h, w

    def check_size(y, xp):
        if tuple(y.shape[2:]) != tuple(xp.shape[2:]):
            raise ValueError(
                f"{name}: the inner layer maps size {tuple(xp.shape[2:])} to "
                f"{tuple(y.shape[2:])}; it must keep the spatial size"
            )

    def apply(params, x):
        xp, h, w = padded(x)
        y = layer.apply(params, xp)
        check_size(y, xp)
        return y[:, :, :h, :w]

    def vjp(params, x):
        xp, h, w = padded(x)
        yp, pb = layer.vjp(params, xp)
        check_size(yp, xp)
        y = yp[:, :, :h, :w]

        def pullback(ct):
            ct = check_cotangent(ct, y, name)
            ctp = yp.new_zeros(yp.shape)
            ctp[:, :, :h, :w] = ct
            grads, cxp = pb(ctp)
            return grads, _edge_pad_adjoint(cxp, h, w)

        return y, pullback

    return Layer(init, apply, vjp)


def _serial(*layers: Layer | StatefulLayer) -> Layer:
    """``serial`` of plain layers, which is a plain ``Layer`` (no child carries state)."""
    net = serial(*layers)
    if not isinstance(net, Layer):
        raise TypeError("unet: the network must not contain stateful layers")
    return net


def _conv(channels: int, activation: bool = True) -> Layer:
    """3x3 convolution (zero padding 1, He-normal), then LeakyReLU(0.1) unless linear."""
    conv = conv2d(channels, 3, padding=1, init="he_normal")
    return _serial(conv, leaky_relu(0.1)) if activation else conv


def _skip(deeper: Layer) -> Layer:
    """``x -> cat(deeper(x), x)`` along channels."""
    return _serial(fanout(2), parallel(deeper, identity()), fanin_concat(1))


def check_architecture(depth=4, widths=(32, 64, 48, 24), in_channels=3, out_channels=3) -> dict:
    """The architecture as a plain dict (what checkpoints record); bad values raise."""
    name = "unet"
    positive_int(depth, "depth", name)
    positive_int(in_channels, "in_channels", name)
    positive_int(out_channels, "out_channels", name)
    if (
        not isinstance(widths, (tuple, list))
        or len(widths) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in widths)
    ):
        raise ValueError(
            f"{name}: widths must be 4 positive ints (encoder, decoder, last two decoder "
            f"convs), e.g. (48, 96, 64, 32); got {widths!r}"
        )
    return {
        "depth": depth,
        "widths": tuple(widths),
        "in_channels": in_channels,
        "out_channels": out_channels,
    }


def unet(depth=4, widths=(32, 64, 48, 24), in_channels=3, out_channels=3) -> Layer:
    """The Noise2Noise U-Net (see the module docstring) with ``depth`` poolings and
    ``widths = (encoder, decoder, last_a, last_b)`` channels; any H x W input.

    ``in_channels`` only documents the expected input (``init`` checks it)."""
    arch = check_architecture(depth, widths, in_channels, out_channels)
    enc, dec, last_a, last_b = arch["widths"]

    def level(k: int) -> Layer:
        """The path below pooling ``k``: from the 1/2**k resolution back to it."""
        if k == depth:
            return _conv(enc)  # the bottleneck (the paper's enc_conv6)
        deeper = _serial(_conv(enc), max_pool2d(2), level(k + 1), nearest_upsample(2))
        return _serial(_skip(deeper), _conv(dec), _conv(dec))

    top = _serial(_conv(enc), _conv(enc), max_pool2d(2), level(1), nearest_upsample(2))
    net = _serial(_skip(top), _conv(last_a), _conv(last_b), _conv(out_channels, activation=False))
    padded = padded_to_multiple(net, 2**depth)

    def init(generator, in_shape):
        image_shape(in_shape, "unet", in_channels)
        return padded.init(generator, in_shape)

    return Layer(init, padded.apply, padded.vjp)


def multiple(arch: dict) -> int:
    """The size multiple a U-Net of architecture ``arch`` pads its input to."""
    return 2 ** arch["depth"]


__all__ = [
    "DEFAULT_ARCHITECTURE",
    "PAPER_ARCHITECTURE",
    "check_architecture",
    "multiple",
    "padded_to_multiple",
    "unet",
]
