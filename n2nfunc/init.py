"""Weight initialisers for the layers with weights (``conv2d``, ``conv_transpose2d``,
``upsample``, ``dense``), chosen by their ``init=`` argument:

* ``None``: PyTorch's default, ``W ~ U(-b, b)`` with ``b = 1/sqrt(fan_in)`` (what
  ``kaiming_uniform_(a=sqrt(5))`` gives) and ``bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
  drawn weight first, so a generator seeded like PyTorch's draws ``torch.nn``'s numbers;
* ``"he_normal"``: ``W ~ N(0, 2/fan_in)``; ``"he_uniform"``: ``W ~ U(-b, b)``,
  ``b = sqrt(6/fan_in)`` (``kaiming_*_(nonlinearity="relu")``);
* ``"xavier_uniform"``: ``W ~ U(-b, b)``, ``b = sqrt(6/(fan_in + fan_out))``;
* ``"zeros"``: ``W = 0``;
* a callable ``fn(generator, shape) -> Tensor`` drawing the weight itself.

Except for the default, the bias starts at zero. Fans follow PyTorch: for a weight of shape
``(a, b, *kernel)``, ``fan_in = b * prod(kernel)`` and ``fan_out = a * prod(kernel)`` (so a
transposed convolution's ``[in, out, kh, kw]`` weight has fan-in ``out * kh * kw``, as in
``torch.nn.ConvTranspose2d``).
"""

import math
from collections.abc import Callable

from torch import Generator, Tensor, empty

from .base import Shape, generator_device, kaiming_bounds, uniform

Initializer = Callable[[Generator | None, Shape], Tensor]
# What a layer's init= takes: None (PyTorch's default), a name of NAMES, or an Initializer
Init = str | Initializer | None
NAMES = ("he_normal", "he_uniform", "xavier_uniform", "zeros")


def fans(shape: Shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` (at least 2-d), as PyTorch counts them."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _empty(generator: Generator | None, shape: Shape) -> Tensor:
    return empty(shape, device=generator.device if generator is not None else None)


# The scales are computed in torch.nn.init's order of operations, so that the same generator
# draws bit-identical weights.
def _he_std(shape) -> float:
    return math.sqrt(2.0) / math.sqrt(fans(shape)[0])


def _he_normal(generator, shape):
    t = _empty(generator, shape)
    if t.is_meta:  # shapes only (checkpoint checks): a first normal_ there imports for 1 s
        return t
    return t.normal_(0.0, _he_std(shape), generator=generator)


def _he_uniform(generator, shape):
    return uniform(generator, shape, math.sqrt(3.0) * _he_std(shape))


def _xavier_uniform(generator, shape):
    fan_in, fan_out = fans(shape)
    return uniform(generator, shape, math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out)))


def _zeros(generator, shape):
    return _empty(generator, shape).zero_()


_NAMED: dict[str, Initializer] = {
    "he_normal": _he_normal,
    "he_uniform": _he_uniform,
    "xavier_uniform": _xavier_uniform,
    "zeros": _zeros,
}


def check_init(init, layer: str) -> None:
    """``init`` must be None, one of :data:`NAMES` or a callable."""
    if init is None or callable(init) or (isinstance(init, str) and init in _NAMED):
        return
    raise ValueError(
        f"{layer}: init must be None, one of {list(NAMES)} or a callable, got {init!r}"
    )


def init_weight_bias(
    init, generator: Generator | None, weight_shape: Shape, bias_size: int | None, layer: str
) -> dict:
    """``{"weight": ..., "bias": ...}`` (no bias when ``bias_size`` is None) drawn by ``init``."""
    check_init(init, layer)
    generator_device(generator, layer)
    fan_in = fans(weight_shape)[0]
    if init is None:
        w_bound, b_bound = kaiming_bounds(fan_in)
        params = {"weight": uniform(generator, weight_shape, w_bound)}
        if bias_size is not None:
            params["bias"] = uniform(generator, (bias_size,), b_bound)
        return params
    draw = _NAMED[init] if isinstance(init, str) else init
    weight = draw(generator, tuple(weight_shape))
    if not isinstance(weight, Tensor) or tuple(weight.shape) != tuple(weight_shape):
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{layer}: init returned {got}, expected a tensor of shape {weight_shape}")
    params = {"weight": weight}
    if bias_size is not None:
        params["bias"] = weight.new_zeros(bias_size)
    return params
