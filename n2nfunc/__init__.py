"""n2nfunc: a small, exact deep-learning library with hand-written gradients, and a
Noise2Noise denoiser built with it.

Layers are triples of pure functions ``Layer(init, apply, vjp)`` (``StatefulLayer`` for
batch norm and dropout, with explicit state and rng); combinators build networks that are
layers again; losses and optimizers are pure functions; class
wrappers (``Conv2d``, ``Sequential``, ``SGD``, ...) give the exercise grader's interface.
"""

from typing import TYPE_CHECKING

from . import init, kernels, layers, optim, stateful, tree
from .base import Layer, ReleasedError, pull, releases, skips_input_grad
from .checkpoint import load, save
from .combinators import fanin_concat, fanin_sum, fanout, parallel, residual, serial
from .layers import (
    avg_pool2d,
    batch_norm2d,
    bilinear_upsample,
    conv2d,
    conv_transpose2d,
    dense,
    dropout,
    elu,
    flatten,
    gelu,
    global_avg_pool,
    group_norm,
    identity,
    instance_norm,
    layer_norm,
    leaky_relu,
    log_softmax,
    max_pool2d,
    nearest_upsample,
    pixel_shuffle,
    pixel_unshuffle,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
    upsample,
)
from .losses import (
    Loss,
    binary_cross_entropy_with_logits,
    cross_entropy,
    cross_entropy_with,
    huber,
    l1,
    mse,
)
from .metrics import evaluate, psnr
from .model import Model
from .modules import (
    ELU,
    GELU,
    MSE,
    SGD,
    Adam,
    AdamW,
    AvgPool2d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    BilinearUpsampling,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    GroupNorm,
    HuberLoss,
    InstanceNorm2d,
    L1Loss,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Module,
    NearestUpsampling,
    PixelShuffle,
    PixelUnshuffle,
    ReLU,
    RMSprop,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
    TransposeConv2d,
    UNet,
    Upsampling,
)
from .optim import (
    GradientTransformation,
    adam,
    adamw,
    add_decayed_weights,
    apply_updates,
    chain,
    clip_by_global_norm,
    cosine_decay,
    exponential_decay,
    masked,
    multi_transform,
    piecewise_constant,
    rmsprop,
    set_to_zero,
    sgd,
)
from .precision import mixed_precision
from .pretrained import load_network, pretrained
from .stateful import StatefulLayer, lift
from .testing import VJPCheckError, check_vjp
from .tiling import denoise_image
from .train import make_train_step, value_and_grad
from .unet import padded_to_multiple, unet

__version__ = "0.1.0"

if TYPE_CHECKING:  # (imported on first use: see __getattr__)
    from . import distributed as distributed

__all__ = [
    "Adam",
    "AdamW",
    "AvgPool2d",
    "BCEWithLogitsLoss",
    "BatchNorm2d",
    "BilinearUpsampling",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "ELU",
    "Flatten",
    "GELU",
    "GradientTransformation",
    "GroupNorm",
    "HuberLoss",
    "InstanceNorm2d",
    "L1Loss",
    "Layer",
    "LayerNorm",
    "ReleasedError",
    "VJPCheckError",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "Loss",
    "MSE",
    "MaxPool2d",
    "Model",
    "Module",
    "NearestUpsampling",
    "PixelShuffle",
    "PixelUnshuffle",
    "RMSprop",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "SiLU",
    "Softmax",
    "Softplus",
    "StatefulLayer",
    "Tanh",
    "TransposeConv2d",
    "UNet",
    "Upsampling",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "avg_pool2d",
    "batch_norm2d",
    "bilinear_upsample",
    "binary_cross_entropy_with_logits",
    "check_vjp",
    "clip_by_global_norm",
    "conv2d",
    "conv_transpose2d",
    "cosine_decay",
    "cross_entropy",
    "cross_entropy_with",
    "dense",
    "dropout",
    "denoise_image",
    "elu",
    "evaluate",
    "exponential_decay",
    "fanin_concat",
    "fanin_sum",
    "fanout",
    "flatten",
    "gelu",
    "global_avg_pool",
    "group_norm",
    "huber",
    "identity",
    "init",
    "instance_norm",
    "kernels",
    "load",
    "load_network",
    "l1",
    "layer_norm",
    "layers",
    "leaky_relu",
    "lift",
    "log_softmax",
    "make_train_step",
    "masked",
    "max_pool2d",
    "mixed_precision",
    "mse",
    "multi_transform",
    "nearest_upsample",
    "optim",
    "padded_to_multiple",
    "parallel",
    "piecewise_constant",
    "pixel_shuffle",
    "pixel_unshuffle",
    "pretrained",
    "psnr",
    "pull",
    "relu",
    "releases",
    "residual",
    "rmsprop",
    "save",
    "serial",
    "set_to_zero",
    "sgd",
    "sigmoid",
    "silu",
    "skips_input_grad",
    "softmax",
    "softplus",
    "stateful",
    "tanh",
    "tree",
    "unet",
    "upsample",
    "value_and_grad",
]


if not TYPE_CHECKING:  # (type checkers see the import above: a misspelt name is an error)

    def __getattr__(name: str):
        """``n2nfunc.distributed`` on first use: it imports ``torch.distributed``, which plain
        training never needs."""
        if name == "distributed":
            from .distributed import mean_gradients  # noqa: F401  (sets the package attribute)

            return globals()["distributed"]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
