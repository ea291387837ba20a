"""n2nfunc: a small, exact deep-learning library with hand-written gradients, and a
Noise2Noise denoiser built with it.

Layers are triples of pure functions ``Layer(init, apply, vjp)``; combinators build
networks that are layers again; losses and optimizers are pure functions; class
wrappers (``Conv2d``, ``Sequential``, ``SGD``, ...) give the exercise grader's interface.
"""

from . import init, kernels, optim, tree
from .activations import (
    elu,
    gelu,
    identity,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    softplus,
    tanh,
)
from .base import Layer, pull, skips_input_grad
from .combinators import fanin_concat, fanin_sum, fanout, parallel, residual, serial
from .conv import conv2d, conv_transpose2d, nearest_upsample, upsample
from .layers import avg_pool2d, dense, flatten, global_avg_pool, max_pool2d
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
    AvgPool2d,
    BCEWithLogitsLoss,
    Conv2d,
    CrossEntropyLoss,
    Flatten,
    HuberLoss,
    L1Loss,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Module,
    NearestUpsampling,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
    TransposeConv2d,
    Upsampling,
)
from .optim import GradientTransformation, adam, apply_updates, cosine_decay, sgd
from .testing import check_vjp
from .train import make_train_step, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AvgPool2d",
    "BCEWithLogitsLoss",
    "Conv2d",
    "CrossEntropyLoss",
    "ELU",
    "Flatten",
    "GELU",
    "GradientTransformation",
    "HuberLoss",
    "L1Loss",
    "Layer",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "Loss",
    "MSE",
    "MaxPool2d",
    "Model",
    "Module",
    "NearestUpsampling",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
    "TransposeConv2d",
    "Upsampling",
    "adam",
    "apply_updates",
    "avg_pool2d",
    "binary_cross_entropy_with_logits",
    "check_vjp",
    "conv2d",
    "conv_transpose2d",
    "cosine_decay",
    "cross_entropy",
    "cross_entropy_with",
    "dense",
    "elu",
    "evaluate",
    "fanin_concat",
    "fanin_sum",
    "fanout",
    "flatten",
    "gelu",
    "global_avg_pool",
    "huber",
    "identity",
    "init",
    "kernels",
    "l1",
    "leaky_relu",
    "log_softmax",
    "make_train_step",
    "max_pool2d",
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
    "softmax",
    "softplus",
    "tanh",
    "tree",
    "upsample",
    "value_and_grad",
]
