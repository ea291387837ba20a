"""``dropout(p)``: inverted dropout, as ``torch.nn.Dropout``.

Training: ``y = x * mask / (1 - p)`` with ``mask`` Bernoulli(1 - p) per element, drawn from
the call's ``rng`` (``empty(x.shape, device=rng.device).bernoulli_(1 - p, generator=rng)``,
in the default float dtype, then moved to ``x``'s device and dtype -- so a float32 and a
float64 network draw the same masks); the pullback multiplies by the same ``mask / (1 - p)``.
Evaluation, or ``p = 0``: the identity, and nothing is drawn. No params, empty state.
"""

from torch import Generator, empty

from ..base import check_cotangent, check_params, check_tensor, is_number, output_of, tensor_shape
from ..stateful import StatefulLayer, stateful_call


def dropout(p: float = 0.5) -> StatefulLayer:
    """Zero each element with probability ``p`` in training and scale the rest by
    ``1 / (1 - p)``; ``p`` in [0, 1)."""
    if not is_number(p) or not 0 <= p < 1:
        error = ValueError if is_number(p) else TypeError
        raise error(f"dropout: p must be a number in [0, 1), got {p!r}")
    p = float(p)
    name = f"dropout(p={p})"

    def init(generator, in_shape):
        return tensor_shape(in_shape, name, 0, "(N, ...)"), {}, {}

    def scaled_mask(x, rng):
        if not isinstance(rng, Generator):
            raise TypeError(
                f"{name}: training needs rng, a torch.Generator, got {type(rng).__name__} "
                f"(input shape {tuple(x.shape)})"
            )
        keep = empty(x.shape, device=rng.device).bernoulli_(1 - p, generator=rng)
        return keep.to(device=x.device, dtype=x.dtype).div_(1 - p)

    def vjp(params, state, x, *, train, rng=None):
        check_params(params, name, {})
        check_params(state, name, {}, "state")
        check_tensor(x, name)
        out = output_of(x)  # the closures hold its shape, dtype and device, not x
        if not train or p == 0:
            return x, state, lambda ct: ({}, check_cotangent(ct, out, name))
        mask = scaled_mask(x, rng)
        y = x * mask
        return y, state, lambda ct: ({}, check_cotangent(ct, out, name) * mask)

    def apply(params, state, x, *, train, rng=None):
        y, new_state, _ = vjp(params, state, x, train=train, rng=rng)
        return y, new_state

    return StatefulLayer(init, stateful_call(apply, "apply", name), stateful_call(vjp, "vjp", name))
