"""Training-step throughput of the U-Net: n2nfunc (functional, hand-written gradients)
against its torch.nn + autograd twin (bench/unet_twin.py), same weights, data and Adam
update, in float32 and in mixed precision (n2nfunc.mixed_precision "bfloat16" against
torch.autocast bfloat16), all four interleaved in one process (only ratios are meaningful
on a shared machine).

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
from common import interleaved  # noqa: E402
from unet_twin import TorchUNet  # noqa: E402

import n2nfunc as nf  # noqa: E402
from n2nfunc import hardware  # noqa: E402
from n2nfunc.unet import unet  # noqa: E402

LR = 1e-3


def parse_arch(text: str) -> dict:
    """``DEPTH:ENC,DEC,A,B`` -> unet kwargs."""
    depth, _, widths = text.partition(":")
    return {"depth": int(depth), "widths": tuple(int(v) for v in widths.split(","))}


def contenders(arch: dict, crop: int, batch: int, device: str, seed: int = 0) -> dict:
    """One training step of each contender on the same weights and data: n2nfunc in float32
    and in mixed precision (bfloat16 operands), torch.nn in float32 and under autocast."""
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

    def torch_step(autocast):
        twin = TorchUNet(**arch).to(device).load_n2nfunc(params)
        opt = torch.optim.Adam(twin.parameters(), lr=LR)

        def run():
            with torch.enable_grad():
                opt.zero_grad()
                with torch.autocast(x.device.type, torch.bfloat16, enabled=autocast):
                    out = twin(x)
                torch.nn.functional.mse_loss(out.float(), y).backward()
                opt.step()

        return run

    return {
        "n2nfunc f32": n2nfunc_step("float32"),
        "n2nfunc bf16": n2nfunc_step("bfloat16"),
        "torch f32": torch_step(False),
        "torch autocast": torch_step(True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", action="append", help="DEPTH:ENC,DEC,A,B (repeatable)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    archs = [parse_arch(a) for a in args.arch or ["4:32,64,48,24", "5:48,96,64,32"]]
    torch.set_grad_enabled(False)
    if args.device == "cpu":
        print(hardware.describe())
    print(
        f"crop {args.crop}, batch {args.batch}, device {args.device}, "
        f"threads {torch.get_num_threads()}; ms per step (median of {args.rounds} interleaved "
        "rounds) and img/s; ratio = torch's time / n2nfunc's at the same precision"
    )
    print(
        f"{'depth:widths':<16}{'n2nfunc f32':>13}{'torch f32':>11}{'ratio':>7}"
        f"{'n2nfunc bf16':>14}{'autocast':>10}{'ratio':>7}{'bf16 vs torch f32':>19}"
    )
    for arch in archs:
        c = contenders(arch, args.crop, args.batch, args.device)
        if args.device != "cpu":
            c = {k: (lambda f=f: (f(), torch.cuda.synchronize())) for k, f in c.items()}
        t = {k: v * 1e3 for k, v in interleaved(c, 2, args.repeats, args.rounds).items()}
        label = f"{arch['depth']}:{','.join(map(str, arch['widths']))}"
        print(
            f"{label:<16}{t['n2nfunc f32']:>13.1f}{t['torch f32']:>11.1f}"
            f"{t['torch f32'] / t['n2nfunc f32']:>7.2f}{t['n2nfunc bf16']:>14.1f}"
            f"{t['torch autocast']:>10.1f}{t['torch autocast'] / t['n2nfunc bf16']:>7.2f}"
            f"{t['torch f32'] / t['n2nfunc bf16']:>19.2f}"
        )
        print(f"{'':<16}img/s: n2nfunc f32 {args.batch / t['n2nfunc f32'] * 1e3:.1f}, bf16 "
              f"{args.batch / t['n2nfunc bf16'] * 1e3:.1f}")


if __name__ == "__main__":
    main()
