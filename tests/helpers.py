"""Oracles for the tests: torch autograd on torch.nn.functional (tests may use all of torch)."""

import torch


def autograd_vjp(fn, inputs, ct):
    """``(y, grads)`` of ``fn(*inputs)`` with cotangent ``ct``, by torch autograd."""
    with torch.enable_grad():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, ct)
    return y.detach(), [g.detach() for g in grads]


def assert_matches_twin(net, params, x, twin, tol):
    """``net``'s output, input gradient and every parameter gradient (a random cotangent)
    within ``tol`` of ``twin(x, p)`` under torch autograd, ``p`` the params by dotted path."""
    from n2nfunc import tree

    flat = dict(tree.flatten(params))
    names = sorted(flat)
    y, pullback = net.vjp(params, x)
    ct = torch.randn(y.shape, dtype=y.dtype)
    y_ref, grads = autograd_vjp(
        lambda x_, *ps: twin(x_, dict(zip(names, ps))), [x] + [flat[k] for k in names], ct
    )
    assert rel_err(y, y_ref) < tol
    ct_params, dx = pullback(ct)
    assert rel_err(dx, grads[0]) < tol
    ct_flat = dict(tree.flatten(ct_params))
    for k, g in zip(names, grads[1:]):
        assert rel_err(ct_flat[k], g) < tol, k


def assert_trains_like(ours, theirs, x_shape, y_shape, steps=3):
    """``steps`` SGD steps (lr 0.1, MSE) of the wrapper network ``ours`` and the torch.nn
    network ``theirs``, holding the same weights, on the same random batches: the losses
    agree step by step (relative 1e-5)."""
    import n2nfunc as nf

    opt, opt_ref = nf.SGD(ours.param(), lr=0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    loss = nf.MSE()
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, t = torch.randn(x_shape, generator=g), torch.randn(y_shape, generator=g)
        opt.zero_grad()
        value = loss.forward(ours.forward(x), t)
        ours.backward(loss.backward())
        opt.step()
        opt_ref.zero_grad()
        with torch.enable_grad():
            value_ref = torch.nn.functional.mse_loss(theirs(x), t)
            value_ref.backward()
        opt_ref.step()
        assert abs(float(value) - float(value_ref)) <= 1e-5 * float(value_ref)


def assert_conv_matches(layer, params, x, reference, tol, same_without_input_grad=True):
    """A (transposed) convolution's output and every gradient against ``reference(x, w, b)``
    (a torch.nn.functional call) + autograd in float64, with a random cotangent; and its
    pullback without the input gradient: the same parameter gradients, bit for bit where
    ``same_without_input_grad``, else within ``tol``."""
    y, pullback = layer.vjp(params, x)
    ct = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    has_bias = "bias" in params
    leaves = [x, params["weight"]] + ([params["bias"]] if has_bias else [])

    def ref(x_, w_, *b_):
        return reference(x_, w_, b_[0] if b_ else None)

    y_ref, grads = autograd_vjp(ref, [t.double() for t in leaves], ct.double())
    assert y.shape == y_ref.shape and y.dtype == x.dtype and rel_err(y, y_ref) <= tol
    assert torch.equal(layer.apply(params, x), y)
    ct_params, dx = pullback(ct)
    assert dx.shape == x.shape and rel_err(dx, grads[0]) <= tol
    assert ct_params["weight"].shape == params["weight"].shape
    assert rel_err(ct_params["weight"], grads[1]) <= tol
    assert set(ct_params) == ({"weight", "bias"} if has_bias else {"weight"})
    if has_bias:
        assert rel_err(ct_params["bias"], grads[2]) <= tol
    only_params, none = pullback(ct, input_grad=False)
    assert none is None
    for k in ct_params:
        same = torch.equal(only_params[k], ct_params[k])
        assert same if same_without_input_grad else rel_err(only_params[k], ct_params[k]) <= tol


def rel_err(a, b):
    """max |a - b| relative to the scale of b."""
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def randn(*shape, dtype=torch.float64, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=dtype, generator=g)


def params_in(layer, shape, dtype, seed=0):
    """``layer``'s params for input ``shape``, drawn by its init from ``seed``, in ``dtype``."""
    _, params = layer.init(torch.Generator().manual_seed(seed), shape)
    return {k: v.to(dtype) for k, v in params.items()}


def image(shape, dtype, seed=1, channels_last=False):
    """A random input of ``shape`` and ``dtype``, channels-last where asked."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def init64(layer, shape, seed=0):
    _, params = layer.init(torch.Generator().manual_seed(seed), shape)
    return {k: v.double() for k, v in params.items()}


def code_running_pickle(marker) -> bytes:
    """A pickle that, if unpickled unsafely, would create the file ``marker``."""
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps(Evil())


def set_in_kernels(monkeypatch, name, value):
    """Set ``name`` to ``value`` (undone after the test) wherever n2nfunc.kernels binds it: in
    the package and in each engine module that defines or imports it, so that a spy or a
    smaller block size reaches every call. Returns the value it replaced."""
    from types import ModuleType

    import n2nfunc.kernels as kernels

    modules = [kernels, *(m for m in vars(kernels).values() if isinstance(m, ModuleType))]
    bound = [m for m in modules if name in vars(m)]
    assert bound, f"n2nfunc.kernels binds no {name!r}"
    replaced = vars(bound[0])[name]
    for module in bound:
        monkeypatch.setattr(module, name, value)
    return replaced


def spy_in_kernels(monkeypatch, name, note) -> list:
    """Wrap the function ``name`` wherever n2nfunc.kernels binds it (:func:`set_in_kernels`):
    each call first appends ``note(*args)`` to the list returned, then runs the function."""
    notes: list = []

    def spy(*args, **kwargs):
        notes.append(note(*args))
        return original(*args, **kwargs)

    original = set_in_kernels(monkeypatch, name, spy)
    return notes
