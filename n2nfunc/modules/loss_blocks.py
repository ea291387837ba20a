"""Losses as blocks: ``forward(pred, target)`` returns the value, ``backward()`` its gradient
(the functional losses of :mod:`n2nfunc.losses`, held with their last gradient)."""

from torch import Tensor

from .. import tree
from ..losses import Loss, binary_cross_entropy_with_logits, cross_entropy_with, huber, l1, mse
from .blocks import _only_defaults
from .module import NO_FORWARD, Unpicklable


class LossModule(Unpicklable):
    """A loss as a block: ``forward(pred, target)`` returns the value, ``backward()`` its
    gradient wrt ``pred``. The value is the mean over elements: ``reduction`` (a keyword,
    as torch.nn's losses take) can only be ``"mean"``."""

    save_instead = "a loss holds no state: build a new one"

    def __init__(self, loss: Loss, name: str, reduction: str = "mean"):
        if reduction != "mean":
            raise ValueError(f"{name}: reduction={reduction!r} is not supported (only 'mean')")
        self.loss, self.name = loss, name
        self._grad: Tensor | None = None

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        self._grad = None  # a forward that fails leaves nothing to differentiate
        value, self._grad = self.loss.value_and_grad(*tree.detach((pred, target)))
        return value

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.forward(pred, target)

    def backward(self) -> Tensor:
        if self._grad is None:
            raise ValueError(f"{self.name}: {NO_FORWARD}")
        return self._grad

    def param(self) -> list:
        return []

    def __repr__(self):
        return f"{self.name}()"


class MSE(LossModule):
    """Mean squared error, ``mean((pred - target)^2)``."""

    def __init__(self, *, reduction: str = "mean"):
        super().__init__(mse, "MSE", reduction)


class MSELoss(LossModule):
    """``torch.nn.MSELoss``: :class:`MSE` (the exercise's name) under torch's, in torch's
    argument order (its deprecated ``size_average`` and ``reduce`` only None)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        _only_defaults("MSELoss", size_average=(size_average, None), reduce=(reduce, None))
        super().__init__(mse, "MSELoss", reduction)


class L1Loss(LossModule):
    """Mean absolute error, ``mean|pred - target|``, as ``torch.nn.L1Loss`` (argument order
    included; ``size_average`` and ``reduce`` only None)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        _only_defaults("L1Loss", size_average=(size_average, None), reduce=(reduce, None))
        super().__init__(l1, "L1Loss", reduction)


class HuberLoss(LossModule):
    """``torch.nn.HuberLoss(reduction="mean", delta=1.0)``, arguments in its order."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        if not isinstance(reduction, str):  # (delta came first before torch's order)
            raise TypeError(
                f"HuberLoss: reduction must be 'mean', got {reduction!r}; delta is the second "
                f"argument, as in torch: HuberLoss(delta={reduction!r})"
            )
        super().__init__(huber(delta), "HuberLoss", reduction)


class BCEWithLogitsLoss(LossModule):
    """``torch.nn.BCEWithLogitsLoss()``: ``forward(logits, target_probabilities)``; torch's
    ``weight`` and ``pos_weight`` only at their default, None."""

    def __init__(self, weight: None = None, *, reduction: str = "mean", pos_weight: None = None):
        _only_defaults("BCEWithLogitsLoss", weight=(weight, None), pos_weight=(pos_weight, None))
        super().__init__(binary_cross_entropy_with_logits, "BCEWithLogitsLoss", reduction)


class CrossEntropyLoss(LossModule):
    """``torch.nn.CrossEntropyLoss(label_smoothing=0.0)``: ``forward(logits, labels)`` with
    logits (N, K) and integer labels (N,); ``backward()`` is the gradient wrt the logits.
    Class weights (torch's first argument, ``weight``) are not supported: only None; nor is
    ``ignore_index`` other than torch's default (-100, which no valid label is)."""

    def __init__(
        self,
        weight: None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        _only_defaults("CrossEntropyLoss", ignore_index=(ignore_index, -100))
        if weight is not None:
            raise TypeError(
                "CrossEntropyLoss: class weights (weight) are not supported; "
                "label smoothing is the keyword label_smoothing"
            )
        super().__init__(cross_entropy_with(label_smoothing), "CrossEntropyLoss", reduction)
