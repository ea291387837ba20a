"""Training-step throughput of the U-Net: n2nfunc (hand-written gradients) against its
torch.nn + autograd twin (bench/unet_twin.py), same weights, data and Adam update, in float32
and in mixed precision (n2nfunc.mixed_precision "bfloat16" against torch.autocast bfloat16),
torch in NCHW and in channels_last (the faster layout is the reference), all ten
interleaved in one process (only ratios are meaningful on a shared machine). n2nfunc's step
runs three ways: as ``Model.train`` runs it (the step itself, without its batch gather,
augmentation and loss read-back: :func:`common.class_step`), with the class wrappers
(``Module``, ``MSE``, ``Adam``: gradient buffers and Adam's state each one vector), the same
inside ``torch.inference_mode`` as ``n2nfunc train`` runs its epochs (no autograd bookkeeping,
which the library's own code may not switch off), and as the functional ``make_train_step``
(new gradient and state trees each step).

    python bench/unet_train_step.py                       # default and paper shapes
    python bench/unet_train_step.py --crop 64 --batch 8 --arch 4:32,64,48,24
    python bench/unet_train_step.py --device cuda

One step = forward + MSE + backward + Adam update, on a batch of crops.
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from common import (  # noqa: E402
    allocator_line,
    class_step,
    gpu_line,
    interleaved,
    peak_live_tensor_bytes,
    strict_float32,
    synced,
    torch_device,
    without_autograd,
)
from unet_twin import TorchUNet  # noqa: E402

import n2nfunc as nf  # noqa: E402
from n2nfunc import hardware  # noqa: E402
from n2nfunc.argtypes import int_range  # noqa: E402
from n2nfunc.unet import check_architecture, unet  # noqa: E402

LR = 1e-3


def parse_arch(text: str) -> dict:
    """``DEPTH:ENC,DEC,A,B`` -> unet kwargs; a bad text raises ``argparse.ArgumentTypeError``
    (an ``--arch`` type: one usage error, not a traceback)."""
    depth, _, widths = text.partition(":")
    try:
        arch = {"depth": int(depth), "widths": tuple(int(v) for v in widths.split(","))}
        check_architecture(**arch)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected DEPTH:ENC,DEC,A,B such as 4:32,64,48,24 ({e})"
        ) from None
    return arch


def arch_text(text: str) -> str:
    """``text`` once :func:`parse_arch` takes it (for options kept as written)."""
    parse_arch(text)
    return text


def contenders(arch: dict, crop: int, batch: int, device: str, seed: int = 0) -> dict:
    """One training step of each contender on the same weights and data: n2nfunc in float32
    and in mixed precision (bfloat16 operands), each as Model.train runs it (no suffix),
    inside torch.inference_mode as n2nfunc train runs it (" CLI") and as the functional
    make_train_step (" functional"); torch.nn in float32 and under autocast, each torch
    contender in NCHW and in channels_last."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    y = torch.rand(batch, 3, crop, crop, generator=g).to(device)
    layer = unet(**arch)
    _, params = layer.init(torch.Generator().manual_seed(seed), (-1, 3, -1, -1))
    params = nf.tree.map(lambda t: t.to(device), params)

    def n2nfunc_step(precision):
        opt = nf.adam(LR)
        box = {"params": params, "state": opt.init(params)}
        step = nf.make_train_step(nf.mixed_precision(layer, precision), nf.mse, opt)

        def run():
            box["params"], box["state"], _ = step(box["params"], box["state"], x, y)

        return run

    def model_train_step(precision):  # as Model.train takes it (bench/common.class_step)
        net = nf.Module(layer, nf.tree.map(lambda t: t.clone(), params))
        return class_step(net, precision, x, y, LR)

    def torch_step(autocast, layout):
        twin = TorchUNet(**arch).to(device).load_n2nfunc(params).to(memory_format=layout)
        opt = torch.optim.Adam(twin.parameters(), lr=LR)
        xt = x.contiguous(memory_format=layout)

        def run():
            with torch.enable_grad():
                opt.zero_grad()
                with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
                    out = twin(xt)
                torch.nn.functional.mse_loss(out.float(), y).backward()
                opt.step()

        return run

    c = {}
    for precision in ("float32", "bfloat16"):
        c[f"n2nfunc {precision}"] = model_train_step(precision)
        c[f"n2nfunc {precision} CLI"] = without_autograd(model_train_step(precision))
        c[f"n2nfunc {precision} functional"] = n2nfunc_step(precision)
    for name, autocast in TORCH.items():
        for layout_name, layout in LAYOUTS.items():
            c[f"{name} {layout_name}"] = torch_step(autocast, layout)
    return c


