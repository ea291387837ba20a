"""n2nfunc: a small, exact deep-learning library with hand-written gradients, and a
Noise2Noise denoiser built with it.

Layers are triples of pure functions ``Layer(init, apply, vjp)``; combinators build
networks that are layers again; losses and optimizers are pure functions; class
wrappers (``Conv2d``, ``Sequential``, ``SGD``, ...) give the exercise grader's interface.
"""

from . import kernels, optim, tree
from .activations import identity, relu, sigmoid
from .base import Layer, pull, skips_input_grad
from .combinators import fanin_concat, fanin_sum, fanout, parallel, residual, serial
from .conv import conv2d, conv_transpose2d, nearest_upsample, upsample
from .losses import Loss, mse
from .metrics import evaluate, psnr
from .model import Model
from .modules import (
    MSE,
    SGD,
    Adam,
    Conv2d,
    Module,
    NearestUpsampling,
    ReLU,
    Sequential,
    Sigmoid,
    TransposeConv2d,
    Upsampling,
)
from .optim import GradientTransformation, adam, apply_updates, cosine_decay, sgd
from .precision import mixed_precision
from .testing import check_vjp
from .train import make_train_step, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "Conv2d",
    "GradientTransformation",
    "Layer",
    "Loss",
    "MSE",
    "Model",
    "Module",
    "NearestUpsampling",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "TransposeConv2d",
    "Upsampling",
    "adam",
    "apply_updates",
    "check_vjp",
    "conv2d",
    "conv_transpose2d",
    "cosine_decay",
    "evaluate",
    "fanin_concat",
    "fanin_sum",
    "fanout",
    "identity",
    "kernels",
    "make_train_step",
    "mixed_precision",
    "mse",
    "nearest_upsample",
    "optim",
    "parallel",
    "psnr",
    "pull",
    "relu",
    "residual",
    "serial",
    "sgd",
    "sigmoid",
    "skips_input_grad",
    "tree",
    "upsample",
    "value_and_grad",
]
