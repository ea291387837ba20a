"""The compute path may use only torch.empty/cat/arange, fold/unfold, tensor methods and
type names. This parses every package file; each must be listed as compute or as I/O."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "n2nfunc"
COMPUTE = [
    "__init__.py",
    "base.py",
    "nhwc.py",
    "kernels/__init__.py",
    "kernels/direct.py",
    "kernels/polyphase.py",
    "kernels/s2d.py",
    "kernels/strided.py",
    "kernels/row_taps.py",
    "kernels/dispatch.py",
    "kernels/grouped.py",
    "kernels/relayout.py",
    "kernels/nearest_grad.py",
    "torch_order.py",
    "device_conv.py",
    "init.py",
    "layers/conv.py",
    "layers/geometry.py",
    "layers/upsampling.py",
    "layers/bilinear.py",
    "layers/shuffle.py",
    "layers/__init__.py",
    "layers/dense.py",
    "layers/pool.py",
    "layers/activations.py",
    "combinators.py",
    "tree.py",
    "losses.py",
    "optim.py",
    "train.py",
    "modules/__init__.py",
    "modules/module.py",
    "modules/blocks.py",
    "modules/sequential.py",
    "modules/loss_blocks.py",
    "modules/optimizers.py",
    "testing.py",
    "metrics.py",
    "model.py",
    "stateful.py",
    "layers/norm.py",
    "layers/dropout.py",
    "precision.py",
    "unet.py",
    "tiling.py",
]
IO = [
    "__main__.py",
    "checkpoint.py",
    "argtypes.py",
    "cli/__init__.py",
    "cli/__main__.py",
    "cli/checks.py",
    "cli/common.py",
    "cli/pairs.py",
    "cli/parser.py",
    "cli/runs.py",
    "cli/train.py",
    "cli/use.py",
    "hardware.py",
    "allocator.py",
    "distributed.py",
    "launch.py",
    "export.py",
    "viz.py",
    "progress.py",
    "data/__init__.py",
    "data/files.py",
    "data/synthetic.py",
    "data/photos.py",
    "data/noise.py",
    "pretrained.py",
]
ALLOWED = {
    "torch": {"empty", "cat", "arange", "Tensor", "Generator", "device", "dtype"},
    "torch.nn.functional": {"fold", "unfold"},
}
FORBIDDEN_ATTRIBUTES = {"requires_grad", "requires_grad_", "retain_grad", "grad_fn", "autograd"}
STDLIB_OK = {
    "math",
    "copy",
    "numbers",
    "functools",
    "typing",
    "pathlib",
    "collections",
    "itertools",
    "dataclasses",
    "contextlib",
    "weakref",
    "inspect",
    "warnings",
}


def test_every_package_file_is_classified():
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert files <= set(COMPUTE) | set(IO), f"unclassified files: {files - set(COMPUTE) - set(IO)}"
    assert set(COMPUTE) <= files


def _violations(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root == "torch" or root not in STDLIB_OK:
                    bad.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: our own package
                continue
            names = {a.name for a in node.names}
            if node.module in ALLOWED:
                extra = names - ALLOWED[node.module]
                if extra:
                    bad.append(f"line {node.lineno}: from {node.module} import {sorted(extra)}")
            elif node.module.split(".")[0] not in STDLIB_OK:
                bad.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            # reading the flag, to keep a caller's autograd graph out (tree.detach), is not
            # using autograd; setting it is
            if not (node.attr == "requires_grad" and isinstance(node.ctx, ast.Load)):
                bad.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "torch":
            bad.append(f"line {node.lineno}: name 'torch'")
    return bad


@pytest.mark.parametrize("name", COMPUTE)
def test_compute_file_uses_only_allowed_primitives(name):
    assert _violations(PACKAGE / name) == []


def test_the_checker_catches_forbidden_uses(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text(
        "import torch\nfrom torch import zeros\nfrom torch.nn.functional import conv2d\n"
        "import numpy\nx.requires_grad_()\nx.requires_grad = True\ny = x.grad_fn\n"
        "z = x.detach() if x.requires_grad else x\n"
    )
    bad = _violations(f)
    assert len(bad) == 7, bad  # torch, zeros, conv2d, numpy, requires_grad_, = True, grad_fn


def test_only_distributed_py_imports_torch_distributed():
    importers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
                importers.add(str(path.relative_to(PACKAGE)))
    assert importers == {"distributed.py"}
