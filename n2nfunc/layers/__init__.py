"""Layers beyond convolutions, one module per family (see each module's docstring).

``batch_norm2d`` and ``dropout`` are stateful layers (see :mod:`n2nfunc.stateful`).
"""

from .dense import dense, flatten
from .dropout import dropout
from .norm import batch_norm2d
from .pool import avg_pool2d, global_avg_pool, max_pool2d

__all__ = [
    "avg_pool2d",
    "batch_norm2d",
    "dense",
    "dropout",
    "flatten",
    "global_avg_pool",
    "max_pool2d",
]
