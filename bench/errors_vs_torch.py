"""Worst float64 relative error of each layer and loss against PyTorch (forward and every
gradient, random cotangents) over a grid of shapes and options.

    python bench/errors_vs_torch.py

The error of a result is max|ours - torch| / max|torch|, the measure the tests bound by 1e-10.
"""

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree

import n2nfunc as nf  # noqa: E402


def err(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def layer_error(layer, ref, x, params=None):
    """Worst error of the output, the input gradient and each parameter gradient."""
    params = params if params is not None else {}
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, dtype=y.dtype)
    names = list(params)
    with torch.enable_grad():
        leaves = [t.clone().requires_grad_() for t in [x] + [params[k] for k in names]]
        y_ref = ref(leaves[0], dict(zip(names, leaves[1:])))
        grads = torch.autograd.grad(y_ref, leaves, ct)
    ct_params, ct_x = pullback(ct)
    errors = [err(y, y_ref.detach()), err(ct_x, grads[0])]
    errors += [err(ct_params[k], g) for k, g in zip(names, grads[1:])]
    return max(errors)


def loss_error(loss, ref, pred, target):
    value, grad = loss.value_and_grad(pred, target)
    with torch.enable_grad():
        p = pred.clone().requires_grad_()
        v = ref(p, target)
        (g,) = torch.autograd.grad(v, [p])
    return max(err(value, v.detach()), err(grad, g))


def _pool(fn, *args):
    """The torch reference ``(x, params) -> fn(x, *args)`` of a pooling layer."""
    return lambda t, _: fn(t, *args)


