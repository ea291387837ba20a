import pytest
import torch
import torch.nn.functional as F
from helpers import autograd_vjp, rel_err

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
