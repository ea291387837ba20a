"""n2nfunc: a small, exact deep-learning library with hand-written gradients, and a
Noise2Noise denoiser built with it.

Layers are triples of pure functions ``Layer(init, apply, vjp)`` (``StatefulLayer`` for
batch norm and dropout, with explicit state and rng); combinators build networks that are
layers again; losses and optimizers are pure functions; class
wrappers (``Conv2d``, ``Sequential``, ``SGD``, ...) give the exercise grader's interface.
"""

from . import kernels, layers, optim, stateful, tree
from .activations import identity, relu, sigmoid
from .base import Layer, pull, skips_input_grad
from .combinators import fanin_concat, fanin_sum, fanout, parallel, residual, serial
from .conv import conv2d, conv_transpose2d, nearest_upsample, upsample
from .layers import batch_norm2d, dropout
from .losses import Loss, mse
from .metrics import evaluate, psnr
from .model import Model
from .modules import (
    MSE,
    SGD,
    Adam,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Module,
    NearestUpsampling,
    ReLU,
    Sequential,
    Sigmoid,
    TransposeConv2d,
    Upsampling,
)
from .optim import GradientTransformation, adam, apply_updates, cosine_decay, sgd
from .stateful import StatefulLayer, lift
from .testing import check_vjp
from .train import make_train_step, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
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
    "StatefulLayer",
    "TransposeConv2d",
    "Upsampling",
    "adam",
    "apply_updates",
    "batch_norm2d",
    "check_vjp",
    "conv2d",
    "conv_transpose2d",
    "cosine_decay",
    "dropout",
    "evaluate",
    "fanin_concat",
    "fanin_sum",
    "fanout",
    "identity",
    "kernels",
    "layers",
    "lift",
    "make_train_step",
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
    "stateful",
    "tree",
    "upsample",
    "value_and_grad",
]
