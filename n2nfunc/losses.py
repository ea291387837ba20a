"""Losses as pure value / gradient functions of ``(prediction, target)``."""

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

from .base import check_tensor


class Loss(NamedTuple):
    """A loss: ``value(pred, target) -> scalar`` and ``value_and_grad(pred, target) ->
    (scalar, d value / d pred)``. Calling the loss gives its value."""

    value: Callable[[Tensor, Tensor], Tensor]
    value_and_grad: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.value(pred, target)


def _check_pair(pred, target, name: str) -> None:
    check_tensor(pred, name, "prediction")
    check_tensor(target, name, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction shape {tuple(pred.shape)} does not match "
            f"target shape {tuple(target.shape)}"
        )
    if pred.dtype != target.dtype or pred.device != target.device:
        raise TypeError(
            f"{name}: prediction ({pred.dtype}, {pred.device}) and target "
            f"({target.dtype}, {target.device}) differ in dtype or device"
        )
    if pred.numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(pred.shape)}")


def mse_value(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements, ``mean((pred - target)^2)``."""
    _check_pair(pred, target, "mse")
    return (pred - target).pow_(2).mean()


def mse_value_and_grad(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``mean((pred - target)^2)`` and its gradient ``2 (pred - target) / numel``."""
    _check_pair(pred, target, "mse")
    diff = pred - target
    value = (diff * diff).mean()
    return value, diff.mul_(2.0 / diff.numel())


mse = Loss(mse_value, mse_value_and_grad)
