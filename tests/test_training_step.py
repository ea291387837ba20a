import torch
import torch.nn.functional as F

import n2nfunc as nf


def test_make_train_step_matches_torch_training():
    net = nf.serial(
        nf.conv2d(4, 3, 2, 1), nf.relu(), nf.conv_transpose2d(3, 3, 2, 1, 1), nf.sigmoid()
    )
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 3, 8, 8))
    params = nf.tree.map(lambda t: t.double(), params)
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in nf.tree.flatten(params)}
    opt = torch.optim.SGD(ref.values(), lr=0.5, momentum=0.9)
    step = nf.make_train_step(net, nf.mse, nf.sgd(0.5, momentum=0.9))
    state = nf.sgd(0.5, momentum=0.9).init(params)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
        params, state, value = step(params, state, x, y)
        with torch.enable_grad():
            h = F.relu(F.conv2d(x, ref["0.weight"], ref["0.bias"], 2, 1))
            out = torch.sigmoid(F.conv_transpose2d(h, ref["2.weight"], ref["2.bias"], 2, 1, 1))
            loss = F.mse_loss(out, y)
            opt.zero_grad()
            loss.backward()
        opt.step()
        assert abs(float(value) - float(loss)) < 1e-12
    for path, p in nf.tree.flatten(params):
        assert float((p - ref[path].detach()).abs().max()) < 1e-10, path


def test_value_and_grad_gives_loss_and_param_grads():
    net = nf.serial(nf.conv2d(2, 1), nf.sigmoid())
    _, params = net.init(None, (2, 3, 4, 4))
    value, grads = nf.value_and_grad(net, nf.mse)(
        params, torch.rand(2, 3, 4, 4), torch.rand(2, 2, 4, 4)
    )
    assert value.dim() == 0 and grads["0"]["weight"].shape == params["0"]["weight"].shape


def test_parameters_that_require_grad_leave_no_autograd_graph_behind():
    """nn.Parameters under torch's default grad mode: each step's returned parameters carried
    that step's autograd graph into the next, memory growing without bound (about 7 MB a
    step for a 3-layer MLP)."""
    net = nf.serial(nf.dense(16), nf.relu(), nf.dense(4))
    _, params = net.init(torch.Generator().manual_seed(0), (-1, 8))
    reference = nf.tree.map(lambda t: t.clone(), params)
    params = nf.tree.map(lambda t: torch.nn.Parameter(t.clone()), params)
    opt = nf.adamw(1e-2)
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    with torch.enable_grad():
        state = opt.init(params)
        step = nf.make_train_step(net, nf.cross_entropy, opt)
        params, state, value = step(params, state, x, y)
        value_ref = nf.value_and_grad(net, nf.cross_entropy)(reference, x, y)[0]
        value2, grads = nf.value_and_grad(net, nf.cross_entropy)(params, x, y)
        moved = nf.apply_updates(params, nf.tree.map(torch.nn.Parameter, grads))
    for t in nf.tree.leaves((params, state, value, value2, grads, moved)):
        if isinstance(t, torch.Tensor):
            assert t.grad_fn is None and not t.requires_grad
    ref_state = opt.init(reference)
    ref_params, _, _ = nf.make_train_step(net, nf.cross_entropy, opt)(reference, ref_state, x, y)
    assert float(value) == float(value_ref)
    for a, b in zip(nf.tree.leaves(params), nf.tree.leaves(ref_params)):
        assert torch.equal(a, b)
