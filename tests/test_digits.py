"""The digits classifier of examples/classify_digits.py, trained with the class wrappers and
with torch.nn + autograd from the same initial weights, batch order and dropout masks: the
losses agree step by step and the test accuracies match."""

import importlib.util
from pathlib import Path

import pytest
import torch

from n2nfunc import (
    Adam,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)

pytest.importorskip("sklearn", reason="needs the examples extra (scikit-learn)")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "classify_digits.py"
spec = importlib.util.spec_from_file_location("classify_digits", EXAMPLE)
digits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(digits)

P = 0.25
EPOCHS = 4


def wrapper_net():
    return Sequential(
        Conv2d(1, 16, 3, padding=1, bias=False),
        BatchNorm2d(16),
        ReLU(),
        MaxPool2d(2),
        Conv2d(16, 32, 3, padding=1, bias=False),
        BatchNorm2d(32),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Dropout(P, generator=torch.Generator().manual_seed(3)),
        Linear(128, 10),
    )


class MaskDropout(torch.nn.Module):
    """torch's twin of our Dropout: the same masks, drawn as n2nfunc documents it."""

    def __init__(self, rng_state):
        super().__init__()
        self.rng = torch.Generator()
        self.rng.set_state(rng_state)

    def forward(self, x):
        if not self.training:
            return x
        mask = torch.empty(x.shape).bernoulli_(1 - P, generator=self.rng)
        return x * mask / (1 - P)


def torch_net(dropout_rng_state):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        MaskDropout(dropout_rng_state),
        nn.Linear(128, 10),
    )


@pytest.fixture
def one_thread():
    """Tensors this small run fastest on one thread (and the machine may be shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_wrappers_and_torch_nn_train_alike_on_digits(one_thread):
    x_train, y_train, x_test, y_test = digits.load_digits_split()
    torch.manual_seed(0)
    ours = wrapper_net()
    ref = torch_net(ours[9].rng.get_state())
    ref.load_state_dict(ours.state_dict())  # the same initial weights, torch.nn's key names
    opt, ref_opt = Adam(ours.param(), lr=digits.LR), torch.optim.Adam(ref.parameters(), digits.LR)
    loss_fn = CrossEntropyLoss()
    worst = 0.0
    for idx in digits.batch_order(len(y_train), EPOCHS):
        xb, yb = x_train[idx], y_train[idx]
        opt.zero_grad()
        value = float(loss_fn.forward(ours.forward(xb), yb))
        ours.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        with torch.enable_grad():
            ref_opt.zero_grad()
            ref_loss = torch.nn.functional.cross_entropy(ref(xb), yb)
            ref_loss.backward()
        ref_opt.step()
        worst = max(worst, abs(value - float(ref_loss)) / abs(float(ref_loss)))
        assert worst < 1e-4, f"losses differ by {worst:.2e} (relative)"
    ours.eval(), ref.eval()
    acc = digits.accuracy(ours.forward(x_test), y_test)
    ref_acc = digits.accuracy(ref(x_test), y_test)
    assert acc == ref_acc and acc >= 0.95, (acc, ref_acc)
    for key, value in ref.state_dict().items():
        assert torch.allclose(ours.state_dict()[key].double(), value.double(), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_the_functional_example_reaches_97_percent(capsys, one_thread):
    digits.main()
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy ")[1].split("%")[0])
    assert accuracy >= 97.0, out
