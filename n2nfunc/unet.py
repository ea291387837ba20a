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
nearest x2.

Each "deeper path, upsample x2, concat skip, conv" is one :func:`skip_block`: the conv's
weight is split along its input channels, the upsampled part is convolved on the
low-resolution grid (:func:`n2nfunc.upsample`, 2.25x fewer multiply-adds) and the skip part
at full resolution, and the two are summed; the concatenation is never formed. The math is
that of the paper's network; :func:`conv_list` gives its convolutions as the paper's
(merged) weights, and :func:`load_params` also reads checkpoints of the earlier layout
(one conv after an explicit concatenation).

Any H x W: the network is wrapped in :func:`padded_to_multiple`, which pads the input on
the bottom and right by repeating its last row / column (edge padding, so any size works,
even one smaller than the padding) up to a multiple of ``2**depth``, and crops the output
back. Its pullback is the adjoint: the cotangent is zero-extended over the padding, pulled
through the network, and the padded rows / columns of the input gradient are summed onto
the edge row / column they copy.
"""

from collections.abc import Sequence

from torch import Tensor, cat, device

from . import tree
from .base import (
    Held,
    Layer,
    Params,
    check_cotangent,
    check_image,
    check_tensor,
    holding,
    image_shape,
    is_int,
    marked_like,
    output_of,
    positive_int,
    pull,
    releases,
    skips_input_grad,
    unbatched_hint,
)
from .combinators import at_layer, check_input_grad, fanin_sum, fanout, parallel, serial
from .layers import max_pool2d
from .layers.activations import leaky_relu
from .layers.conv import conv2d
from .layers.upsampling import upsample
from .stateful import StatefulLayer
from .tiling import with_footprint

# The default is smaller than the paper's, to train on 2 CPU cores: a float32 training step at
# batch 8 of 64x64 crops takes 279 ms against 448 ms for the paper's shape
# (bench/unet_train_step.py, 2-core AMD EPYC); depth 3 was no faster than depth 4.
DEFAULT_ARCHITECTURE = {"depth": 4, "widths": (32, 64, 48, 24), "in_channels": 3, "out_channels": 3}
PAPER_ARCHITECTURE = {"depth": 5, "widths": (48, 96, 64, 32), "in_channels": 3, "out_channels": 3}


def edge_pad(x, ph: int, pw: int):
    """``x`` (N, C, H, W) with its last row repeated ``ph`` times below and its last column
    ``pw`` times to the right."""
    if ph:
        x = cat([x, x[:, :, -1:].expand(-1, -1, ph, -1)], 2)
    if pw:
        x = cat([x, x[:, :, :, -1:].expand(-1, -1, -1, pw)], 3)
    return x


def _edge_pad_adjoint(g, h: int, w: int):
    """Adjoint of :func:`edge_pad` to size (h, w): crop, adding the padded rows / columns
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
    if not isinstance(layer, (Layer, StatefulLayer)):
        raise TypeError(f"{name}: layer must be a Layer, got {type(layer).__name__}")
    if isinstance(layer, StatefulLayer):
        raise TypeError(
            f"{name}: the layer has state (batch norm, dropout, ...), which padding does not "
            "carry; pad the input yourself or use a stateless layer"
        )

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, name)
        inner = (n, c, -1 if h == -1 else h + -h % m, -1 if w == -1 else w + -w % m)
        out, params = layer.init(generator, inner)
        return (out[0], out[1], h, w), params

    def padded(x):
        check_tensor(x, name)
        if x.dim() != 4:
            raise ValueError(
                f"{name}: expected input of shape (N, C, H, W), got {tuple(x.shape)}"
                + unbatched_hint(x)
            )
        h, w = x.shape[2], x.shape[3]
        return edge_pad(x, -h % m, -w % m), h, w

    def check_size(y, xp):
        if tuple(y.shape[2:]) != tuple(xp.shape[2:]):
            raise ValueError(
                f"{name}: the inner layer maps size {tuple(xp.shape[2:])} to "
                f"{tuple(y.shape[2:])}; it must keep the spatial size"
            )

    def inner(run, params, x, xp):
        """``run(params, xp)``; a layer's error (a plain ValueError) names the caller's input
        shape too, not only the padded one that the inner layer saw."""
        try:
            return run(params, xp)
        except ValueError as e:
            if xp.shape == x.shape or type(e) is not ValueError:
                raise
            raise ValueError(
                f"{e} (the input of shape {tuple(x.shape)}, padded to {tuple(xp.shape)} by {name})"
            ) from e

    def apply(params, x):
        xp, h, w = padded(x)
        y = inner(layer.apply, params, x, xp)
        check_size(y, xp)
        return y[:, :, :h, :w]

    def vjp(params, x):
        xp, h, w = padded(x)
        yp, pb = inner(layer.vjp, params, x, xp)
        check_size(yp, xp)
        y = yp[:, :, :h, :w]
        y_out, yp_shape, held = output_of(y), yp.shape, Held(pb, name)

        def pullback(ct, input_grad=True, release=False):
            ct = check_cotangent(ct, y_out, name)
            ctp = ct.new_zeros(yp_shape)
            ctp[:, :, :h, :w] = ct
            grads, cxp = pull(layer.vjp, held.take(release), ctp, input_grad, release)
            return grads, _edge_pad_adjoint(cxp, h, w) if input_grad else None

        return y, pullback

    return Layer(init, apply, releases(skips_input_grad(holding(vjp, [layer]))))


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


