"""Class wrappers with the exercise grader's names and methods.

Each block holds state -- parameters, accumulated gradients, the pullback of its last
``forward`` (until the next one, or a ``backward(..., retain_graph=False)``) -- and
delegates every computation to the functional core:

    conv = Conv2d(3, 16, 3, stride=2, padding=1)
    y = conv.forward(x)                 # layer.vjp(params, x)
    dx = conv.backward(dy)              # pullback(dy); grads += ct_params
    for p, g in conv.param(): ...       # (parameter, gradient) pairs

Parameters are created like ``torch.nn``'s: with no ``generator`` the global RNG is used,
so ``torch.manual_seed(0); Conv2d(3, 3, 3)`` holds the weights of
``torch.manual_seed(0); torch.nn.Conv2d(3, 3, 3)``.

Blocks around a :class:`~n2nfunc.stateful.StatefulLayer` (``BatchNorm2d``, ``Dropout``, a
``Sequential`` holding one) also carry its ``state`` (running statistics), replaced after
every ``forward``, and an ``rng`` generator for dropout masks. ``train()`` / ``eval()`` set
the ``training`` flag, recursively, as in ``torch.nn``; ``state_dict()`` holds parameters
and running statistics under ``torch.nn``'s names (``"1.running_mean"``).

The modules: ``module`` (the :class:`Module` class every block is), ``blocks`` (the named
layer blocks), ``sequential``, ``loss_blocks`` and ``optimizers``.
"""

from .blocks import (
    ELU,
    GELU,
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    BilinearUpsampling,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Flatten,
    GroupNorm,
    Identity,
    InstanceNorm2d,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    NearestUpsampling,
    PixelShuffle,
    PixelUnshuffle,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
    TransposeConv2d,
    UNet,
    Upsample,
    Upsampling,
)
from .loss_blocks import (
    MSE,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    L1Loss,
    LossModule,
    MSELoss,
)
from .module import (
    NO_FORWARD,
    IncompatibleKeys,
    Module,
    StateDictKeyError,
    StateDictValueError,
    Unpicklable,
)
from .optimizers import SGD, Adam, AdamW, Optimizer, ParamGroup, ParamPairs, RMSprop
from .sequential import Sequential

__all__ = [
    "ELU", "GELU", "MSE", "NO_FORWARD", "SGD", "AdaptiveAvgPool2d", "Adam", "AdamW", "AvgPool2d",
    "BCEWithLogitsLoss",
    "BatchNorm2d", "BilinearUpsampling", "Conv2d", "ConvTranspose2d", "CrossEntropyLoss",
    "Dropout", "Flatten", "MSELoss",
    "GroupNorm", "HuberLoss", "Identity", "IncompatibleKeys", "InstanceNorm2d", "L1Loss",
    "LayerNorm", "LeakyReLU", "Linear", "LogSoftmax", "LossModule",
    "MaxPool2d", "Module", "NearestUpsampling", "Optimizer", "ParamGroup", "ParamPairs",
    "PixelShuffle", "PixelUnshuffle", "RMSprop", "ReLU", "Sequential", "SiLU", "Sigmoid",
    "Softmax", "Softplus", "StateDictKeyError",
    "StateDictValueError", "Tanh", "TransposeConv2d", "UNet", "Unpicklable", "Upsample",
    "Upsampling",
]  # fmt: skip
