"""Use the class wrappers the way the exercise's grader does: blocks built PyTorch-style and
called through forward / backward / param(). One Conv2d is compared with torch's F.conv2d on
a 1 x 3 x 32 x 32 image (the grader's own check), then a network of every required block
learns to reproduce blocky images (an autoencoder) with SGD on an MSE loss: 150 steps take
its loss well below the 1/12 that an output of constant 0.5 scores.

    python examples/grader_style.py
"""

import argparse

import torch
import torch.nn.functional as F

from n2nfunc import (
    MSE,
    SGD,
    Conv2d,
    NearestUpsampling,
    ReLU,
    Sequential,
    Sigmoid,
    TransposeConv2d,
    Upsampling,
)

parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
parser.parse_args()  # --help prints the docstring above

torch.set_grad_enabled(False)
torch.manual_seed(0)

conv = Conv2d(3, 3, 3)
x = torch.randn(1, 3, 32, 32)
print(
    "Conv2d(3, 3, 3) vs F.conv2d:",
    float((conv.forward(x) - F.conv2d(x, conv.weight, conv.bias)).abs().max()),
)

model = Sequential(
    Conv2d(3, 32, 3, stride=2, padding=1),
    ReLU(),
    Conv2d(32, 64, 3, stride=2, padding=1),
    ReLU(),
    Upsampling(64, 32, 3, scale_factor=2, padding=1),  # nearest x2, then a 3x3 convolution
    ReLU(),
    NearestUpsampling(2),
    Conv2d(32, 16, 3, padding=1),
    ReLU(),
    TransposeConv2d(16, 3, 3, padding=1),
    Sigmoid(),
)
loss, optimizer = MSE(), SGD(model.param(), lr=1.0, momentum=0.9)
# 64 images of 4 x 4 random colour blocks, 8 x 8 pixels each: structure a network can learn
# to reproduce (independent random pixels could not pass the stride-4 bottleneck, and the
# loss would stay where it starts)
blocks = torch.rand(64, 3, 4, 4)
source = blocks.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
target = source
print(f"an output of constant 0.5 scores {float(loss.forward(0.5 + 0 * target, target)):.5f}")
for step in range(150):
    value = loss.forward(model.forward(source), target)
    optimizer.zero_grad()
    grad_input = model.backward(loss.backward())
    optimizer.step()
    if step % 15 == 0 or step == 149:
        norm = float(grad_input.norm())
        print(f"step {step}: loss {float(value):.5f}, |d loss / d input| = {norm:.3g}")
print("parameters:", [tuple(p.shape) for p, _ in model.param()])
