"""Layers beyond convolutions, one module per family (see each module's docstring)."""

from .dense import dense, flatten
from .pool import avg_pool2d, global_avg_pool, max_pool2d

__all__ = ["avg_pool2d", "dense", "flatten", "global_avg_pool", "max_pool2d"]
