"""Each optimizer matches its torch.optim namesake for 20 steps in float64."""

import itertools

import pytest
import torch

import n2nfunc as nf
from n2nfunc import optim


def _run_both(make_ours, make_torch, steps=20):
    g = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(3, generator=g, dtype=torch.float64),
    }
    grads_seq = [
        {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
        for _ in range(steps)
    ]
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = make_torch(list(ref.values()))
    ours = make_ours()
    state = ours.init(params)
    for grads in grads_seq:
        updates, state = ours.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        for k, p in ref.items():
            p.grad = grads[k].clone()
        opt.step()
    for k in params:
        err = float((params[k] - ref[k].detach()).abs().max() / ref[k].detach().abs().max())
        assert err <= 1e-6, (k, err)


@pytest.mark.parametrize(
    "momentum,nesterov,wd,dampening",
    [
        c
        for c in itertools.product([0.0, 0.9], [False, True], [0.0, 0.01], [0.0, 0.3])
        if not (c[1] and (c[0] == 0 or c[3] != 0))
    ],
)
def test_sgd_matches_torch(momentum, nesterov, wd, dampening):
    _run_both(
        lambda: nf.sgd(0.05, momentum, nesterov, wd, dampening),
        lambda ps: torch.optim.SGD(
            ps, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd, dampening=dampening
        ),
    )


@pytest.mark.parametrize("betas,eps,wd", [((0.9, 0.999), 1e-8, 0.0), ((0.8, 0.99), 1e-6, 0.05)])
def test_adam_matches_torch(betas, eps, wd):
    _run_both(
        lambda: nf.adam(0.01, betas, eps, wd),
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=betas, eps=eps, weight_decay=wd),
    )


def test_schedule_is_used_per_step():
    sched = optim.cosine_decay(0.1, 10, warmup_steps=2)
    assert [round(sched(s), 6) for s in (0, 1, 2)] == [0.05, 0.1, 0.1]
    assert sched(10) == pytest.approx(0.0) and sched(100) == pytest.approx(0.0)
    opt = nf.sgd(sched)
    state = opt.init({"w": torch.ones(1)})
    updates, state = opt.update({"w": torch.ones(1)}, state, {"w": torch.ones(1)})
    assert float(updates["w"]) == pytest.approx(-0.05) and state["step"] == 1


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="sgd: lr"):
        nf.sgd(-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        nf.sgd(0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        nf.adam(0.1, betas=(1.0, 0.9))
