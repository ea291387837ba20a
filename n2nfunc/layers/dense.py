"""Layers on feature vectors: ``dense`` (``torch.nn.Linear``) and ``flatten``."""

import math

from torch import Tensor

from ..base import (
    Layer,
    apply_via_vjp,
    check_cotangent,
    check_like,
    check_params,
    check_tensor,
    checks_unchanged,
    flag,
    output_of,
    positive_int,
    skips_input_grad,
    tensor_shape,
    weight_and_input,
)
from ..init import Init, check_init, init_weight_bias


def dense(out_features: int, bias: bool = True, init: Init = None) -> Layer:
    """Affine map of the last axis, as ``torch.nn.functional.linear``:
    ``y[..., o] = sum_f x[..., f] W[o, f] + b[o]`` with ``W`` [out, in], on inputs (N, F) or
    (N, *, F).

    Gradients, summed over all leading axes: ``dW = g^T x``, ``db = sum g``, ``dx = g W``.
    ``init`` picks the weights' initialiser (see :mod:`n2nfunc.init`; PyTorch's by default).
    """
    name = f"dense(out_features={out_features}, bias={bias})"
    out_features = positive_int(out_features, "out_features", name)
    bias = flag(bias, "bias", name)
    check_init(init, name)

    def init_fn(generator, in_shape):
        shape = tensor_shape(in_shape, name, 2, "(N, *, F)")
        if shape[-1] == -1:
            raise ValueError(f"{name}: the feature count of input shape {shape} must be known")
        params = init_weight_bias(
            init, generator, (out_features, shape[-1]), out_features if bias else None, name
        )
        return shape[:-1] + (out_features,), params

    def checked(params, x) -> Tensor:
        weight = params.get("weight") if isinstance(params, dict) else None
        size = tuple(weight.shape) if isinstance(weight, Tensor) and weight.dim() == 2 else None
        features = size[1] if size else -1
        if not (size and size[0] == out_features) and isinstance(x, Tensor):
            features = x.shape[-1] if x.dim() >= 2 else features  # another layer's weight
        check_params(
            params,
            name,
            {"weight": (out_features, features), **({"bias": (out_features,)} if bias else {})},
        )
        check_tensor(x, name)
        if x.dim() < 2 or x.shape[-1] != features:
            raise ValueError(
                f"{name}: expected input of shape (N, *, {features}), got {tuple(x.shape)}"
            )
        return check_like(x, name, params["weight"])

    def forward(params, x):
        y = checked(params, x).matmul(params["weight"].t())
        return y.add_(params["bias"]) if bias else y

    def vjp(params, x):
        y = forward(params, x)
        y_out, weight = output_of(y), params["weight"]  # (the dict may be rebound later)

        def pullback(ct, input_grad=True):
            g = check_cotangent(ct, y_out, name)
            g2d = g.reshape(-1, out_features)
            grads = {"weight": g2d.t().matmul(x.reshape(-1, x.shape[-1]))}
            if bias:
                grads["bias"] = g2d.sum(0)
            return grads, g.matmul(weight) if input_grad else None

        return y, pullback

    return Layer(init_fn, forward, checks_unchanged(name, skips_input_grad(vjp), weight_and_input))


def flatten() -> Layer:
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` in row-major order of the logical shape, as
    ``torch.flatten(x, 1)``: for an (N, C, H, W) activation, index ``c*H*W + h*W + w``, even
    when its memory is channels-last (the reshape then copies). The pullback reshapes back."""
    name = "flatten"

    def init_fn(generator, in_shape):
        shape = tensor_shape(in_shape, name, 2, "(N, ...)")
        rest = shape[1:]
        return (shape[0], -1 if -1 in rest else math.prod(rest)), {}

    def vjp(params, x):
        check_params(params, name, {})
        check_tensor(x, name)
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(
                f"{name}: expected a non-empty batch of shape (N, ...), got {tuple(x.shape)}"
            )
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        x_shape, y_out = x.shape, output_of(y)

        def pullback(ct):
            return {}, check_cotangent(ct, y_out, name).reshape(x_shape)

        return y, pullback

    return Layer(init_fn, apply_via_vjp(vjp), vjp)