TORCH = {"torch float32": False, "torch autocast": True}
# n2nfunc's ways to train: the class wrappers as Model.train runs them, the same inside
# torch.inference_mode as the command line runs its epochs, and the functional make_train_step
# (new gradient and state trees each step)
PATHS = {"Model.train": "", "n2nfunc train": " CLI", "functional": " functional"}
LAYOUTS = {"NCHW": torch.contiguous_format, "ch-last": torch.channels_last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--arch", action="append", type=arch_text, help="DEPTH:W1,W2,W3,W4 (repeatable)"
    )
    ap.add_argument("--crop", type=int_range(1), default=64)
    ap.add_argument("--batch", type=int_range(1), default=8)
    ap.add_argument("--device", type=torch_device, default="cpu")
    ap.add_argument("--repeats", type=int_range(1), default=3)
    ap.add_argument("--threads", type=int_range(1), default=2, help="default: 2")
    ap.add_argument("--rounds", type=int_range(1), default=5)
    ap.add_argument(
        "--memory",
        action="store_true",
        help="also the peak of live tensor bytes in one step (CPU allocator, torch profiler)",
    )
    args = ap.parse_args()
    if args.memory and torch.device(args.device).type != "cpu":
        ap.error("--memory: the CPU allocator's live tensors; on a GPU, train_step.py --device")
    archs = [parse_arch(a) for a in args.arch or ["4:32,64,48,24", "5:48,96,64,32"]]
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    print(hardware.describe())
    if strict_float32(args.device):
        print(gpu_line(args.device))
    print(allocator_line())
    print(
        f"crop {args.crop}, batch {args.batch}, device {args.device}, "
        f"threads {torch.get_num_threads()}; ms per step, median of {args.rounds} interleaved "
        "rounds; ratio = the faster torch layout's time / n2nfunc's (> 1: n2nfunc faster)"
    )
    print(
        f"{'depth:widths':<16}{'precision':<11}{'n2nfunc path':<14}{'n2nfunc':>9}{'img/s':>8}"
        f"{'torch NCHW':>12}{'ch-last':>9}{'ratio':>7}"
    )
    for arch in archs:
        c = contenders(arch, args.crop, args.batch, args.device)
        c = synced(c, args.device)
        t = {k: v * 1e3 for k, v in interleaved(c, 2, args.repeats, args.rounds).items()}
        label = f"{arch['depth']}:{','.join(map(str, arch['widths']))}"
        for precision, theirs in (("float32", "torch float32"), ("bfloat16", "torch autocast")):
            nchw, cl = t[f"{theirs} NCHW"], t[f"{theirs} ch-last"]
            for path, suffix in PATHS.items():
                ours = t[f"n2nfunc {precision}{suffix}"]
                print(
                    f"{label:<16}{precision:<11}{path:<14}{ours:>9.1f}"
                    f"{args.batch / ours * 1e3:>8.1f}{nchw:>12.1f}{cl:>9.1f}"
                    f"{min(nchw, cl) / ours:>7.2f}"
                )
                label = ""
        torch32 = min(t["torch float32 NCHW"], t["torch float32 ch-last"])
        print(
            f"{'':<16}bfloat16 n2nfunc (Model.train) vs the faster torch float32: "
            f"{torch32 / t['n2nfunc bfloat16']:.2f}"
        )
        if args.memory:
            print(
                f"{'':<16}peak of live tensors in one step, MB (ratio: n2nfunc's Model.train row "
                "of that precision / this one's, as train_step.py's: < 1, n2nfunc's is smaller):"
            )
            mb = {k: peak_live_tensor_bytes(f) / 2**20 for k, f in c.items()}
            for name, value in mb.items():
                precision = "bfloat16" if "bf" in name or "autocast" in name else "float32"
                ours = mb[f"n2nfunc {precision}"]
                print(f"{'':<18}{name:<30}{value:>7.1f}{ours / value:>7.2f}")


if __name__ == "__main__":
    main()
