"""Mixed precision: a layer computed on bfloat16 operands, float32 outside.

``mixed_precision(layer, "bfloat16")`` is a layer with the same params and shapes whose
forward pass and pullback run ``layer`` on bfloat16 copies of the float32 params, input
and output cotangent, and hand back float32 outputs and gradients. This is the policy of
``torch.autocast("cpu", dtype=torch.bfloat16)``: the matmuls take bfloat16 operands and
accumulate in float32 inside the kernel; the master weights (the params the caller keeps),
the optimizer state and the loss stay float32. Only float32 params and inputs are
accepted: a float64 tensor is an error, never silently rounded to bfloat16.

One difference from autocast: the whole layer runs on bfloat16 tensors, its input rounded on
entry, where autocast rounds a matmul's operands and leaves other ops in their inputs' dtype.
Between matmuls both carry bfloat16 activations; but a path that carries the float32 input
past every matmul (a residual block's skip from the network's input) keeps bfloat16
precision here (8 significant bits: 2-3 decimal digits) and float32 under autocast.
"""

from torch import Tensor, dtype

from . import tree
from .base import BFLOAT16, FLOAT32, Held, Layer, pull, releases, skips_input_grad
from .stateful import StatefulLayer
from .tiling import footprint, with_footprint

PRECISIONS = {"float32": FLOAT32, "bfloat16": BFLOAT16}


def compute_dtype(precision: str):
    """The dtype named by ``precision`` ("float32" or "bfloat16")."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def mixed_precision(layer: Layer, precision: str | dtype = "bfloat16") -> Layer:
    """``layer`` computed in ``precision`` ("bfloat16", or ``torch.bfloat16``), float32
    params/inputs/outputs.

    ``"float32"`` (``torch.float32``) returns ``layer`` itself. Outputs and every gradient are
    float32.
    """
    if not isinstance(layer, Layer):
        stateful = " (a stateful one: batch norm and dropout are not supported)"
        what = type(layer).__name__ + (stateful if isinstance(layer, StatefulLayer) else "")
        raise TypeError(f"mixed_precision: expected a Layer, got {what}")
    if isinstance(precision, dtype):  # torch.bfloat16 for "bfloat16"
        names = [k for k, v in PRECISIONS.items() if v == precision]
        if not names:
            raise ValueError(
                f"mixed_precision: precision must be one of {sorted(PRECISIONS)} (or those "
                f"torch dtypes), got {precision}"
            )
        precision = names[0]
    low = compute_dtype(precision)
    if low == FLOAT32:
        return layer
    if (inner := getattr(layer.vjp, "mixed_precision", None)) is not None:
        raise ValueError(
            f"mixed_precision: the layer already computes in {inner} (it is, or holds, a "
            "mixed_precision layer); wrap the float32 layer once"
        )
    if getattr(layer.vjp, "holds_state", False):
        raise TypeError(
            "mixed_precision: the layer holds a stateful one (batch norm, dropout), with its "
            "state fixed; stateful networks are not supported"
        )
    name = f"mixed_precision({precision})"

    def down(what):
        def cast(t):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                return t
            if t.dtype != FLOAT32:
                hint = (
                    "keep the float32 master copy outside (a mixed_precision layer inside "
                    "another gets its copies: wrap the float32 layer once)"
                    if t.dtype == low
                    else "other dtypes are never converted silently"
                )
                raise TypeError(
                    f"{name}: {what} must be float32 (the master precision), got {t.dtype} "
                    f"with shape {tuple(t.shape)}; {precision} is a compute policy for float32 "
                    f"networks: {hint}"
                )
            return t.to(dtype=low)

        return cast

    def up(t):
        return t.to(dtype=FLOAT32) if isinstance(t, Tensor) and t.dtype == low else t

    def cast_params(params):
        cast = down("params")
        for t in tree.leaves(params):  # a leaf of another float dtype is refused, by its shape
            if isinstance(t, Tensor) and t.dtype != FLOAT32:
                cast(t)
        return tree.map_raveled(cast, params)

    def init(generator, in_shape):
        return layer.init(generator, in_shape)

    def apply(params, x):
        y = layer.apply(cast_params(params), tree.map(down("input"), x))
        return tree.map(up, y)

    def vjp(params, x):
        y, pb = layer.vjp(cast_params(params), tree.map(down("input"), x))
        held = Held(pb, name)

        def pullback(ct, input_grad=True, release=False):
            ct = tree.map(down("output gradient"), ct)
            grads, dx = pull(layer.vjp, held.take(release), ct, input_grad, release)
            return tree.map_raveled(up, grads), tree.map(up, dx)

        return tree.map(up, y), pullback

    vjp.mixed_precision = precision  # type: ignore[attr-defined]
    mixed = Layer(init, apply, releases(skips_input_grad(vjp)))
    fp = footprint(layer)  # the same network: the same tiling needs
    return with_footprint(mixed, *fp) if fp else mixed