def _params64(layer, x):
    """The float64 params of ``layer`` for input ``x``, in a dict (weight, then bias)."""
    _, params = layer.init(torch.Generator().manual_seed(0), tuple(x.shape))
    return {k: v.double() for k, v in params.items()}


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    rows = {}

    def record(name, e):
        rows[name] = max(rows.get(name, 0.0), e)

    for (n, c, h, w), (out, k, stride, pad, dil), bias in itertools.product(
        [(1, 3, 9, 7), (3, 5, 8, 8)],
        [(4, 3, 1, 1, 1), (6, 4, 2, 1, 1), (2, (3, 2), (2, 1), (1, 0), 1), (3, 3, 1, 2, 2)],
        [True, False],
    ):
        x = randn(n, c, h, w)
        layer = nf.conv2d(out, k, stride, pad, dil, bias=bias)
        record(
            "conv2d",
            layer_error(
                layer,
                lambda t, q, s=stride, p=pad, d=dil: F.conv2d(
                    t, q["weight"], q.get("bias"), s, p, d
                ),
                x,
                _params64(layer, x),
            ),
        )
        for out_pad in (0, 1):
            if out_pad >= (stride if isinstance(stride, int) else min(stride)):
                continue
            layer = nf.conv_transpose2d(out, k, stride, pad, out_pad, dil, bias=bias)
            record(
                "conv_transpose2d",
                layer_error(
                    layer,
                    lambda t, q, s=stride, p=pad, o=out_pad, d=dil: F.conv_transpose2d(
                        t, q["weight"], q.get("bias"), s, p, o, 1, d
                    ),
                    x,
                    _params64(layer, x),
                ),
            )
        for scale in (2, (2, 3)):
            layer = nf.upsample(out, 3, scale, 1, bias=bias)
            record(
                "upsample (nearest, then conv)",
                layer_error(
                    layer,
                    lambda t, q, sc=scale: F.conv2d(
                        F.interpolate(t, scale_factor=sc, mode="nearest"),
                        q["weight"],
                        q.get("bias"),
                        padding=1,
                    ),
                    x,
                    _params64(layer, x),
                ),
            )
            record(
                "nearest_upsample",
                layer_error(
                    nf.nearest_upsample(scale),
                    lambda t, _, sc=scale: F.interpolate(t, scale_factor=sc, mode="nearest"),
                    x,
                ),
            )
    for shape, out, bias in itertools.product([(1, 5), (4, 7), (3, 2, 5)], [1, 3], [True, False]):
        layer = nf.dense(out, bias=bias)
        _, params = layer.init(None, (-1,) + shape[1:])
        params = {k: v.double() for k, v in params.items()}
        record(
            "dense",
            layer_error(layer, lambda x, p: F.linear(x, *p.values()), randn(*shape), params),
        )
    for shape in [(1, 3), (2, 3, 4), (3, 2, 5, 7)]:
        record("flatten", layer_error(nf.flatten(), lambda x, p: x.flatten(1), randn(*shape)))
    for k, s, p, (hw, n) in itertools.product(
        [1, 2, 3, (3, 2)], [None, 1, 2, (1, 3)], [0, 1, (1, 0)], [((7, 9), 1), ((8, 8), 3)]
    ):
        kk = (k, k) if isinstance(k, int) else k
        pp = (p, p) if isinstance(p, int) else p
        if any(pi > ki // 2 for pi, ki in zip(pp, kk)):
            continue
        x = randn(n, 2, *hw)
        record(
            "max_pool2d",
            layer_error(nf.max_pool2d(k, s, p), _pool(F.max_pool2d, k, s, p), x),
        )
        ties = torch.randint(0, 2, x.shape).double()
        record(
            "max_pool2d (ties)",
            layer_error(nf.max_pool2d(k, s, p), _pool(F.max_pool2d, k, s, p), ties),
        )
        record(
            "avg_pool2d",
            layer_error(nf.avg_pool2d(k, s, p), _pool(F.avg_pool2d, k, s, p), x),
        )
    for shape in [(1, 1, 1, 1), (1, 3, 5, 7), (4, 2, 6, 6)]:
        record(
            "global_avg_pool",
            layer_error(nf.global_avg_pool(), lambda t, _: t.mean((2, 3)), randn(*shape)),
        )
    activations = [
        ("relu", nf.relu(), F.relu),
        ("sigmoid", nf.sigmoid(), torch.sigmoid),
        ("leaky_relu", nf.leaky_relu(0.2), lambda t: F.leaky_relu(t, 0.2)),
        ("tanh", nf.tanh(), torch.tanh),
        ("gelu", nf.gelu(), F.gelu),
        ("elu", nf.elu(0.7), lambda t: F.elu(t, 0.7)),
        ("softplus", nf.softplus(), F.softplus),
        ("log_softmax", nf.log_softmax(), lambda t: F.log_softmax(t, 1)),
        ("softmax", nf.softmax(), lambda t: F.softmax(t, 1)),
    ]
    for (name, layer, ref), shape in itertools.product(activations, [(1, 3, 1, 5), (3, 4, 5, 7)]):
        record(name, layer_error(layer, lambda t, _, ref=ref: ref(t), randn(*shape) * 4))
    for name, layer, ref in activations[-2:]:
        huge = torch.tensor([[1e4, -1e4, 0.0], [3e4, 3e4, -2.0]], dtype=torch.float64)
        record(name, layer_error(layer, lambda t, _, ref=ref: ref(t), huge))
    for shape in [(1,), (5, 3), (2, 3, 4, 5)]:
        pred, target, probs = (
            randn(*shape) * 3,
            randn(*shape),
            torch.rand(shape, dtype=torch.float64),
        )
        record("mse", loss_error(nf.mse, F.mse_loss, pred, target))
        record("l1", loss_error(nf.l1, F.l1_loss, pred, target))
        for delta in (0.3, 1.0, 2.5):
            record(
                "huber",
                loss_error(
                    nf.huber(delta), lambda a, b, d=delta: F.huber_loss(a, b, delta=d), pred, target
                ),
            )
        record(
            "binary_cross_entropy_with_logits",
            loss_error(
                nf.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, pred, probs
            ),
        )
    for eps, (n, k) in itertools.product([0.0, 0.1, 0.5], [(1, 2), (5, 7), (16, 10)]):
        z, labels = randn(n, k) * 3, torch.randint(0, k, (n,))
        name = "cross_entropy" if eps == 0 else "cross_entropy_with"
        record(
            name,
            loss_error(
                nf.cross_entropy_with(eps),
                lambda a, b, e=eps: F.cross_entropy(a, b, label_smoothing=e),
                z,
                labels,
            ),
        )
    huge = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [1e4, 1e4, -1e4]], dtype=torch.float64)
    record(
        "cross_entropy",
        loss_error(nf.cross_entropy, F.cross_entropy, huge, torch.tensor([1, 1, 0])),
    )

    for shape, momentum in itertools.product(
        [(2, 3, 5, 7), (1, 4, 3, 2), (3, 2, 1, 1), (4, 5, 8, 8)], [0.1, 0.7, None]
    ):
        c = shape[1]
        bn = nf.batch_norm2d(momentum=momentum)
        _, _, state = bn.init(None, (-1, c, -1, -1))
        state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
        params = {"weight": randn(c), "bias": randn(c)}
        rm, rv = state["running_mean"].clone(), state["running_var"].clone()
        for _ in range(3):  # training steps: output, gradients and the running statistics
            x = randn(*shape) * 3 + 1
            record(
                "batch_norm2d (train)",
                layer_error(
                    nf.stateful.fixed(bn, state, train=True),
                    lambda t, p, rm=rm, rv=rv, f=momentum or 0.0: F.batch_norm(
                        t, rm.clone(), rv.clone(), p["weight"], p["bias"], True, f
                    ),
                    x,
                    params,
                ),
            )
            _, state = bn.apply(params, state, x, train=True)
            m = float(1 / int(state["num_batches_tracked"])) if momentum is None else momentum
            F.batch_norm(x, rm, rv, None, None, True, m)  # torch updates rm, rv in place
            record("batch_norm2d (running statistics)", err(state["running_mean"], rm))
            record("batch_norm2d (running statistics)", err(state["running_var"], rv))
        record(
            "batch_norm2d (eval)",
            layer_error(
                nf.stateful.fixed(bn, state, train=False),
                lambda t, p, rm=rm, rv=rv: F.batch_norm(t, rm, rv, p["weight"], p["bias"], False),
                randn(*shape),
                params,
            ),
        )
    for shape, p in itertools.product([(1, 3, 5, 7), (4, 2, 3, 3), (5, 7)], [0.1, 0.5, 0.8]):
        rng = torch.Generator().manual_seed(5)
        mask = torch.empty(shape).bernoulli_(1 - p, generator=torch.Generator().manual_seed(5))
        mask = mask.double()
        record(
            "dropout (its own mask)",
            layer_error(
                nf.stateful.fixed(nf.dropout(p), {}, train=True, rng=rng),
                lambda t, _, m=mask, p=p: t * m / (1 - p),
                randn(*shape),
            ),
        )

    print(f"{'layer / loss':<36}worst float64 relative error vs PyTorch")
    for name, e in rows.items():
        print(f"{name:<36}{e:.2e}")


if __name__ == "__main__":
    main()
