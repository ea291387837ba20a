"""The layers, one module per family: convolutions (:mod:`.conv`) and upsampling
(:mod:`.upsampling`), both on the engines of :mod:`n2nfunc.kernels`, bilinear resizing, pixel
shuffles, activations, dense, pooling, normalisation, dropout (see each module's docstring).
:mod:`.geometry` holds the sizes, arguments and checks that the convolution-like layers and
pooling share.

``batch_norm2d`` and ``dropout`` are stateful layers (see :mod:`n2nfunc.stateful`).
"""

from .activations import (
    elu,
    gelu,
    identity,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from .bilinear import bilinear_upsample
from .conv import conv2d, conv_transpose2d
from .dense import dense, flatten
from .dropout import dropout
from .norm import batch_norm2d, group_norm, instance_norm, layer_norm
from .pool import avg_pool2d, global_avg_pool, max_pool2d
from .shuffle import pixel_shuffle, pixel_unshuffle
from .upsampling import nearest_upsample, upsample

__all__ = [
    "avg_pool2d",
    "batch_norm2d",
    "bilinear_upsample",
    "conv2d",
    "conv_transpose2d",
    "dense",
    "dropout",
    "elu",
    "flatten",
    "gelu",
    "global_avg_pool",
    "group_norm",
    "identity",
    "instance_norm",
    "layer_norm",
    "leaky_relu",
    "log_softmax",
    "max_pool2d",
    "nearest_upsample",
    "pixel_shuffle",
    "pixel_unshuffle",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
    "upsample",
]
