"""Losses as pure value / gradient functions of ``(prediction, target)``, each the mean over
the batch (and elements) like ``torch.nn.functional``'s default ``reduction="mean"``:
``mse``, ``l1``, ``huber(delta)``, ``binary_cross_entropy_with_logits``, and
``cross_entropy`` / ``cross_entropy_with(label_smoothing)`` of logits (N, K) and integer
class labels (N,)."""

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

from .base import check_tensor, float32_if_16bit, real_number
from .layers.activations import log_softmax_of


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
    return value, diff.mul(2.0 / diff.numel())  # (diff stays as the value's graph saved it)


mse = Loss(mse_value, mse_value_and_grad)


def _value_only(value_and_grad):
    return lambda pred, target: value_and_grad(pred, target)[0]


def l1_value_and_grad(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``mean|pred - target|`` and its gradient ``sign(pred - target) / numel`` (0 where equal,
    like PyTorch)."""
    _check_pair(pred, target, "l1")
    diff = pred - target
    return diff.abs().mean(), diff.sign().div_(diff.numel())


l1 = Loss(_value_only(l1_value_and_grad), l1_value_and_grad)


def huber(delta: float = 1.0) -> Loss:
    """Huber loss, ``mean(h(pred - target))`` with ``h(d) = d^2 / 2`` for ``|d| < delta``, else
    ``delta (|d| - delta / 2)``; gradient ``clamp(d, -delta, delta) / numel``."""
    d_max = real_number(delta)  # a Python, NumPy or 0-dim tensor number
    if d_max is None or not d_max > 0:
        error = TypeError if d_max is None else ValueError
        raise error(f"huber: delta must be a number > 0, got {delta!r}")
    name = f"huber(delta={delta})"

    def value_and_grad(pred, target):
        _check_pair(pred, target, name)
        diff = pred - target
        size = diff.abs()
        value = (diff * diff * 0.5).where(size < d_max, (size - 0.5 * d_max) * d_max).mean()
        return value, diff.clamp(-d_max, d_max).div_(diff.numel())

    return Loss(_value_only(value_and_grad), value_and_grad)


def bce_with_logits_value_and_grad(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``mean(-t log sigmoid(x) - (1 - t) log(1 - sigmoid(x)))`` of logits ``x`` and target
    probabilities ``t``, computed stably as ``(1 - t) max(x, 0) + t max(-x, 0) + log(1 +
    exp(-|x|))`` (``max(x, 0) - x t`` rearranged so that an infinite logit gives an infinite
    loss, not ``inf - inf``); gradient ``(sigmoid(x) - t) / numel``."""
    _check_pair(logits, target, "binary_cross_entropy_with_logits")
    value = logits.clamp(min=0).mul_(1 - target).masked_fill_(target == 1, 0)  # inf * 0 is 0
    value += logits.neg().clamp_(min=0).mul_(target).masked_fill_(target == 0, 0)
    value += logits.abs().neg_().exp().log1p()
    return value.mean(), logits.sigmoid().sub_(target).div_(logits.numel())


binary_cross_entropy_with_logits = Loss(
    _value_only(bce_with_logits_value_and_grad), bce_with_logits_value_and_grad
)

_INTEGER_DTYPES = {"torch.int64", "torch.int32", "torch.int16", "torch.int8", "torch.uint8"}


def _check_labels(logits, labels, name: str) -> None:
    """Logits (N, K) of floats; labels (N,) of integers in [0, K) on the same device."""
    check_tensor(logits, name, "logits")
    if logits.dim() != 2 or 0 in logits.shape:
        raise ValueError(f"{name}: expected logits of shape (N, K), got {tuple(logits.shape)}")
    n, k = logits.shape
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name}: labels must be a Tensor, got {type(labels).__name__}")
    if str(labels.dtype) not in _INTEGER_DTYPES:
        raise TypeError(
            f"{name}: labels must be integer class indices, got dtype {labels.dtype} "
            f"(labels shape {tuple(labels.shape)}, logits shape {tuple(logits.shape)})"
        )
    if tuple(labels.shape) != (n,):
        raise ValueError(
            f"{name}: labels must have shape ({n},) for logits of shape {(n, k)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"{name}: labels are on {labels.device}, logits on {logits.device}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= k:
        raise ValueError(
            f"{name}: labels must be in [0, {k}) for logits of shape {(n, k)}, "
            f"got values in [{low}, {high}]"
        )


def cross_entropy_with(label_smoothing: float = 0.1) -> Loss:
    """Cross-entropy of logits ``z`` (N, K) and labels ``y`` (N,), as
    ``torch.nn.functional.cross_entropy(z, y, label_smoothing=eps)``: with the smoothed target
    ``q = (1 - eps) onehot(y) + eps / K``, ``mean_n(-sum_k q[n, k] log_softmax(z)[n, k])``;
    gradient ``(softmax(z) - q) / N``. Stable for any finite logits; without smoothing a
    logit of -inf (a masked class) is fine too unless it is the label's."""
    eps = real_number(label_smoothing)  # a Python, NumPy or 0-dim tensor number
    if eps is None or not 0 <= eps <= 1:
        raise (TypeError if eps is None else ValueError)(
            f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing!r}"
        )
    name = "cross_entropy" if eps == 0 else f"cross_entropy_with(label_smoothing={eps})"

    def value_and_grad(logits, labels):
        _check_labels(logits, labels, name)
        n, k = logits.shape
        given = logits.dtype  # 16-bit floats computed in float32, rounded once (as softmax)
        logits = float32_if_16bit(logits)
        log_p = log_softmax_of(logits, 1)
        target = logits.new_full((n, k), eps / k)
        target.scatter_(1, labels.view(n, 1).long(), 1 - eps + eps / k)
        if eps == 0:  # the label's log-probability alone: 0 * log_p would be NaN at -inf
            value = log_p.gather(1, labels.view(n, 1).long()).sum().neg_().div_(n)
        else:
            value = (target * log_p).sum().neg_().div_(n)
        return value.to(given), log_p.exp().sub_(target).div_(n).to(given)

    return Loss(_value_only(value_and_grad), value_and_grad)


cross_entropy = cross_entropy_with(0.0)