def skip_block(deeper: Layer, channels: int) -> Layer:
    """``x -> LeakyReLU_0.1(conv3x3(cat(upsample_x2(deeper(x)), x)))`` with the conv's weight
    ``W = cat(W_low, W_skip)`` split along input channels::

        y = upsample(deeper(x); W_low) + conv(x; W_skip) + b

    where ``upsample`` is :func:`n2nfunc.upsample` (nearest x2 then 3x3, computed on the
    low-resolution grid); the concatenation is never formed. Composed as ``fanout(2)``,
    ``parallel(serial(deeper, upsample), conv)``, ``fanin_sum``, ``leaky_relu`` (whose params
    it takes, and whose errors it raises), with ``apply`` and ``vjp`` running the parts
    themselves so that the upsampled part is added into the conv's output in place; a caller
    that needs no input gradient skips the skip conv's too. Params ``{"1": {"0": {"0":
    <deeper>, "1": {"weight": W_low}}, "1": {"weight": W_skip, "bias": b}}, ...}``; the
    initial weights are ``deeper``'s, then one He-normal draw for the whole conv (fan-in over
    both parts), split."""
    low_conv, skip_conv, act = (
        upsample(channels, 3, 2, padding=1, bias=False),
        conv2d(channels, 3, padding=1),
        leaky_relu(0.1),
    )
    net = _serial(fanout(2), parallel(_serial(deeper, low_conv), skip_conv), fanin_sum(), act)
    whole = conv2d(channels, 3, padding=1, init="he_normal")

    def init(generator, in_shape):
        n, c, h, w = image_shape(in_shape, "unet skip_block")
        low_shape, low_params = deeper.init(generator, in_shape)
        out, p = whole.init(generator, (n, low_shape[1] + c, h, w))
        weight, c_low = p["weight"], low_shape[1]
        low = {"0": low_params, "1": {"weight": weight[:, :c_low].contiguous()}}
        skip = {"weight": weight[:, c_low:].contiguous(), "bias": p["bias"]}
        return out, {"0": {}, "1": {"0": low, "1": skip}, "2": {}, "3": {}}

    def apply(params, x):
        """``net.apply``, with the upsampled part added into the skip conv's fresh output in
        place (``upsample``'s ``add_into``): neither the interleaved upsampled output nor
        the sum is formed on its own, the same values (one sum of two terms either way)."""
        parts = _skip_block_parts(params)
        if parts is None or not isinstance(x, Tensor):
            return net.apply(params, x)  # (whose checks name what is wrong)
        deeper_params, low_params, skip_params = parts
        with at_layer("1.0.0"):  # the composed network's order and layer paths
            low = deeper.apply(deeper_params, x)
        with at_layer("1.1"):
            y = skip_conv.apply(skip_params, x)
        if not _adds_to(low, y):
            return net.apply(params, x)  # (fanin_sum's error, or its type promotion)
        with at_layer("1.0.1"):
            low_conv.apply.add_into(low_params, low, y)
        del low
        with at_layer("3"):
            return act.apply(params["3"], y)

    @releases
    @skips_input_grad
    def vjp(params, x):
        """``net.vjp`` computed as ``apply`` computes the forward pass (the upsampled part
        added into the skip conv's output), the pullback pulling the parts in the composed
        network's order: the same output bit for bit, the same gradients up to the order of
        the bias gradients' sums (the cotangent laid out as the skip conv's output rather than
        as the sum's; about 1e-16 relative in float64). Training step 1.02-1.03x."""
        parts = _skip_block_parts(params)
        if parts is None or not isinstance(x, Tensor):
            return net.vjp(params, x)
        deeper_params, low_params, skip_params = parts
        with at_layer("1.0.0"):
            low, deeper_pb = deeper.vjp(deeper_params, x)
        with at_layer("1.1"):
            y, skip_pb = skip_conv.vjp(skip_params, x)
        if not _adds_to(low, y):
            return net.vjp(params, x)  # (fanin_sum's error, or its type promotion)
        with at_layer("1.0.1"):
            low_pb = low_conv.vjp.add_into(low_params, low, y)
        shapes = {"3": y.shape, "1.0.1": low.shape, "1.0.0": x.shape, "1.1": x.shape}
        del low
        with at_layer("3"):
            z, act_pb = act.vjp(params["3"], y)
        z_out = output_of(z)
        held = {key: Held(pb, _COMPOSED_NAME) for key, pb in (("3", act_pb), ("1.0.1", low_pb))}
        held.update(
            {"1.0.0": Held(deeper_pb, _COMPOSED_NAME), "1.1": Held(skip_pb, _COMPOSED_NAME)}
        )
        del act_pb, low_pb, deeper_pb, skip_pb

        def pullback(ct, input_grad=True, release=False):
            ct = check_cotangent(ct, z_out, _COMPOSED_NAME)

            def pulled(path, layer, ct, need):  # one part's pullback, let go of if released
                with at_layer(path):
                    grads, ct = pull(layer.vjp, held[path].take(release), ct, need, release)
                    if need:
                        check_input_grad(ct, shapes[path])
                    return grads, ct

            _, g = pulled("3", act, ct, True)
            low_grads, d_low = pulled("1.0.1", low_conv, g, True)
            deeper_grads, dx = pulled("1.0.0", deeper, d_low, input_grad)
            del d_low
            skip_grads, dx_skip = pulled("1.1", skip_conv, g, input_grad)
            grads = {"0": {}, "1": {"0": {"0": deeper_grads, "1": low_grads}, "1": skip_grads}}
            grads.update({"2": {}, "3": {}})
            return grads, (dx + dx_skip if input_grad else None)

        return z, pullback

    return Layer(init, apply, vjp)


