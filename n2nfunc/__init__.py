"""n2nfunc: a small, exact deep-learning library with hand-written gradients, and a
Noise2Noise denoiser built with it.

Layers are triples of pure functions ``Layer(init, apply, vjp)``; combinators build
networks that are layers again; losses and optimizers are pure functions; class
wrappers (``Conv2d``, ``Sequential``, ``SGD``, ...) give the exercise grader's interface.
"""

from . import kernels, optim, tree
from .activations import identity, relu, sigmoid
from .base import Layer, pull, skips_input_grad
from .checkpoint import load, save
from .combinators import fanin_concat, fanin_sum, fanout, parallel, residual, serial
from .conv import conv2d, conv_transpose2d, nearest_upsample, upsample
from .losses import Loss, mse
from .metrics import evaluate, psnr
from .model import Model
from .modules import (
    MSE,
    SGD,
    Adam,
    AdamW,
    Conv2d,
    Module,
    NearestUpsampling,
    ReLU,
    RMSprop,
    Sequential,
    Sigmoid,
    TransposeConv2d,
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
    piecewise_constant,
    rmsprop,
    sgd,
)
from .testing import check_vjp
from .train import make_train_step, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "Conv2d",
    "GradientTransformation",
    "Layer",
    "Loss",
    "MSE",
    "Model",
    "Module",
    "NearestUpsampling",
    "RMSprop",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "TransposeConv2d",
    "Upsampling",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "check_vjp",
    "clip_by_global_norm",
    "conv2d",
    "conv_transpose2d",
    "cosine_decay",
    "evaluate",
    "exponential_decay",
    "fanin_concat",
    "fanin_sum",
    "fanout",
    "identity",
    "kernels",
    "load",
    "make_train_step",
    "mse",
    "nearest_upsample",
    "optim",
    "parallel",
    "piecewise_constant",
    "psnr",
    "pull",
    "relu",
    "residual",
    "rmsprop",
    "save",
    "serial",
    "sgd",
    "sigmoid",
    "skips_input_grad",
    "tree",
    "upsample",
    "value_and_grad",
]
