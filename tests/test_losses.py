import math

import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err

import n2nfunc as nf
from n2nfunc import mse


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_mse_value_and_grad_match_torch(dtype, tol):
    pred, target = torch.rand(4, 3, 5, 6, dtype=dtype), torch.rand(4, 3, 5, 6, dtype=dtype)
    value, grad = mse.value_and_grad(pred, target)
    ref, (g,) = autograd_vjp(
        lambda p: F.mse_loss(p, target), [pred], torch.tensor(1.0, dtype=dtype)
    )
    assert rel_err(value, ref) < tol and rel_err(mse(pred, target), ref) < tol
    assert rel_err(grad, g) < tol


def test_mse_rejects_mismatched_shapes_instead_of_broadcasting():
    with pytest.raises(
        ValueError, match=r"prediction shape \(2, 3\) does not match target shape \(3,\)"
    ):
        mse(torch.rand(2, 3), torch.rand(3))
    with pytest.raises(TypeError, match="differ in dtype"):
        mse(torch.rand(2, 3), torch.rand(2, 3, dtype=torch.float64))


def _check_loss(loss, ref, pred, target, tol):
    value, grad = loss.value_and_grad(pred, target)
    ref_value, (g,) = autograd_vjp(
        lambda p: ref(p, target), [pred], torch.tensor(1.0, dtype=pred.dtype)
    )
    assert value.shape == () and rel_err(value, ref_value) <= tol
    assert (
        rel_err(loss(pred, target), ref_value) <= tol
        and rel_err(loss.value(pred, target), ref_value) <= tol
    )
    assert grad.shape == pred.shape and rel_err(grad, g) <= tol