_COMPOSED_NAME = "serial"  # (the skip block's errors are its composed network's, a serial)


def _adds_to(low, y) -> bool:
    """Whether ``upsample(low)`` (x2 in height and width) has ``y``'s size and dtype, so that
    it can be added into ``y`` in place."""
    return (
        isinstance(low, Tensor)
        and low.dim() == 4
        and low.dtype == y.dtype
        and (low.shape[0], 2 * low.shape[2], 2 * low.shape[3]) == (y.shape[0], *y.shape[2:])
    )


def _skip_block_parts(params) -> tuple | None:
    """``(deeper's, upsample's, skip conv's params)`` from a skip block's, or None where they
    are not laid out as its composed network's (which then raises its own error)."""

    def keys(tree, expected):
        return isinstance(tree, dict) and tree.keys() == set(expected)

    if not (keys(params, "0123") and keys(params["0"], "") and keys(params["2"], "")):
        return None
    branches = params["1"]
    if not (keys(branches, "01") and keys(branches["0"], "01")):
        return None
    return branches["0"]["0"], branches["0"]["1"], branches["1"]


# Bounds that a checkpoint's architecture must keep, so that a crafted file cannot ask for
# terabytes of weights or a recursion deeper than Python allows (a depth-10 U-Net pads its
# input to multiples of 1024 pixels already).
MAX_DEPTH = 10
MAX_WIDTH = 4096


