"""Layers beyond the exercise's blocks: normalisation and dropout (stateful layers, see
:mod:`n2nfunc.stateful`)."""

from .dropout import dropout
from .norm import batch_norm2d

__all__ = ["batch_norm2d", "dropout"]