ELEMENTWISE = [
    (nf.l1, F.l1_loss),
    (nf.huber(), F.huber_loss),
    (nf.huber(0.3), lambda p, t: F.huber_loss(p, t, delta=0.3)),
    (nf.huber(2.5), lambda p, t: F.huber_loss(p, t, delta=2.5)),
    (nf.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
]


@pytest.mark.parametrize("loss,ref", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(1,), (5, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_elementwise_losses_match_torch(loss, ref, shape, dtype, tol):
    pred = torch.randn(shape, dtype=dtype) * 3
    target = (
        torch.rand(shape, dtype=dtype)
        if ref is F.binary_cross_entropy_with_logits
        else torch.randn(shape, dtype=dtype)
    )
    _check_loss(loss, ref, pred, target, tol)


def test_elementwise_losses_at_their_kinks_match_torch():
    target = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    pred = target + torch.tensor([0.0, 1.0, -1.0, 0.3, 1.0000001], dtype=torch.float64)
    for loss, ref in ELEMENTWISE[:2]:
        _check_loss(loss, ref, pred, target, 1e-15)


def test_binary_cross_entropy_with_logits_is_stable():
    x = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0], dtype=torch.float64)
    _check_loss(
        nf.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, t, 1e-12
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("n,k", [(1, 2), (5, 7), (16, 10)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cross_entropy_matches_torch(smoothing, n, k, dtype, tol):
    logits = torch.randn(n, k, dtype=dtype) * 3
    labels = torch.randint(0, k, (n,))
    loss = nf.cross_entropy if smoothing == 0 else nf.cross_entropy_with(smoothing)
    _check_loss(
        loss, lambda z, y: F.cross_entropy(z, y, label_smoothing=smoothing), logits, labels, tol
    )


def test_cross_entropy_takes_masked_classes_with_logits_of_minus_infinity():
    logits = torch.tensor([[1.0, 2.0, -math.inf], [-math.inf, 0.5, 0.25]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    value, grad = nf.cross_entropy.value_and_grad(logits, labels)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    _check_loss(nf.cross_entropy, F.cross_entropy, logits, labels, 1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_is_stable_for_huge_logits(smoothing):
    logits = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]]
    )
    labels = torch.tensor([1, 1, 0, 2])
    for dtype in (torch.float64, torch.float32):
        z = logits.to(dtype)
        value, grad = nf.cross_entropy_with(smoothing).value_and_grad(z, labels)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
        _check_loss(
            nf.cross_entropy_with(smoothing),
            lambda a, y: F.cross_entropy(a, y, label_smoothing=smoothing),
            z,
            labels,
            1e-6,
        )


def test_cross_entropy_accepts_int32_labels():
    logits = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    assert nf.cross_entropy(logits, labels.int()) == nf.cross_entropy(logits, labels)


@pytest.mark.parametrize(
    "logits,labels,error,pattern",
    [
        (
            torch.randn(4, 3),
            torch.tensor([0, 1, 2, 3]),
            ValueError,
            r"cross_entropy: labels must be in \[0, 3\) for logits of shape \(4, 3\), "
            r"got values in \[0, 3\]",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([0, -1, 2, 1]),
            ValueError,
            r"labels must be in \[0, 3\).*\[-1, 2\]",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([0.0, 1.0, 2.0, 1.0]),
            TypeError,
            r"cross_entropy: labels must be integer class indices, got dtype torch.float32 "
            r"\(labels shape \(4,\), logits shape \(4, 3\)\)",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([True, False, True, True]),
            TypeError,
            r"integer class indices, got dtype torch.bool",
        ),
        (
            torch.randn(4, 3),
            torch.tensor([0, 1, 2]),
            ValueError,
            r"cross_entropy: labels must have shape \(4,\) for logits of shape \(4, 3\), "
            r"got \(3,\)",
        ),
        (
            torch.randn(4, 3),
            torch.zeros(4, 1, dtype=torch.int64),
            ValueError,
            r"must have shape \(4,\).*got \(4, 1\)",
        ),
        (
            torch.randn(4, 3, 2),
            torch.zeros(4, dtype=torch.int64),
            ValueError,
            r"expected logits of shape \(N, K\), got \(4, 3, 2\)",
        ),
        (
            torch.randn(0, 3),
            torch.zeros(0, dtype=torch.int64),
            ValueError,
            r"expected logits of shape \(N, K\), got \(0, 3\)",
        ),
        (
            torch.ones(4, 3, dtype=torch.int64),
            torch.zeros(4, dtype=torch.int64),
            TypeError,
            "logits must be floating point",
        ),
        (torch.randn(4, 3), [0, 1, 2, 0], TypeError, "labels must be a Tensor, got list"),
    ],
)
def test_cross_entropy_rejects_bad_labels(logits, labels, error, pattern):
    for loss in (nf.cross_entropy.value, nf.cross_entropy.value_and_grad):
        with pytest.raises(error, match=pattern):
            loss(logits, labels)
    with pytest.raises(error, match=r"cross_entropy_with\(label_smoothing=0.2\)"):
        nf.cross_entropy_with(0.2)(logits, labels)


def test_bad_options_and_pairs_are_refused():
    with pytest.raises(ValueError, match=r"huber: delta must be a number > 0, got 0"):
        nf.huber(0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        nf.cross_entropy_with(1.5)
    with pytest.raises(
        ValueError, match=r"l1: prediction shape \(2, 3\) does not match target shape \(3,\)"
    ):
        nf.l1(torch.rand(2, 3), torch.rand(3))
    with pytest.raises(ValueError, match=r"huber\(delta=1.0\): prediction shape"):
        nf.huber()(torch.rand(2, 3), torch.rand(2, 1))
    with pytest.raises(TypeError, match="binary_cross_entropy_with_logits: .* differ in dtype"):
        nf.binary_cross_entropy_with_logits(torch.rand(2), torch.rand(2, dtype=torch.float64))


def test_bce_with_logits_is_infinite_for_an_infinite_wrong_logit():
    inf = float("inf")
    x = torch.tensor([inf, inf, -inf, -inf, -40.0], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 0.5, 1.0, 0.0], dtype=torch.float64)
    for i in range(5):
        value, grad = nf.losses.bce_with_logits_value_and_grad(x[i : i + 1], t[i : i + 1])
        exact = torch.nn.functional.softplus(x[i]) - x[i] * t[i] if i == 4 else inf
        assert value.item() == pytest.approx(float(exact), rel=1e-12)
        assert grad.isfinite().all()


def test_bce_of_infinite_logits_and_numpy_hyperparameters():
    import numpy as np

    import n2nfunc as nf

    logits = torch.tensor([float("inf"), -float("inf"), float("inf")])
    value, grad = nf.binary_cross_entropy_with_logits.value_and_grad(
        logits, torch.tensor([1.0, 0.0, 0.0])
    )
    assert value == float("inf") and torch.equal(grad, torch.tensor([0.0, 0.0, 1 / 3]))
    right, _ = nf.binary_cross_entropy_with_logits.value_and_grad(
        logits[:2], torch.tensor([1.0, 0.0])
    )
    assert right == 0  # confident and right (it was NaN)
    x, y = torch.randn(5), torch.randn(5)
    assert nf.huber(np.float32(1.0)).value(x, y) == nf.huber(1.0).value(x, y)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    smoothed = nf.cross_entropy_with(torch.tensor(0.1)).value(logits, labels)
    assert torch.allclose(
        smoothed, torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    )
    with pytest.raises(TypeError, match="huber: delta must be a number > 0"):
        nf.huber("1")
    with pytest.raises(ValueError, match="huber: delta must be a number > 0"):
        nf.huber(0)


@pytest.mark.parametrize(
    "loss",
    [
        nf.mse,
        nf.l1,
        nf.huber(0.7),
        nf.binary_cross_entropy_with_logits,
        nf.cross_entropy,
        nf.cross_entropy_with(0.2),
    ],
)
def test_a_loss_value_is_differentiable_by_torch_autograd_and_agrees(loss):
    """Called with grad mode on, a loss's value is an autograd graph whose gradient is the
    hand-written one (its gradient pass must not overwrite what the value's graph saved)."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    if loss in (nf.binary_cross_entropy_with_logits,):
        target = torch.rand(5, 4, generator=g, dtype=torch.float64)
    elif "cross_entropy" in getattr(loss.value_and_grad, "__qualname__", ""):
        target = torch.randint(0, 4, (5,), generator=g)
    else:
        target = torch.randn(5, 4, generator=g, dtype=torch.float64)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss(pred, target), pred)
        (again,) = torch.autograd.grad(loss.value_and_grad(pred, target)[0], pred)
    _, ours = loss.value_and_grad(pred.detach(), target)
    assert rel_err(grad, ours) < 1e-12 and rel_err(again, ours) < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_16_bit_cross_entropy_is_computed_in_float32(dtype, smoothing):
    """The log-softmax in 16 bits put an error of a bfloat16 ulp of values near -7 into every
    log-probability: small gradients came out up to 196x off (smoothing 0.1). Now each
    gradient is within one rounding of the float32 one."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, 1000, (64,), generator=g)
    value, grad = nf.cross_entropy_with(smoothing).value_and_grad(logits, labels)
    assert value.dtype == grad.dtype == dtype

    def ce(t):
        return torch.nn.functional.cross_entropy(t, labels, label_smoothing=smoothing)

    one = torch.tensor(1.0)
    value32, (grad32,) = autograd_vjp(ce, [logits.float()], one)
    ulp = 2.0 ** -(8 if dtype == torch.bfloat16 else 11)  # relative (two float32 sums may
    assert abs(float(value) - float(value32)) <= abs(float(value32)) * ulp  # round apart)
    tiny = torch.finfo(dtype).tiny  # (below it, 16-bit subnormals)
    assert ((grad.float() - grad32).abs() <= grad32.abs() * ulp + tiny).all()  # was 0.13-196