def check_architecture(depth=4, widths=(32, 64, 48, 24), in_channels=3, out_channels=3) -> dict:
    """The architecture as a plain dict (what checkpoints record); bad values raise."""
    name = "unet"
    depth = positive_int(depth, "depth", name)
    if depth > MAX_DEPTH:
        raise ValueError(f"{name}: depth must be at most {MAX_DEPTH}, got {depth}")
    in_channels = positive_int(in_channels, "in_channels", name)
    out_channels = positive_int(out_channels, "out_channels", name)
    for what, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if value > MAX_WIDTH:
            raise ValueError(f"{name}: {what} must be at most {MAX_WIDTH}, got {value}")
    ints = isinstance(widths, (tuple, list)) and all(map(is_int, widths))
    if not ints or len(widths) != 4 or not all(0 < v <= MAX_WIDTH for v in widths):
        raise (ValueError if ints else TypeError)(
            f"{name}: widths must be 4 ints from 1 to {MAX_WIDTH} (encoder, decoder, last two "
            f"decoder convs), e.g. (48, 96, 64, 32); got {widths!r}"
        )
    return {
        "depth": depth,
        "widths": tuple(map(int, widths)),
        "in_channels": in_channels,
        "out_channels": out_channels,
    }


def unet(
    depth: int = 4,
    widths: Sequence[int] = (32, 64, 48, 24),
    in_channels: int = 3,
    out_channels: int = 3,
) -> Layer:
    """The Noise2Noise U-Net (see the module docstring) with ``depth`` poolings and
    ``widths = (encoder, decoder, last_a, last_b)`` channels; any H x W input.

    ``in_channels`` is the input's channel count, checked by ``init``, ``apply`` and ``vjp``."""
    arch = check_architecture(depth, widths, in_channels, out_channels)
    enc, dec, last_a, last_b = arch["widths"]

    def level(k: int) -> Layer:
        """The path below pooling ``k``: from the 1/2**k resolution back to it, less the
        final upsampling (done by the caller's :func:`skip_block`)."""
        if k == depth:
            return _conv(enc)  # the bottleneck (the paper's enc_conv6)
        deeper = _serial(_conv(enc), max_pool2d(2), level(k + 1))
        return _serial(skip_block(deeper, dec), _conv(dec))

    top = _serial(_conv(enc), _conv(enc), max_pool2d(2), level(1))
    net = _serial(skip_block(top, last_a), _conv(last_b), _conv(out_channels, activation=False))
    padded = padded_to_multiple(net, 2**depth)

    def init(generator, in_shape):
        image_shape(in_shape, "unet", in_channels)
        return padded.init(generator, in_shape)

    def checked(params, x):
        """``x`` must fit the first convolution, checked here so that an error names the
        input's own shape (the convolution sees it padded)."""
        if not isinstance(params, dict):
            got = type(params).__name__
            raise TypeError(f"unet: params must be the dict its init returned, got {got}")
        first = tree.leaves(params)[:1]
        if first and isinstance(first[0], Tensor):
            check_image(x, "unet", in_channels, first[0])
        return x

    def apply(params, x):
        return padded.apply(params, checked(params, x))

    def vjp(params, x):
        return padded.vjp(params, checked(params, x))

    layer = Layer(init, apply, marked_like(vjp, padded.vjp))
    return with_footprint(layer, 2**depth, reach(depth))


def reach(depth: int) -> int:
    """How far from an output pixel the input pixels it depends on can lie, in pixels:
    ``5 * 2**depth - 2`` (78 at depth 4). Follow an output pixel's dependence interval back
    through the network: each 3x3 convolution widens it by one pixel of its level on each
    side, a pooling or an upsampling maps it to the next level; the deepest path dominates,
    and its reach, maximised over the pixel's position within the pooling grid, is this
    (``tests/test_pretrained.py`` measures it on the network itself). :func:`denoise_image`
    overlaps its tiles by this much."""
    return 5 * 2**depth - 2


def conv_list(params: Params) -> list[tuple[Tensor, Tensor]]:
    """The U-Net's convolutions as ``(weight, bias)`` in execution order (the order of the
    params), each :func:`skip_block`'s two parts merged into the one weight over
    ``cat(upsampled, skip)`` that they compute. Also reads the earlier layout, whose params
    hold that weight whole."""
    leaves = [t for _, t in tree.flatten(params)]
    convs, i = [], 0
    while i + 1 < len(leaves):
        if i + 2 < len(leaves) and leaves[i + 1].dim() == 4:  # weight, weight, bias: split
            convs.append((cat([leaves[i], leaves[i + 1]], 1), leaves[i + 2]))
            i += 3
        else:
            convs.append((leaves[i], leaves[i + 1]))
            i += 2
    if i != len(leaves):
        raise ValueError("unet: the parameters are not (weight, bias) pairs of convolutions")
    return convs


