"""Oracles for the tests: torch autograd on torch.nn.functional (tests may use all of torch)."""

import torch


def autograd_vjp(fn, inputs, ct):
    """``(y, grads)`` of ``fn(*inputs)`` with cotangent ``ct``, by torch autograd."""
    with torch.enable_grad():
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, ct)
    return y.detach(), [g.detach() for g in grads]


def rel_err(a, b):
    """max |a - b| relative to the scale of b."""
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def randn(*shape, dtype=torch.float64, seed=None):
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=dtype, generator=g)


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
    smaller block size reaches every call."""
    from types import ModuleType

    import n2nfunc.kernels as kernels

    modules = [kernels, *(m for m in vars(kernels).values() if isinstance(m, ModuleType))]
    bound = [m for m in modules if name in vars(m)]
    assert bound, f"n2nfunc.kernels binds no {name!r}"
    for module in bound:
        monkeypatch.setattr(module, name, value)
