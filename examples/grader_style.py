"""Use the class wrappers the way the exercise's grader does: blocks built PyTorch-style and
called through forward / backward / param(). One Conv2d is compared with torch's F.conv2d
(the grader's own check), then a network of every required block takes five SGD steps on
an MSE loss.

    python examples/grader_style.py
"""

import argparse

import torch
import torch.nn.functional as F

from n2nfunc import MSE, SGD, Conv2d, ReLU, Sequential, Sigmoid, TransposeConv2d, Upsampling

parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
parser.parse_args()  # --help prints the docstring above

torch.set_grad_enabled(False)
torch.manual_seed(0)

conv = Conv2d(3, 3, 3)
x = torch.randn(1, 3, 8, 8)
print(
    "Conv2d(3, 3, 3) vs F.conv2d:",
    float((conv.forward(x) - F.conv2d(x, conv.weight, conv.bias)).abs().max()),
)

model = Sequential(
    Conv2d(3, 32, 3, stride=2, padding=1),
    ReLU(),
    Conv2d(32, 64, 3, stride=2, padding=1),
    ReLU(),
    Upsampling(64, 32, 3, scale_factor=2, padding=1),
    ReLU(),
    TransposeConv2d(32, 3, 3, stride=2, padding=1, output_padding=1),
    Sigmoid(),
)
loss, optimizer = MSE(), SGD(model.param(), lr=0.5, momentum=0.9)
source, target = torch.rand(64, 3, 32, 32), torch.rand(64, 3, 32, 32)
for step in range(5):
    value = loss.forward(model.forward(source), target)
    optimizer.zero_grad()
    grad_input = model.backward(loss.backward())
    optimizer.step()
    print(
        f"step {step}: loss {float(value):.5f}, |d loss / d input| = {float(grad_input.norm()):.3g}"
    )
print("parameters:", [tuple(p.shape) for p, _ in model.param()])