def from_conv_list(template: Params, convs: list[tuple[Tensor, Tensor]]) -> Params:
    """``template`` (params of this layout) holding the convolutions ``convs`` (as
    :func:`conv_list` gives them), the merged weights split where the template splits."""
    slots = tree.flatten(template)
    values, i = {}, 0
    for weight, bias in convs:
        if i + 1 >= len(slots):
            raise ValueError(f"unet: {len(convs)} convolutions for a smaller network")
        path, slot = slots[i]
        if slot.dim() == 4 and slots[i + 1][1].dim() == 4:  # a skip_block's two parts
            c = slot.shape[1]
            values[path], values[slots[i + 1][0]] = weight[:, :c], weight[:, c:]
            i += 1
        else:
            values[path] = weight
        values[slots[i + 1][0]] = bias
        i += 2
    if i != len(slots):
        raise ValueError(f"unet: {len(convs)} convolutions for a larger network")
    return tree.unflatten(template, {p: t.contiguous() for p, t in values.items()})


def checkpoint_unet(payload: dict, source: str) -> tuple[dict, Params]:
    """The checked architecture and params of a U-Net checkpoint tree (``{"network": "unet",
    "architecture": {...}, "params": {...}}``, see :func:`load_params`); errors name
    ``source``."""
    arch = payload.get("architecture")
    if not isinstance(arch, dict):
        raise ValueError(f"{source}: U-Net checkpoint without an 'architecture' dict")
    try:
        arch = check_architecture(**arch)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: bad U-Net architecture: {e}") from None
    return arch, load_params(arch, payload.get("params"), source)


def _oversized(params, max_leaves: int, max_key: int = 200) -> bool:
    """Whether nested dicts and lists hold more than ``max_leaves`` leaves or a key longer
    than ``max_key`` characters (a walk that stops there, forming no paths)."""
    stack, leaves = [params], 0
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(isinstance(k, str) and len(k) > max_key for k in node):
                return True
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        else:
            leaves += 1
            if leaves > max_leaves:
                return True
    return False


def load_params(arch: dict, params, source: str = "checkpoint") -> Params:
    """A checkpoint's U-Net params (this layout or the earlier one) for ``unet(**arch)``,
    their paths and shapes checked; errors name ``source``. The shapes the architecture
    asks for are formed on the meta device, so that a crafted architecture costs no memory
    (depth 10 at width 4096 would be 6 billion parameters) before it is compared with the
    file's own tensors."""
    with device("meta"):
        _, fresh = unet(**arch).init(None, (-1, arch["in_channels"], -1, -1))
    want = {p: tuple(t.shape) for p, t in tree.flatten(fresh)}

    def paths_and_shapes(params):
        try:
            return {p: tuple(t.shape) for p, t in tree.flatten(params)}
        except AttributeError:
            raise ValueError(f"{source}: the parameters are not a tree of tensors") from None

    if _oversized(params, 4 * len(want) + 16):  # (before paths repeat its keys: 1 MB
        raise ValueError(  # under 100,000 leaves made 100 GB of paths)
            f"{source}: the parameters are not the {len(want)} tensors of the recorded "
            "architecture (far more leaves, or keys longer than 200 characters)"
        )
    got = paths_and_shapes(params)
    if got != want:  # the earlier layout, matched by position (never this layout's: a file
        try:  # listing a dict's keys in another order would swap equal-shaped layers)
            params = from_conv_list(fresh, conv_list(params))
            got = paths_and_shapes(params)
        except (AttributeError, TypeError, ValueError, IndexError, RuntimeError):
            pass  # reported below as a difference of paths / shapes
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:4]
        raise ValueError(
            f"{source}: parameters do not fit the recorded architecture "
            f"(first differences, (path, shape)): {diff}"
        )
    for path, t in tree.flatten(params):
        if not t.is_floating_point():  # it would be refused by the first matmul, unnamed
            raise ValueError(f"{source}: parameter {path!r} is {t.dtype}, not floating point")
    return params


__all__ = [
    "DEFAULT_ARCHITECTURE",
    "PAPER_ARCHITECTURE",
    "check_architecture",
    "checkpoint_unet",
    "conv_list",
    "from_conv_list",
    "load_params",
    "padded_to_multiple",
    "reach",
    "skip_block",
    "unet",
]
